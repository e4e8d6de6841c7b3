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
from pydantic import Field

from scoring.ngrams import best_owner, distinct_ngrams, word_hashes
from storage import layout
from storage.duck import connection
from storage.fs import Store
from storage.manifests import dataset, manifest_files, parts_info
from workers.driver.engine import JobContext, JobFailed
from workers.jobs.cleaning import CORPUS_SHIFT, MAX_CORPORA, PoolAgainst, doc_columns, uids
from workers.jobs.common import commit_selection, empty_mask, manifest_id
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


def index_task(store: Store, key: tuple[int, int], parts: tuple, out: tuple, n: int) -> dict:
    corpus_index, shard = key
    docs = store.read_parquet(*parts, columns=["id", "text"])
    grams, doc = distinct_ngrams(*word_hashes(docs["text"]), n)
    owner = uids(corpus_index, shard, docs.num_rows)[doc]
    store.write_parquet(pa.table({"hash": pa.array(grams.view(np.int64)), "uid": pa.array(owner),
                                  "doc_id": docs["id"].take(pa.array(doc))}), *out)
    return {"rows": docs.num_rows, "node": node_id()}


def build_index(store: Store, parts: list) -> dict:
    """{hashes (sorted, unique), owners (the smallest uid holding each), uids and doc_ids (sorted by uid)}."""
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


def contamination_task(store: Store, shard: int, parts: tuple, out: tuple, corpora: list, n: int, min_matches: int,
                       min_fraction: float, index: dict) -> dict:
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
        **doc_columns(docs, corpora[0], shard, np.diff(offsets)),
        "ngrams": pa.array(total.astype(np.int64)), "matching_ngrams": pa.array(matching.astype(np.int64)),
        "match_fraction": pa.array(fraction), "contaminated": pa.array(contaminated),
        "matched_corpus": pa.array(matched_corpus, pa.string()), "matched_doc": pa.array(matched_doc, pa.string()),
        "selected": pa.array(~contaminated & ~empty_mask(docs["text"]))}), *out)
    return {"rows": size, "node": node_id()}


def run_decontaminate(ctx: JobContext, spec: DecontaminateSpec) -> dict:
    corpora = [spec.pool, *spec.against]
    for c in corpora:
        ctx.corpus(c)
    against = [((i, s), p) for i, corpus in enumerate(corpora[1:], start=1) for s, p in ctx.corpus_shards(corpus)]
    ngrams = lambda key: layout.corpus_shard_part(ctx.job_id, "ngrams", *key)  # noqa: E731
    ctx.map_shards("index", index_task, against, spec.n, out=ngrams)
    parts = [ngrams(key) for key, _ in against]
    size = sum(ctx.store.parquet_file(*p).metadata.num_rows for p in parts)
    if size > MAX_INDEX_NGRAMS:
        raise JobFailed("index_too_large", f"the against corpora hold {size:,} distinct {spec.n}-grams; the exact "
                        f"index takes at most {MAX_INDEX_NGRAMS:,}: compare with fewer or smaller corpora")
    index: list = []

    def index_ref():
        # Built once, and only if some pool shard still needs it (a resumed job may need none).
        if not index:
            index.append(ctx.submit("index", build_index, parts))
        return index[0]

    man_id = manifest_id(ctx)
    ctx.map_shards("score", contamination_task, ctx.corpus_shards(spec.pool), corpora, spec.n, spec.min_matches,
                   spec.min_fraction, out=lambda s: layout.manifest_part(man_id, s), each=lambda s: (index_ref(),))
    summary = contamination_summary(ctx, man_id)
    summary["index_ngrams"] = size
    return commit_selection(ctx, "decontaminate", spec.pool, parts_info(ctx.store, man_id),
                            {"against": spec.against, "n": spec.n, "min_matches": spec.min_matches,
                             "min_fraction": spec.min_fraction}, summary)


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
