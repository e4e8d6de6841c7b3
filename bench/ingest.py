"""Benchmark corpus ingestion (storage.ingest) and DuckDB top-k over a large manifest.

    .venv/bin/python bench/ingest.py [--size-mb 256] [--manifest-rows 10000000]

Generates a JSONL corpus of realistic-length documents, then measures, each in a fresh subprocess
(so peak RSS is that run's own): pyarrow's bare `read_json` on the same file (the limit), ingestion
at 1x and 4x the corpus size (peak RSS must stay flat), ingestion of the zstd-compressed file, and a
naive `json.loads` loop + pyarrow Parquet write. Also where ingestion time goes (stage by stage,
single-threaded), and DuckDB over a synthetic selection manifest: top-100 by score, a row_number()
rank, and the GROUP BY that the duplicate-id check runs. Prints a table, writes
bench/results/ingest.json, deletes what it generated.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# -- corpus ---------------------------------------------------------------------------------------

def make_corpus(path: str, target_mb: float, seed: int = 0) -> int:
    """Zipf-distributed words (some non-ASCII, quotes, tabs, newlines), log-normal document lengths
    (median ~2 KB, mean ~3.5 KB, capped at 200 KB), five sources and a nested metadata field."""
    rng = np.random.default_rng(seed)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, int(rng.integers(2, 10)))) for _ in range(20000)]
    words[:6] = ["café", "naïve", "日本語", '"quoted"', "back\\slash", "tab\tsep"]
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    pool = " ".join(words[i] for i in rng.choice(len(words), size=3_000_000, p=p / p.sum()))
    pool = pool.replace(" the ", ".\n")
    sources = ["web", "books", "code", "wiki", "news"]
    n = written = 0
    with open(path, "wb") as f:
        while written < target_mb * 1e6:
            lines = []
            for _ in range(1000):
                length = int(min(rng.lognormal(7.6, 1.0), 200_000))
                start = int(rng.integers(0, len(pool) - length))
                lines.append(json.dumps({"id": f"doc-{n}", "text": pool[start:start + length],
                                         "source": sources[n % 5], "meta": {"url": f"https://example.org/{n}",
                                                                            "lang": "en", "quality": n % 7 / 7}},
                                        ensure_ascii=False))
                n += 1
            blob = ("\n".join(lines) + "\n").encode()
            f.write(blob)
            written += len(blob)
    return n


def scale_corpus(src: str, dst: str, copies: int) -> None:
    """`copies` concatenated copies of `src` with the ids made unique per copy."""
    with open(dst, "wb") as out:
        for k in range(copies):
            with open(src, "rb") as f:
                while block := f.read(64 << 20):
                    out.write(block.replace(b'{"id": "doc-', b'{"id": "c%d-doc-' % k))


# -- measured runs, each in its own process -----------------------------------------------------

_CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
import pyarrow as pa, pyarrow.json as pj, pyarrow.parquet as pq
from storage.fs import Store
from storage.ingest import ingest

def run(kind, path, out):
    if kind == "bare_read_json":
        return pj.read_json(path).num_rows
    if kind == "bare_read_json_3_fields":
        fields = pa.schema([(name, pa.string()) for name in ("id", "text", "source")])
        opts = pj.ParseOptions(explicit_schema=fields, unexpected_field_behavior="ignore")
        return pj.read_json(path, parse_options=opts).num_rows
    if kind == "ingest":
        return ingest(path, filename=path, store=Store(out), dest=("corpus",)).num_docs
    if kind == "naive":
        ids, texts, sources = [], [], []
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    ids.append(str(d["id"])); texts.append(d["text"]); sources.append(d.get("source"))
        pq.write_table(pa.table({"id": ids, "text": texts, "source": sources}), out + "/naive.parquet",
                       compression="zstd")
        return len(ids)
    if kind == "imports":
        return 0

before = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
n = run(args["kind"], args["path"], args["out"])
wall = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": n, "wall_s": wall,
                  "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                  "peak_rss_mb": after.ru_maxrss / 1024}))
"""


def child(kind: str, path: str, work: str, size_mb: float | None = None) -> dict:
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({"kind": kind, "path": path, "out": out})],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    if res.returncode:
        raise RuntimeError(f"{kind} failed:\n{res.stderr[-3000:]}")
    result = json.loads(res.stdout.strip().splitlines()[-1])
    size = size_mb or os.path.getsize(path) / 1e6   # a compressed input counts its JSONL bytes
    result.update(kind=kind, input_mb=round(size, 1), mb_per_s=round(size / result["wall_s"], 1),
                  mb_per_cpu_s=round(size / result["cpu_s"], 1) if result["cpu_s"] else None,
                  output_mb=round(sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) / 1e6, 1))
    shutil.rmtree(out, ignore_errors=True)
    return result


# -- where ingestion time goes -------------------------------------------------------------------

def stages(path: str, work: str) -> dict:
    """CPU seconds (all threads) per stage, run one after the other; the real run overlaps reading
    and writing with parsing on threads of their own. Load on the machine barely changes these."""
    from storage import layout
    from storage.fs import Store
    from storage.ingest import SCHEMA, Fields, check_duplicate_ids
    from storage.ingest.jsonl_reader import JsonlReader
    from storage.ingest.shards import StatsBuilder, to_table
    from storage.ingest.source import Source
    reader = JsonlReader(Source(path), Fields("text", "id", "source"), 8 << 20)
    t = dict.fromkeys(["read_split_count", "parse_pyarrow", "validate", "table_stats", "write_parquet"], 0.0)
    store = Store(os.path.join(work, "stages"))
    writer = store.parquet_writer(SCHEMA, "all.parquet")
    stats = StatsBuilder("source")
    last = time.process_time()
    for first_line, block, newlines in reader._blocks():
        now = time.process_time(); t["read_split_count"] += now - last; last = now
        table = reader._parse_fast(block)
        now = time.process_time(); t["parse_pyarrow"] += now - last; last = now
        rows = reader._accept(table, block, newlines, first_line)
        now = time.process_time(); t["validate"] += now - last; last = now
        table = to_table(rows, stats.num_docs)
        stats.add(table)
        now = time.process_time(); t["table_stats"] += now - last; last = now
        writer.write(table)
        now = time.process_time(); t["write_parquet"] += now - last; last = now
    writer.close()
    everything = store.read_parquet("all.parquet")
    for s in range(0, stats.num_docs, 10_000):   # shards as ingest would write them, for the id check
        store.write_parquet(everything.slice(s, 10_000), *layout.shard_in(("shards",), s // 10_000))
    del everything
    now = time.process_time()
    check_duplicate_ids(store, [p for _, p in layout.shards_in(store, ("shards",))], reader)
    t["duplicate_check"] = time.process_time() - now
    shutil.rmtree(os.path.join(work, "stages"))
    return {k: round(v, 3) for k, v in t.items()}


# -- DuckDB over a selection manifest ------------------------------------------------------------

def manifest_queries(rows: int, work: str) -> dict:
    import duckdb
    path = os.path.join(work, "manifest.parquet")
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(f"""COPY (
        SELECT 'doc-' || i AS doc_id, 'cor_bench' AS corpus_id, (i // 10000)::INTEGER AS shard,
               (i % 10000)::INTEGER AS "row", ['web', 'books', 'code', 'wiki', 'news'][1 + i % 5] AS source,
               (50 + hash(i) % 4000)::INTEGER AS n_tokens, random() AS score,
               0::BIGINT AS rank, false AS selected
        FROM range({rows}) t(i)) TO '{path}' (FORMAT parquet, COMPRESSION zstd)""")
    out = {"rows": rows, "build_s": time.perf_counter() - t, "parquet_mb": round(os.path.getsize(path) / 1e6, 1)}
    queries = {
        "top100_order_by_limit": f"SELECT doc_id, score FROM '{path}' ORDER BY score DESC LIMIT 100",
        "row_number_rank_top100": f"""SELECT doc_id, score, rank FROM (
            SELECT doc_id, score, row_number() OVER (ORDER BY score DESC) AS rank FROM '{path}')
            WHERE rank <= 100 ORDER BY rank""",
        "row_number_rank_all_to_parquet": f"""COPY (SELECT * EXCLUDE (rank),
            row_number() OVER (ORDER BY score DESC) AS rank FROM '{path}')
            TO '{work}/ranked.parquet' (FORMAT parquet)""",
        "duplicate_id_group_by": f"SELECT doc_id FROM '{path}' GROUP BY doc_id HAVING count(*) > 1 LIMIT 100000",
    }
    for name, sql in queries.items():
        best = float("inf")
        for _ in range(2 if name.startswith("top100") else 1):
            t = time.perf_counter()
            con.execute(sql).fetchall()
            best = min(best, time.perf_counter() - t)
        out[name + "_s"] = round(best, 3)
    con.close()
    out["build_s"] = round(out["build_s"], 2)
    for f in ("manifest.parquet", "ranked.parquet"):
        if os.path.exists(os.path.join(work, f)):
            os.remove(os.path.join(work, f))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=256)
    ap.add_argument("--scale", type=int, default=4, help="the larger corpus for the flat-memory check")
    ap.add_argument("--manifest-rows", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-ingest-", dir=args.workdir)
    results: dict = {"config": vars(args), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    try:
        corpus = os.path.join(work, "corpus.jsonl")
        t = time.perf_counter()
        docs = make_corpus(corpus, args.size_mb)
        results["corpus"] = {"docs": docs, "mb": round(os.path.getsize(corpus) / 1e6, 1),
                             "generate_s": round(time.perf_counter() - t, 1)}
        print(f"corpus: {docs} docs, {results['corpus']['mb']} MB", flush=True)
        big = os.path.join(work, f"corpus_x{args.scale}.jsonl")
        scale_corpus(corpus, big, args.scale)
        import zstandard
        zst = corpus + ".zst"
        with open(corpus, "rb") as f, open(zst, "wb") as out:
            zstandard.ZstdCompressor(level=3).copy_stream(f, out)

        runs = [("imports", corpus), ("bare_read_json", corpus), ("bare_read_json_3_fields", corpus),
                ("ingest", corpus), ("ingest", zst), ("ingest", big)]
        if not args.skip_naive:
            runs.append(("naive", corpus))
        results["runs"] = []
        corpus_mb = os.path.getsize(corpus) / 1e6
        for kind, path in runs:
            r = child(kind, path, work, corpus_mb if path == zst else None)
            r["input"] = os.path.basename(path)
            results["runs"].append(r)
            print(f"  {kind:26s} {r['input']:22s} {r['wall_s']:7.2f} s {r['mb_per_s']:7.1f} MB/s "
                  f"{r['cpu_s']:7.2f} cpu-s  peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
        os.remove(big)
        results["stages_s"] = stages(corpus, work)
        print("  stages (cpu-s):", results["stages_s"], flush=True)
        results["manifest"] = manifest_queries(args.manifest_rows, work)
        print("  manifest:", results["manifest"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_avg_end"] = os.getloadavg()
    report(results)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "ingest.json"), "w") as f:
        json.dump(results, f, indent=2)


def report(results: dict) -> None:
    runs = {(r["kind"], r["input"]): r for r in results["runs"]}
    # the limit: pyarrow's bare reader of only the fields ingestion keeps, per CPU-second
    limit = next(r for r in results["runs"] if r["kind"] == "bare_read_json_3_fields")
    print(f"\n{'run':28s} {'input':22s} {'MB/s':>7s} {'MB/cpu-s':>9s} {'vs limit':>9s} {'peak RSS MB':>12s} {'out MB':>7s}")
    for (kind, name), r in runs.items():
        if kind == "imports":
            continue
        print(f"{kind:28s} {name:22s} {r['mb_per_s']:7.1f} {r['mb_per_cpu_s'] or 0:9.1f} "
              f"{(r['mb_per_cpu_s'] or 0) / limit['mb_per_cpu_s']:9.2f} {r['peak_rss_mb']:12.0f} {r['output_mb']:7.1f}")
    base = runs[("imports", "corpus.jsonl")]["peak_rss_mb"]
    print("(vs limit: MB per CPU-second against pyarrow's bare reader of id, text, source)")
    print(f"(peak RSS of a process that only imports the modules: {base:.0f} MB; "
          f"load average {results['load_avg_start'][0]:.1f} -> {results['load_avg_end'][0]:.1f} "
          f"on {results['cpus']} CPUs)")
    print("where ingestion time goes, cpu-s per stage:", results["stages_s"])
    m = results["manifest"]
    print(f"DuckDB over a {m['rows']:,}-row manifest ({m['parquet_mb']} MB Parquet): "
          + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in m.items() if k.endswith("_s") and k != "build_s"))


if __name__ == "__main__":
    main()
