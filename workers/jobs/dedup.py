"""`dedup`: exact and fuzzy (MinHash-LSH) deduplication of a pool, within itself and against corpora
already ingested (docs/methods.md, "Deduplication").

Three stages, each resumable from its files:
1. signatures: one task per shard of the pool and of every `against` corpus writes, per document,
   its position (uid), the hash of its normalised text and its LSH band keys (with a `threshold`,
   also its whole MinHash signature): jobs/<job>/signatures/cCCC-NNNNN.parquet.
2. bands: one task per band (exact: one, over the text hashes). DuckDB groups every signature part
   by the band's key (a hash aggregate that spills, so memory does not grow with the pool) and pairs
   each member of a bucket with the bucket's smallest uid: a star of k−1 pairs, not k².
3. cluster: one task. With a `threshold`, each pair is kept only if the Jaccard similarity estimated
   from the two full signatures reaches it. Connected components by min-label propagation in DuckDB,
   each round followed by pointer jumping (label ← label of label), until no label changes: no
   single process ever holds the edges. Then the keep rule, and the manifest's parts, written one
   pool shard at a time (no sort of the whole pool).
"""
from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from scoring.minhash import (DEFAULT_BANDS, DEFAULT_NGRAM, DEFAULT_ROWS, band_keys, detection_probability,
                             document_signatures, implied_threshold)
from scoring.ngrams import text_hashes, word_hashes
from storage import layout
from storage.duck import connection
from storage.errors import DomainError
from storage.fs import Store
from storage.manifests import dataset, duckdb_ident, manifest_corpus, manifest_files, write_parts
from workers.driver.engine import JobContext
from workers.jobs.cleaning import CORPUS_SHIFT, MAX_CORPORA, PoolAgainst, corpus_of_uid_sql, doc_columns, uids
from workers.jobs.common import commit_selection, empty_mask, manifest_id
from workers.kind import SHARD_TASK, SQL_PASS, JobKind
from workers.runtime import node_id
from workers.specs import CorpusId, ManifestId, Records, StrictModel

BAND_MEMORY = "512MB"      # DuckDB's memory in a bands task (it spills past it)
CLUSTER_MEMORY = "1GB"     # and in the cluster task
MAX_ROUNDS = 10_000        # label propagation converges in far fewer; a bound, not a tuning knob
EXACT = -1                 # the "band" of equal normalised texts


class KeepByScore(StrictModel):
    """Keep the member with the highest `column` of another manifest over the same pool."""
    by: Literal["score"]
    manifest: ManifestId
    column: str = Field("score", min_length=1, description="a column of that manifest (higher is kept)")

    def check(self, manifest: dict, over: str | None, pool: str, field: str) -> None:
        """`manifest` (its record; `over`: the corpus its rows come from) must hold a score per
        document of `pool` in `column`: bad_keep (422) naming `field`.manifest or `field`.column."""
        names = [c["name"] for c in manifest.get("columns") or []]
        if "doc_id" not in names or over != pool:
            what = (f"has no document rows (no doc_id column; it is a {manifest['kind']} manifest)" if "doc_id" not in names
                    else f"is over corpus {over}, not the pool {pool}" if over else "holds no documents")
            raise DomainError("bad_keep", f"{field}.manifest: manifest {self.manifest} {what}; keep by score needs "
                              "a manifest over the pool", {"field": f"{field}.manifest", "manifest_corpus": over,
                                                           "pool": pool})
        if self.column not in names:
            raise DomainError("bad_keep", f"{field}.column: manifest {self.manifest} has no column {self.column!r}"
                              f"; its columns are {', '.join(names)}",
                              {"field": f"{field}.column", "columns": names})


class DedupSpec(PoolAgainst):
    against: list[CorpusId] = Field(default_factory=list, max_length=MAX_CORPORA,
                                    description="corpora already ingested: pool documents that duplicate one "
                                                "of theirs are dropped and name it")
    method: Literal["fuzzy", "exact"] = Field(
        "fuzzy", description="fuzzy: MinHash-LSH (it finds exact duplicates too); exact: equal normalised text")
    ngram: int = Field(DEFAULT_NGRAM, ge=1, le=32, description="words per shingle")
    bands: int = Field(DEFAULT_BANDS, ge=1, le=64)
    rows: int = Field(DEFAULT_ROWS, ge=1, le=32, description="hash functions per band")
    threshold: float | None = Field(
        None, gt=0, le=1, description="verify each candidate pair: its Jaccard similarity, estimated from the "
                                      "whole signatures, must reach this; null: every band collision is a pair")
    keep: Literal["first", "longest"] | KeepByScore = Field(
        "first", description="which member of a cluster is kept: the first in corpus order, the longest, or "
                             "the highest score of another manifest")

    def check_records(self, records: Records, field: str) -> None:
        if isinstance(self.keep, KeepByScore):    # at submit: a 422 before anything is queued
            self.keep.check(records.record("manifests", self.keep.manifest),
                            records.manifest_corpus(self.keep.manifest), self.pool, f"{field}.keep")


# -- 1. signatures -------------------------------------------------------------------------------

def band_column(band: int) -> str:
    return "text_hash" if band == EXACT else f"b{band:02d}"


def signature_task(store: Store, key: tuple[int, int], parts: tuple, out: tuple, fuzzy: bool, ngram: int,
                   bands: int, rows: int, full: bool) -> dict:
    corpus_index, shard = key
    docs = store.read_parquet(*parts, columns=["id", "text", "source"])
    h, offsets = word_hashes(docs["text"])
    n_words = np.diff(offsets)
    blank = empty_mask(docs["text"]) | (n_words == 0)
    cols = {"uid": pa.array(uids(corpus_index, shard, docs.num_rows)), **doc_columns(docs, None, shard, n_words),
            "text_hash": pa.array(text_hashes(h, offsets).view(np.int64), mask=blank)}
    if fuzzy:
        sig = document_signatures(h, offsets, ngram, bands * rows)
        keys = band_keys(sig, bands, rows)
        for j in range(bands):
            cols[band_column(j)] = pa.array(keys[:, j], mask=blank)
        if full:
            cols["minhash"] = pa.FixedSizeListArray.from_arrays(pa.array(sig.view(np.int64).ravel()), bands * rows)
    store.write_parquet(pa.table(cols), *out)
    return {"rows": docs.num_rows, "node": node_id()}


# -- 2. candidate pairs per band -----------------------------------------------------------------

def band_task(store: Store, band: int, column: str, out: tuple, sig_parts: list) -> dict:
    """Pairs (a, b) of one band (its key `column`): every member a of a bucket with its smallest
    member b. Buckets without a pool document are left out (they pair nothing the manifest shows)."""
    key = duckdb_ident(column)
    with connection(memory_limit=BAND_MEMORY, threads=1) as con:
        con.register("sig", dataset(store, sig_parts))
        reader = con.sql(f"""
            WITH buckets AS (
              SELECT {key} AS k, min(uid) AS anchor FROM sig WHERE {key} IS NOT NULL
              GROUP BY {key} HAVING count(*) > 1 AND min(uid) < {1 << CORPUS_SHIFT})
            SELECT s.uid AS a, buckets.anchor AS b
            FROM sig s JOIN buckets ON s.{key} = buckets.k WHERE s.uid <> buckets.anchor""").to_arrow_reader(65_536)
        with store.parquet_writer(reader.schema, *out) as writer:
            for batch in reader:
                writer.write(batch)
        pairs = writer.rows
    return {"pairs": pairs, "node": node_id()}


# -- 3. clusters, the keep rule, the manifest ----------------------------------------------------

def keep_order(keep) -> str:
    """ORDER BY of a cluster's pool members: the first of them is kept."""
    if keep == "first":
        return "uid"
    if keep == "longest":
        return "n_chars DESC, uid"
    return "keep_score DESC NULLS LAST, uid"


def components(con, threshold: float | None) -> dict:
    """Label every document that has a pair with its component's smallest uid: table `lab(node, label)`."""
    con.execute("CREATE TABLE e AS SELECT DISTINCT a, b FROM pairs")
    candidates = con.execute("SELECT count(*) FROM e").fetchone()[0]
    if threshold is not None:
        con.execute("""
            CREATE OR REPLACE TABLE e AS SELECT e.a, e.b FROM e
            JOIN sig s1 ON s1.uid = e.a JOIN sig s2 ON s2.uid = e.b
            WHERE len(list_filter(range(1, len(s1.minhash) + 1), lambda i: s1.minhash[i] = s2.minhash[i]))
                  >= ? * len(s1.minhash)""", [threshold])
    verified = con.execute("SELECT count(*) FROM e").fetchone()[0]
    con.execute("CREATE TABLE g AS SELECT a AS x, b AS y FROM e UNION SELECT b, a FROM e")
    con.execute("CREATE TABLE lab AS SELECT x AS node, least(x, min(y)) AS label FROM g GROUP BY x")
    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        con.execute("""
            CREATE OR REPLACE TABLE nxt AS
            WITH m AS (SELECT g.x AS node, min(l.label) AS nl FROM g JOIN lab l ON l.node = g.y GROUP BY g.x),
                 c AS (SELECT lab.node, least(lab.label, m.nl) AS label FROM lab JOIN m USING (node))
            SELECT c.node, least(c.label, j.label) AS label FROM c JOIN c AS j ON j.node = c.label""")
        changed = con.execute("SELECT count(*) FROM nxt JOIN lab USING (node) WHERE nxt.label <> lab.label").fetchone()[0]
        con.execute("CREATE OR REPLACE TABLE lab AS SELECT * FROM nxt")
        if not changed:
            break
    else:
        raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")
    return {"candidate_pairs": int(candidates), "verified_pairs": int(verified), "rounds": rounds}


def write_manifest(con, store: Store, sig_parts: list, corpus_id: str, man_id: str) -> dict:
    """The manifest's parts, one pool shard at a time: each shard's signature part joined with
    `info`, the pool documents that are in a cluster (from tables `mem`, `cl`). A single query
    joining and sorting the whole pool ran out of the cluster task's DuckDB memory at 3.3M documents
    instead of spilling; one shard's rows fit, whatever the pool's size."""
    con.execute(f"""
        CREATE TABLE info AS
        SELECT m.uid, m.cluster, c.size, c.keep_uid, c.keep_doc, c.matched_uid, c.matched_doc,
               names.corpus AS matched_corpus
        FROM mem m JOIN cl c USING (cluster) LEFT JOIN names ON names.idx = {corpus_of_uid_sql('c.matched_uid')}
        WHERE m.ci = 0""")
    totals = {"num_rows": 0, "num_selected": 0, "num_shards": 0}
    for part in sig_parts:
        shard = store.read_parquet(*part, columns=["uid", "doc_id", "shard", "row", "source", "n_tokens",
                                                   "n_chars", "text_hash"])
        if not shard.num_rows or shard["uid"][0].as_py() >> CORPUS_SHIFT:
            continue                  # an `against` corpus's part (a part holds one corpus's shard)
        con.register("part", shard)
        reader = con.sql("""
            WITH k AS (
              SELECT s.*, i.cluster, i.size, i.keep_doc, i.matched_uid, i.matched_doc, i.matched_corpus,
                     CASE WHEN s.text_hash IS NULL THEN false
                          WHEN i.cluster IS NULL THEN true
                          ELSE i.matched_uid IS NULL AND s.uid = i.keep_uid END AS kept
              FROM part s LEFT JOIN info i USING (uid))
            SELECT doc_id, ? AS corpus_id, shard::INTEGER AS shard, row::BIGINT AS row, source,
                   n_tokens::BIGINT AS n_tokens, n_chars::BIGINT AS n_chars,
                   CASE WHEN text_hash IS NULL THEN NULL ELSE coalesce(cluster, uid) END::BIGINT AS cluster_id,
                   CASE WHEN text_hash IS NULL THEN 0 ELSE coalesce(size, 1) END::BIGINT AS cluster_size,
                   kept,
                   CASE WHEN NOT kept AND matched_uid IS NULL THEN keep_doc END AS duplicate_of,
                   matched_corpus, matched_doc,
                   kept AS selected
            FROM k ORDER BY row""", params=[corpus_id]).to_arrow_reader(65_536)
        written = write_parts(store, reader, man_id)
        con.unregister("part")
        totals = {k: totals[k] + written[k] for k in totals} | {"columns": written["columns"]}
    return totals


def cluster_task(store: Store, sig_parts: list, pair_parts: list, corpora: list, man_id: str,
                 keep, keep_parts: list, threshold: float | None, out: tuple, threads: int) -> dict:
    with connection(memory_limit=CLUSTER_MEMORY, threads=threads) as con:
        con.register("sig", dataset(store, sig_parts))
        if pair_parts:
            con.register("pairs", dataset(store, pair_parts))
        else:
            con.execute("CREATE VIEW pairs AS SELECT NULL::BIGINT AS a, NULL::BIGINT AS b WHERE false")
        stats = components(con, threshold)
        con.register("names", pa.table({"idx": pa.array(range(len(corpora)), pa.int64()), "corpus": corpora}))
        scores = "(SELECT NULL::VARCHAR AS doc_id, NULL::DOUBLE AS v WHERE false)"
        if keep_parts:
            con.register("ks", dataset(store, keep_parts))
            scores = f"(SELECT doc_id, {duckdb_ident(keep['column'])} AS v FROM ks)"
        con.execute(f"""
            CREATE TABLE mem AS
            SELECT l.node AS uid, l.label AS cluster, s.doc_id, {corpus_of_uid_sql('s.uid')} AS ci, s.n_chars,
                   CASE WHEN {corpus_of_uid_sql('s.uid')} = 0 THEN ks.v END AS keep_score
            FROM lab l JOIN sig s ON s.uid = l.node LEFT JOIN {scores} ks ON ks.doc_id = s.doc_id""")
        order = keep_order(keep)
        con.execute(f"""
            CREATE TABLE cl AS
            SELECT cluster, count(*) FILTER (WHERE ci = 0) AS size,
                   first(uid ORDER BY uid) FILTER (WHERE ci > 0) AS matched_uid,
                   first(doc_id ORDER BY uid) FILTER (WHERE ci > 0) AS matched_doc,
                   first(uid ORDER BY {order}) FILTER (WHERE ci = 0) AS keep_uid,
                   first(doc_id ORDER BY {order}) FILTER (WHERE ci = 0) AS keep_doc
            FROM mem GROUP BY cluster""")
        info = write_manifest(con, store, sig_parts, corpora[0], man_id)
        counts = con.execute(f"""
            SELECT count(*) FILTER (WHERE text_hash IS NULL),
                   count(text_hash) - count(DISTINCT text_hash)
            FROM sig WHERE {corpus_of_uid_sql('uid')} = 0""").fetchone()
        clusters = con.execute("SELECT count(*), coalesce(max(size), 0) FROM cl WHERE size > 1").fetchone()
        matched = con.execute("""SELECT names.corpus, count(*) FROM mem JOIN cl USING (cluster)
                                 JOIN names ON names.idx = (cl.matched_uid >> ?)
                                 WHERE mem.ci = 0 GROUP BY 1""", [CORPUS_SHIFT]).fetchall()
    summary = {**stats, "num_empty": int(counts[0]), "exact_duplicates": int(counts[1]),
               "clusters": int(clusters[0]), "largest_cluster": int(clusters[1]),
               "matched_against": {c: int(n) for c, n in matched}}
    store.write_bytes(json.dumps({"manifest": info, "summary": summary}).encode(), *out)
    return {"node": node_id()}


def keep_parts_of(ctx: JobContext, spec: DedupSpec) -> list:
    """The parts of the manifest whose scores choose what is kept, checked again (the submit checked
    it, but the job runs later)."""
    if not isinstance(spec.keep, KeepByScore):
        return []
    spec.keep.check(ctx.catalog.get("manifests", spec.keep.manifest, ctx.tenant),
                    manifest_corpus(ctx.store, spec.keep.manifest), spec.pool, "spec.keep")
    return manifest_files(ctx.store, spec.keep.manifest)


def run_dedup(ctx: JobContext, spec: DedupSpec) -> dict:
    corpora = [spec.pool, *spec.against]
    for c in corpora:
        ctx.corpus(c)
    keep_parts = keep_parts_of(ctx, spec)
    fuzzy = spec.method == "fuzzy"
    shards = [((i, s), p) for i, corpus in enumerate(corpora) for s, p in ctx.corpus_shards(corpus)]
    signatures = lambda key: layout.corpus_shard_part(ctx.job_id, "signatures", *key)  # noqa: E731
    ctx.map_shards("signatures", signature_task, shards, fuzzy, spec.ngram, spec.bands, spec.rows,
                   spec.threshold is not None, out=signatures)
    sig_parts = [signatures(key) for key, _ in shards]

    bands = range(spec.bands) if fuzzy else [EXACT]
    ctx.map_shards("bands", band_task, [(b, band_column(b)) for b in bands], sig_parts,
                   out=lambda b: layout.band_part(ctx.job_id, b), unit="bands")

    out = layout.job_file(ctx.job_id, "clusters")
    keep = spec.keep.model_dump() if isinstance(spec.keep, KeepByScore) else spec.keep
    ctx.run_one("cluster", cluster_task, sig_parts, [layout.band_part(ctx.job_id, b) for b in bands], corpora,
                manifest_id(ctx), keep, keep_parts, spec.threshold, out, ctx.threads("cluster"), out=out)
    done = json.loads(ctx.store.read_bytes(*out))
    summary = {**done["summary"], "method": spec.method}
    if fuzzy:
        summary["lsh"] = {"bands": spec.bands, "rows": spec.rows, "ngram": spec.ngram,
                          "implied_threshold": round(implied_threshold(spec.bands, spec.rows), 4),
                          "detection_probability_at_0.8": round(detection_probability(0.8, spec.bands, spec.rows), 4)}
    return commit_selection(ctx, "dedup", spec.pool, done["manifest"], {"against": spec.against, "method": spec.method},
                            summary)


KINDS = [
    JobKind("dedup", DedupSpec, run_dedup,
            "exact and MinHash-LSH deduplication: every document with its cluster and whether it is kept",
            stages={"signatures": SHARD_TASK, "bands": SHARD_TASK, "cluster": SQL_PASS}),
]
