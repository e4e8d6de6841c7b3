"""Selection manifests: a selection is a query over per-shard score tables (Dolma-style).

A job writes one score part per corpus shard (`doc_id, shard, row, source, n_tokens, score, …`),
apart from the documents. `write_selection` ranks all parts with DuckDB and writes the manifest as
one Parquet part per input shard with deterministic names, each written atomically; the caller
commits the manifest (catalog row) only after every part is in place, so re-running a selection
overwrites parts and never duplicates or loses a row.
"""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from storage import layout
from storage.duck import connection
from storage.fs import Store

BASE_COLUMNS = ["doc_id", "corpus_id", "shard", "row", "source", "n_tokens", "score", "rank", "selected"]


def dataset(store: Store, parts: list[tuple[str, ...]]) -> ds.Dataset:
    """An Arrow dataset over Parquet files in the store: DuckDB scans it lazily, on any filesystem."""
    return ds.dataset([store.path(*p) for p in parts], filesystem=store.fs, format="parquet")


def manifest_files(store: Store, manifest_id: str) -> list[tuple[str, ...]]:
    """The paths of a manifest's parts, in shard order."""
    return [p for _, p in layout.manifest_parts(store, manifest_id)]


def manifest_corpus(store: Store, manifest_id: str) -> str | None:
    """The corpus a manifest's rows come from (None when it has no rows or no `corpus_id`)."""
    parts = manifest_files(store, manifest_id)
    if not parts or "corpus_id" not in store.parquet_file(*parts[0]).schema_arrow.names:
        return None
    return store.read_parquet(*parts[0], columns=["corpus_id"])["corpus_id"][0].as_py()


EXCLUDED_SCHEMA = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("excluded_by", pa.string())])


def unselected_sql(tables: list[str]) -> str:
    """SQL for (shard, row, k) of every row that the k-th of `tables` (manifests over one corpus)
    does not select (`selected` false or NULL): what a restriction leaves out of a pool."""
    return " UNION ALL ".join(f"SELECT shard, row, {k} AS k FROM {t} WHERE selected IS NOT TRUE"
                              for k, t in enumerate(tables))


def exclusions(store: Store, manifest_ids: list[str], temp_root: str | None = None) -> pa.Table:
    """(shard, row, excluded_by) of every document that one of `manifest_ids` (all over one corpus)
    does not select, `excluded_by` the first of them in the list that does not; sorted by shard, row."""
    if not manifest_ids:
        return EXCLUDED_SCHEMA.empty_table()
    with connection(temp_root) as con:
        for i, m in enumerate(manifest_ids):
            con.register(f"m{i}", dataset(store, manifest_files(store, m)))
        union = unselected_sql([f"m{i}" for i in range(len(manifest_ids))])
        con.register("ids", pa.table({"k": pa.array(range(len(manifest_ids)), pa.int64()),
                                      "excluded_by": pa.array(manifest_ids, pa.string())}))
        return con.sql(f"""SELECT e.shard::INTEGER AS shard, e.row::BIGINT AS row, ids.excluded_by
                           FROM (SELECT shard, row, min(k) AS k FROM ({union}) GROUP BY shard, row) e
                           JOIN ids USING (k) ORDER BY shard, row""").to_arrow_table().cast(EXCLUDED_SCHEMA)


def rejections_sql(filters: int, selected_only: bool) -> str:
    """SQL for one row per source of the pool, table `p` (a manifest; only its selected rows with
    `selected_only`), restricted by `filters` manifests over its corpus, tables f0, f1, …:
    `source, pool, selected, survivors` (documents no filter rejects), then per filter k
    `rejected_k` (the pool's documents it does not select) and `excluded_k` (those it is the first
    of the filters to reject, as a restricted selection's `excluded_by` names them)."""
    flags = "".join(f", bool_or(r.k = {k}) AS r{k}" for k in range(filters))
    counts = "".join(f", count(*) FILTER (WHERE r{k}) AS rejected_{k}, count(*) FILTER (WHERE first = {k}) AS excluded_{k}"
                     for k in range(filters))
    return f"""
        WITH rej AS ({unselected_sql([f"f{k}" for k in range(filters)])}),
        doc AS (SELECT any_value(p.source) AS source, bool_or(p.selected) AS selected, min(r.k) AS first{flags}
                FROM (SELECT shard, row, source, selected FROM p{" WHERE selected" if selected_only else ""}) p
                LEFT JOIN rej r ON p.shard = r.shard AND p.row = r.row GROUP BY p.shard, p.row)
        SELECT source, count(*) AS pool, count(*) FILTER (WHERE selected) AS selected,
               count(*) FILTER (WHERE first IS NULL) AS survivors{counts}
        FROM doc GROUP BY source ORDER BY source NULLS LAST"""


def selection_size(select: dict, eligible: int) -> int:
    """How many of `eligible` documents a `select` spec keeps."""
    if "count" in select:
        return min(int(select["count"]), eligible)
    if "fraction" in select:
        return min(eligible, int(round(float(select["fraction"]) * eligible)))
    if "tau" in select:
        return min(eligible, int(round(eligible / float(select["tau"]))))
    raise ValueError(f"select must have fraction, count or tau: {select}")


def apportion(n: int, sizes: dict[int, int]) -> dict[int, int]:
    """`n` (at most the sum of `sizes`) split over shards in proportion to their sizes, summing to
    exactly `n` (largest remainders; ties to the lower shard)."""
    total = sum(sizes.values())
    if not total:
        return {s: 0 for s in sizes}
    exact = {s: n * c / total for s, c in sizes.items()}
    quota = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: (quota[s] - exact[s], s))[:n - sum(quota.values())]:
        quota[s] += 1
    return quota


def write_selection(store: Store, score_parts: list[tuple[str, ...]], manifest_id: str, *,
                    corpus_id: str, select: dict, mode: str = "global", key: str = "score",
                    temp_root: str | None = None, max_temp_size: str | None = None,
                    excluded: pa.Table | None = None) -> dict:
    """Rank the score parts by `key` (higher is better) and write the parts of manifest `manifest_id`.

    Rows with a NULL score (e.g. empty documents) get no rank and are never selected.
    `excluded` (`exclusions`: shard, row, excluded_by) leaves documents out of a restricted pool:
    they keep NULL scores, whatever the score parts hold, and carry the column `excluded_by`.
    `mode="per_shard"` applies the selection rule to each shard on its own.
    DuckDB spills (the ranking of a large pool) into a private directory under `temp_root`.
    Returns {num_rows, num_selected, num_shards, columns}.
    """
    with connection(temp_root, max_temp_size) as con:
        con.register("raw", dataset(store, score_parts))
        if excluded is None:
            con.execute("CREATE VIEW scores AS SELECT * FROM raw")
        else:
            con.register("excluded", excluded)
            con.execute("""CREATE VIEW scores AS
                SELECT s.* REPLACE (CASE WHEN e.excluded_by IS NULL THEN s.score END AS score), e.excluded_by
                FROM raw s LEFT JOIN excluded e ON s.shard = e.shard AND s.row = e.row""")
        counts = con.execute(
            "SELECT shard, count(*) FILTER (WHERE score IS NOT NULL) FROM scores GROUP BY shard").fetchall()
        total = sum(c for _, c in counts)
        if mode == "per_shard":
            if "count" in select:  # split the count over shards in proportion to their size
                quota = apportion(min(int(select["count"]), total), dict(counts))
            else:
                quota = {s: selection_size(select, c) for s, c in counts}
            part_by = "PARTITION BY shard"
        else:
            quota = {s: selection_size(select, total) for s, _ in counts}
            part_by = ""
        con.register("quota", pa.table({"q_shard": pa.array(list(quota), pa.int32()),
                                        "q_n": pa.array(list(quota.values()), pa.int64())}))
        extra = [d[0] for d in con.execute("SELECT * FROM scores LIMIT 0").description
                 if d[0] not in BASE_COLUMNS]
        extra_sql = "".join(f", {duckdb_ident(c)}" for c in extra)
        # A document without a score has no place in the order, whatever its key holds.
        order = f"CASE WHEN score IS NOT NULL THEN {duckdb_ident(key)} END DESC NULLS LAST, doc_id"
        sql = f"""
            WITH ranked AS (
              SELECT *, row_number() OVER (ORDER BY {order}) AS g_rank,
                        row_number() OVER ({part_by} ORDER BY {order}) AS s_rank
              FROM scores)
            SELECT doc_id, ? AS corpus_id, shard::INTEGER AS shard, row::BIGINT AS row, source,
                   n_tokens::BIGINT AS n_tokens, score::DOUBLE AS score,
                   CASE WHEN score IS NULL THEN NULL ELSE g_rank END::BIGINT AS rank,
                   (score IS NOT NULL AND s_rank <= q_n) AS selected {extra_sql}
            FROM ranked JOIN quota ON shard = q_shard
            ORDER BY shard, row"""
        return write_parts(store, con.sql(sql, params=[corpus_id]).to_arrow_reader(65_536), manifest_id)


def write_parts(store: Store, reader: pa.RecordBatchReader, manifest_id: str) -> dict:
    """Write rows sorted by `shard` as the manifest's parts, one per shard.
    Returns {num_rows, num_selected, num_shards, columns}."""
    num_rows = num_selected = 0
    shards_written = []
    writer, cur = None, None
    schema = reader.schema
    for batch in reader:
        shard_col = batch.column("shard").to_numpy()
        bounds = [0, *(np.flatnonzero(np.diff(shard_col)) + 1), len(shard_col)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            s = int(shard_col[start])
            if s != cur:  # rows arrive sorted by shard: a new shard starts a new part
                if writer:
                    writer.close()
                writer, cur = store.parquet_writer(schema, *layout.manifest_part(manifest_id, s)), s
                shards_written.append(s)
            piece = batch.slice(start, end - start)
            writer.write(piece)
            num_rows += piece.num_rows
            num_selected += int(pc.sum(piece.column("selected")).as_py() or 0)
    if writer:
        writer.close()
    return {"num_rows": num_rows, "num_selected": num_selected, "num_shards": len(shards_written),
            "columns": columns_of(schema)}


def columns_of(schema: pa.Schema) -> list[dict]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def parts_info(store: Store, manifest_id: str) -> dict:
    """{num_rows, num_selected, num_shards, columns} of a manifest whose parts tasks wrote one by one."""
    data = dataset(store, manifest_files(store, manifest_id))
    selected = data.to_table(columns=["selected"]).column("selected")
    return {"num_rows": data.count_rows(), "num_selected": int(pc.sum(selected).as_py() or 0),
            "num_shards": len(data.files), "columns": columns_of(data.schema)}


def duckdb_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def write_table_manifest(store: Store, table: pa.Table, manifest_id: str) -> dict:
    """A manifest that is not a selection (e.g. projection predictions): one part, as given."""
    store.write_parquet(table, *layout.manifest_part(manifest_id, 0))
    sel = pc.sum(table.column("selected")).as_py() or 0 if "selected" in table.column_names else 0
    return {"num_rows": table.num_rows, "num_selected": int(sel), "num_shards": 1,
            "columns": columns_of(table.schema)}


def score_part(ids: pa.Array, shard: int, sources: pa.Array, n_tokens, score, **extra) -> pa.Table:
    """The per-shard score table a job writes before selection; NaN scores become NULL."""
    n = len(ids)
    cols = {"doc_id": ids, "shard": pa.array(np.full(n, shard, dtype=np.int32)),
            "row": pa.array(np.arange(n, dtype=np.int64)), "source": sources,
            "n_tokens": pa.array(np.asarray(n_tokens, dtype=np.int64)),
            "score": pa.array(np.asarray(score, dtype=np.float64), from_pandas=True)}
    for k, v in extra.items():
        cols[k] = v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(v), from_pandas=True)
    return pa.table(cols)


def selected_by_source(store: Store, parts: list[tuple[str, ...]], temp_root: str | None = None) -> dict[str, int]:
    with connection(temp_root) as con:
        con.register("m", dataset(store, parts))
        rows = con.execute("SELECT coalesce(source, ''), count(*) FROM m WHERE selected GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return {s: int(c) for s, c in rows}


def score_distribution(store: Store, parts: list[tuple[str, ...]], column: str = "score",
                       quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9), limit: int = 50) -> dict:
    """Per source (the `limit` largest): documents, selected, mean and quantiles of `column`."""
    qs = ", ".join(str(q) for q in quantiles)
    with connection() as con:
        con.register("m", dataset(store, parts))
        rows = con.execute(f"""
            SELECT coalesce(source, ''), count(*), count(*) FILTER (WHERE selected),
                   avg({duckdb_ident(column)}), quantile_cont({duckdb_ident(column)}, [{qs}])
            FROM m WHERE {duckdb_ident(column)} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {int(limit)}""").fetchall()
    return {s: {"docs": int(n), "selected": int(k), "mean": float(mean),
                "quantiles": {str(q): float(v) for q, v in zip(quantiles, vals)}}
            for s, n, k, mean, vals in rows}


def overlap_with_top(store: Store, manifest_parts: list[tuple[str, ...]], score_parts: list[tuple[str, ...]],
                     key: str, n: int) -> dict:
    """How many of a manifest's selected documents are among the `n` highest `key` of other score
    parts over the same corpus (ties by doc_id), and that top-n's documents per source."""
    with connection() as con:
        con.register("m", dataset(store, manifest_parts))
        con.register("other", dataset(store, score_parts))
        con.execute(f"""CREATE TEMP TABLE top AS SELECT doc_id, source FROM other
                        WHERE {duckdb_ident(key)} IS NOT NULL
                        ORDER BY {duckdb_ident(key)} DESC, doc_id LIMIT {int(n)}""")
        both = con.execute("SELECT count(*) FROM m JOIN top USING (doc_id) WHERE m.selected").fetchone()[0]
        by_source = con.execute("SELECT coalesce(source, ''), count(*) FROM top GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return {"overlap": int(both), "selected_by_source": {s: int(c) for s, c in by_source}}


def selection_overlap(store: Store, parts_a: list[tuple[str, ...]], parts_b: list[tuple[str, ...]]) -> dict:
    """How two selections overlap: documents (corpus, doc_id) selected by each, by both, their
    Jaccard index |A∩B| / |A∪B|, and the same per source."""
    with connection() as con:
        con.register("ma", dataset(store, parts_a))
        con.register("mb", dataset(store, parts_b))
        rows = con.execute("""
            WITH a AS (SELECT DISTINCT corpus_id, doc_id, coalesce(source, '') AS source FROM ma WHERE selected),
                 b AS (SELECT DISTINCT corpus_id, doc_id, coalesce(source, '') AS source FROM mb WHERE selected)
            SELECT coalesce(a.source, b.source), count(a.doc_id), count(b.doc_id),
                   count(*) FILTER (WHERE a.doc_id IS NOT NULL AND b.doc_id IS NOT NULL), count(*)
            FROM a FULL OUTER JOIN b ON a.corpus_id = b.corpus_id AND a.doc_id = b.doc_id
            GROUP BY 1 ORDER BY 5 DESC, 1""").fetchall()

    def counts(a: int, b: int, both: int, union: int) -> dict:
        return {"selection": int(a), "against": int(b), "both": int(both),
                "jaccard": both / union if union else None}
    total = counts(*(sum(r[i] for r in rows) for i in range(1, 5)))
    return {**total, "by_source": {r[0]: counts(*r[1:]) for r in rows}}
