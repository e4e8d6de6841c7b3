"""`decontaminate`: normalised word n-gram overlap of every pool document with one or more corpora
(benchmarks, validation sets, the target): docs/methods.md, "Decontamination".

1. index: one task per shard of the `against` corpora writes each document's distinct n-gram hashes
   (jobs/<job>/ngrams/cCCC-NNNNN.parquet).
2. One task builds the exact index from them (sorted unique 64-bit hashes, each with the smallest
   document that holds it) and hands it to the scoring tasks through Ray's object store (read
   in place, shared by the tasks of a node). It is rebuilt, not stored: it is quick to make.
3. score: one task per pool shard looks up the document's distinct n-grams (binary search) and
   writes the manifest part: matching n-grams, the corpus and document that hold most of them.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
from pydantic import Field

from scoring.ngrams import best_owner, distinct_ngrams, word_hashes
from storage import layout
from storage.duck import connection
from storage.fs import Store
from storage.manifests import dataset, manifest_files
from workers.driver.engine import JobContext, JobFailed, Task
from workers.jobs.cleaning import (CORPUS_SHIFT, MAX_CORPORA, PoolAgainst, commit_cleaning, doc_columns,
                                   manifest_id, non_empty, uids)
from workers.kind import SHARD_TASK, JobKind, small_inputs
from workers.runtime import node_id
from workers.specs import CorpusId

DEFAULT_N = 13
MAX_INDEX_NGRAMS = 100_000_000   # 1.6 GB of index in the object store


class DecontaminateSpec(PoolAgainst):
    against: list[CorpusId] = Field(min_length=1, max_length=MAX_CORPORA,
                                    description="the corpora whose text must not leak into the pool")
    n: int = Field(DEFAULT_N, ge=3, le=64, description="words per n-gram (normalised words)")
    min_matches: int = Field(1, ge=1, description="a document is contaminated with at least this many "
                                                  "distinct matching n-grams …")
    min_fraction: float = Field(0.0, ge=0, le=1, description="… and at least this fraction of its n-grams")


@ray.remote
def index_task(store_root: str, corpus_index: int, shard: int, parts: tuple, out: tuple, n: int) -> dict:
    store = Store(store_root)
    docs = store.read_parquet(*parts, columns=["id", "text"])
    grams, doc = distinct_ngrams(*word_hashes(docs["text"]), n)
    owner = uids(corpus_index, shard, docs.num_rows)[doc]
    store.write_parquet(pa.table({"hash": pa.array(grams.view(np.int64)), "uid": pa.array(owner),
                                  "doc_id": docs["id"].take(pa.array(doc))}), *out)
    return {"rows": docs.num_rows, "node": node_id()}


@ray.remote
def build_index(store_root: str, parts: list) -> dict:
    """{hashes (sorted, unique), owners (the smallest uid holding each), uids and doc_ids (sorted by uid)}."""
    store = Store(store_root)
    t = dataset(store, parts).to_table()
    h = t["hash"].to_numpy()
    u = t["uid"].to_numpy()
    order = np.lexsort((u, h))
    h, u_sorted = h[order], u[order]
    first = np.ones(len(h), dtype=bool)
    first[1:] = h[1:] != h[:-1]
    by_uid = np.unique(u, return_index=True)
    return {"hashes": h[first], "owners": u_sorted[first], "uids": by_uid[0],
            "doc_ids": t["doc_id"].take(pa.array(by_uid[1])).to_pylist()}


@ray.remote
def contamination_task(store_root: str, pool_id: str, shard: int, parts: tuple, out: tuple, index: dict,
                       corpora: list, n: int, min_matches: int, min_fraction: float) -> dict:
    store = Store(store_root)
    docs = store.read_parquet(*parts, columns=["id", "text", "source"])
    size = docs.num_rows
    h, offsets = word_hashes(docs["text"])
    grams, doc = distinct_ngrams(h, offsets, n)
    keys = index["hashes"]
    pos = np.searchsorted(keys, grams.view(np.int64))
    hit = pos < len(keys)
    hit[hit] = keys[pos[hit]] == grams.view(np.int64)[hit]
    total = np.bincount(doc, minlength=size)
    matching = np.bincount(doc[hit], minlength=size)
    fraction = np.divide(matching, total, out=np.zeros(size), where=total > 0)
    contaminated = (matching >= min_matches) & (fraction >= min_fraction)
    best = best_owner(doc[hit], index["owners"][pos[hit]], size)
    has = best >= 0
    at = np.searchsorted(index["uids"], best[has])
    matched_doc = np.full(size, None, dtype=object)
    matched_doc[has] = np.asarray(index["doc_ids"], dtype=object)[at]
    matched_corpus = np.full(size, None, dtype=object)
    matched_corpus[has] = np.asarray(corpora, dtype=object)[best[has] >> CORPUS_SHIFT]
    store.write_parquet(pa.table({
        **doc_columns(docs, pool_id, shard, np.diff(offsets)),
        "ngrams": pa.array(total.astype(np.int64)), "matching_ngrams": pa.array(matching.astype(np.int64)),
        "match_fraction": pa.array(fraction), "contaminated": pa.array(contaminated),
        "matched_corpus": pa.array(matched_corpus, pa.string()), "matched_doc": pa.array(matched_doc, pa.string()),
        "selected": pa.array(~contaminated & non_empty(docs))}), *out)
    return {"rows": size, "node": node_id()}


def run_decontaminate(ctx: JobContext, spec: DecontaminateSpec) -> dict:
    corpora = [spec.pool, *spec.against]
    for c in corpora:
        ctx.corpus(c)
    index_tasks = []
    for i, corpus in enumerate(corpora[1:], start=1):
        for s, p in ctx.corpus_shards(corpus):
            out = layout.corpus_shard_part(ctx.job_id, "ngrams", i, s)
            index_tasks.append(Task(out=out, key=(i, s), submit=lambda i=i, s=s, p=p, out=out: ctx.submit(
                "index", index_task, ctx.store.root, i, s, p, out, spec.n)))
    ctx.run_tasks("index", index_tasks)
    parts = [t.out for t in index_tasks]
    size = sum(ctx.store.parquet_file(*p).metadata.num_rows for p in parts)
    if size > MAX_INDEX_NGRAMS:
        raise JobFailed("index_too_large", f"the against corpora hold {size:,} distinct {spec.n}-grams; the exact "
                        f"index takes at most {MAX_INDEX_NGRAMS:,}: compare with fewer or smaller corpora")
    index: list = []

    def index_ref():
        # Built once, and only if some pool shard still needs it (a resumed job may need none).
        if not index:
            index.append(ctx.submit("index", build_index, ctx.store.root, parts))
        return index[0]

    man_id = manifest_id(ctx)
    tasks = [Task(out=layout.manifest_part(man_id, s), key=s,
                  submit=lambda s=s, p=p: ctx.submit("score", contamination_task,
                      ctx.store.root, spec.pool, s, p, layout.manifest_part(man_id, s), index_ref(), corpora,
                      spec.n, spec.min_matches, spec.min_fraction))
             for s, p in ctx.corpus_shards(spec.pool)]
    ctx.run_tasks("score", tasks)
    summary = contamination_summary(ctx, man_id)
    summary["index_ngrams"] = size
    return commit_cleaning(ctx, "decontaminate", spec.pool, summary,
                           {"against": spec.against, "n": spec.n, "min_matches": spec.min_matches,
                            "min_fraction": spec.min_fraction})


def contamination_summary(ctx: JobContext, man_id: str) -> dict:
    with connection(ctx.config.temp_root) as con:
        con.register("m", dataset(ctx.store, manifest_files(ctx.store, man_id)))
        total = con.execute("SELECT count(*) FILTER (WHERE contaminated) FROM m").fetchone()[0]
        by_corpus = con.execute("SELECT matched_corpus, count(*) FROM m WHERE contaminated GROUP BY 1").fetchall()
        by_source = con.execute("SELECT coalesce(source, ''), count(*) FROM m WHERE contaminated GROUP BY 1").fetchall()
    return {"contaminated": int(total), "contaminated_by_corpus": {c: int(k) for c, k in by_corpus},
            "contaminated_by_source": {s: int(k) for s, k in by_source}}


KINDS = [
    JobKind("decontaminate", DecontaminateSpec, run_decontaminate,
            "n-gram overlap of every pool document with benchmark or validation corpora (an exact index)",
            stages={"index": SHARD_TASK, "score": SHARD_TASK}, light=small_inputs),
]
