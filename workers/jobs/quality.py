"""`quality`: the statistics behind the published heuristic filters (Gopher quality and repetition,
C4, FineWeb) for every document, with each rule set as a boolean column (docs/methods.md,
"Heuristic quality filters"). One task per shard writes the manifest part; the presets are
evaluated there by the very SQL (scoring.quality.PRESETS) that a user can rerun, with other
thresholds, over the manifest through POST /v1/query."""
from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator

from scoring.quality import COLUMNS, PRESETS, preset_sql, stats_columns
from storage import layout
from storage.duck import connection
from storage.fs import Store
from storage.manifests import dataset, duckdb_ident, manifest_files, parts_info
from workers.driver.engine import JobContext
from workers.jobs.cleaning import doc_columns
from workers.jobs.common import commit_selection, empty_mask, manifest_id
from workers.kind import SHARD_TASK, JobKind, small_inputs
from workers.runtime import node_id
from workers.specs import CorpusId, StrictModel

PresetName = Literal["gopher_quality", "gopher_repetition", "c4", "fineweb"]
ALL = "passes_all"


class QualitySpec(StrictModel):
    pool: CorpusId
    presets: list[PresetName] = Field(
        default_factory=lambda: list(PRESETS), min_length=1,
        description="the rule sets a selected document must pass (all of them by default)")

    @field_validator("presets")
    @classmethod
    def _distinct(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("presets must not repeat a name")
        return v


_TYPES = {int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def quality_task(store: Store, shard: int, parts: tuple, out: tuple, pool_id: str, presets: list) -> dict:
    docs = store.read_parquet(*parts, columns=["id", "text", "source"])
    values = stats_columns(docs["text"].to_pylist())
    stats = pa.table({name: pa.array(values[name], _TYPES[kind]) for name, kind, _ in COLUMNS})
    table = pa.table({**doc_columns(docs, pool_id, shard, values["n_words"]),
                      **{c: stats[c] for c in stats.column_names if c != "n_chars"},
                      "non_empty": pa.array(~empty_mask(docs["text"]))})
    chosen = " AND ".join(duckdb_ident(p) for p in presets)
    flags = ", ".join(f"({preset_sql(p)}) AS {duckdb_ident(p)}" for p in PRESETS)
    with connection(threads=1) as con:
        con.register("t", table)
        result = con.sql(f"""
            WITH f AS (SELECT * EXCLUDE (non_empty), non_empty, {flags} FROM t)
            SELECT * EXCLUDE (non_empty), {' AND '.join(duckdb_ident(p) for p in PRESETS)} AS {ALL},
                   non_empty AND {chosen} AS selected
            FROM f""").to_arrow_table()
    store.write_parquet(result, *out)
    return {"rows": docs.num_rows, "node": node_id()}


def rejections(ctx: JobContext, man_id: str) -> dict:
    """Documents each rule, each preset rejects, overall and per source (the 50 largest)."""
    rules = [(name, expr) for preset in PRESETS.values() for name, expr in preset]
    per_rule = ", ".join(f"count(*) FILTER (WHERE NOT ({expr}))" for _, expr in rules)
    per_preset = ", ".join(f"count(*) FILTER (WHERE NOT {duckdb_ident(p)})" for p in PRESETS)
    with connection(ctx.config.temp_root) as con:
        con.register("m", dataset(ctx.store, manifest_files(ctx.store, man_id)))
        row = con.execute(f"SELECT {per_rule} FROM m").fetchone()
        by_source = con.execute(f"""SELECT coalesce(source, ''), count(*), count(*) FILTER (WHERE selected), {per_preset}
                                    FROM m GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 50""").fetchall()
        presets = con.execute(f"SELECT {per_preset} FROM m").fetchone()
    return {"rejected_by_rule": {name: int(n) for (name, _), n in zip(rules, row)},
            "rejected_by_preset": dict(zip(PRESETS, map(int, presets))),
            "by_source": {s: {"docs": int(n), "selected": int(k),
                              "rejected_by_preset": dict(zip(PRESETS, map(int, rest)))}
                          for s, n, k, *rest in by_source}}


def run_quality(ctx: JobContext, spec: QualitySpec) -> dict:
    ctx.corpus(spec.pool)
    man_id = manifest_id(ctx)
    ctx.map_shards("score", quality_task, ctx.corpus_shards(spec.pool), spec.pool, spec.presets,
                   out=lambda s: layout.manifest_part(man_id, s))
    summary = {**rejections(ctx, man_id), "presets": {p: preset_sql(p) for p in PRESETS}}
    return commit_selection(ctx, "quality", spec.pool, parts_info(ctx.store, man_id), {"presets": spec.presets},
                            summary)


KINDS = [
    JobKind("quality", QualitySpec, run_quality,
            "Gopher, C4 and FineWeb heuristic statistics per document, with each rule set as a boolean preset",
            stages={"score": SHARD_TASK}, light=small_inputs),
]
