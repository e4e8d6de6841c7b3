"""Scale-out bench: many-file ingestion on 1 and 2 Ray CPUs against pyarrow's bare reader, and a
synthetic corpus of millions of short documents end to end on one machine.

    .venv/bin/python -m bench.scale [--files 64] [--ingest-mb 256] [--docs 1000000,5000000]
                                    [--skip-ingest] [--skip-e2e] [--workdir DIR]

(a) `--files` JSONL files (`--compression zst` or `none`) of generated documents, `--ingest-mb`
    of JSONL in all, registered through the service (`POST /v1/corpora {"uri": dir}`), once on a
    Ray of one CPU and once on a Ray of two (`ray.init(num_cpus=…)`, which the service joins), for
    each shard codec of `--shard-compression` (THRESHER_SHARD_COMPRESSION; the shards' size too).
    Beside it, in the same run, the machine's limit: pyarrow's bare JSON reader of the three
    needed fields (id, text, source) over the same files, single-threaded in one process, and in
    two processes side by side over half the files each (best of three runs). Reported per core: MB of JSONL per
    second of wall time per Ray CPU, and MB per CPU-second (all threads of the Ray workers and of
    the service process during the job), each against the bare reader, and the speedup 1 -> 2.
(b) For each `--docs` N: N short documents in `--e2e-files` JSONL.zst files, registered, `dsir`
    toward a small target with a 10% selection, then a per-source count of the selection through
    `/v1/query`, each N in a process of its own (the service, on a fresh Ray). Wall time per stage (and per stage inside each job, from its progress) and the
    peak RSS of the service process and of the Ray worker processes, sampled with psutil.

Every figure comes with the load average at the time: the wall-time figures only mean something
on an idle machine, MB per CPU-second holds up better on a busy one. Prints tables, writes
bench/results/scale.json (a part skipped keeps its figures from the file's previous run), deletes
what it generated.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from bench.common import print_table, service, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["web", "books", "code", "wiki"]
VOCAB = 20_000


# -- corpora -------------------------------------------------------------------------------------

def write_corpus(folder: str, n_docs: int, n_files: int, words: tuple[int, int], compression: str,
                 prefix: str = "d", only_source: str | None = None, seed: int = 0) -> dict:
    """`n_docs` documents in `n_files` JSONL files written by DuckDB (fast, deterministic: every
    word is a hash of the document and its position). Each source draws its words from its own
    Zipf-like window of a shared vocabulary, so DSIR has something to find. Returns the JSONL
    bytes (before compression) and the files' sizes on disk."""
    import duckdb
    import zstandard
    os.makedirs(folder, exist_ok=True)
    con = duckdb.connect()
    # Pseudo-words of 2-9 letters: one vocabulary for every corpus (the seed varies the documents).
    con.execute(f"""CREATE TABLE vocab AS SELECT list(w ORDER BY k) AS words FROM (
        SELECT k, string_agg(chr(97 + (hash(k, c) % 26)::INTEGER), '') AS w
        FROM range({VOCAB}) a(k), range(9) b(c) WHERE c < 2 + k % 8 GROUP BY k)""")
    source_expr = f"'{only_source}'" if only_source else \
        "['" + "', '".join(SOURCES) + f"'][1 + (i % {len(SOURCES)})::INTEGER]"
    offset_expr = f"{SOURCES.index(only_source)}" if only_source else f"(i % {len(SOURCES)})"
    lo, hi = words
    jsonl_bytes = stored_bytes = 0
    per_file = -(-n_docs // n_files)
    for f in range(n_files):
        start, end = f * per_file, min(n_docs, (f + 1) * per_file)
        if start >= end:
            break
        plain = os.path.join(folder, f"part-{f:05d}.jsonl")
        # word j of document i: a Zipf-like rank (u^3 of a uniform u), shifted by the source's window
        con.execute(f"""COPY (
            SELECT '{prefix}' || i AS id,
                   array_to_string(list_transform(range({lo} + (hash(i, {seed}) % {hi - lo + 1})::INTEGER),
                       lambda j: words[1 + ((floor(pow(hash(i, j, {seed}) / 18446744073709551615.0, 3) * {VOCAB // 2})
                                        + {offset_expr} * {VOCAB // 8}) % {VOCAB})::INTEGER]), ' ') AS text,
                   {source_expr} AS source
            FROM range({start}, {end}) t(i), vocab ORDER BY i) TO '{plain}' (FORMAT json)""")
        jsonl_bytes += os.path.getsize(plain)
        if compression == "zst":
            with open(plain, "rb") as src, open(plain + ".zst", "wb") as dst:
                zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
            os.remove(plain)
            plain += ".zst"
        stored_bytes += os.path.getsize(plain)
    con.close()
    return {"docs": n_docs, "files": len(os.listdir(folder)), "jsonl_mb": round(jsonl_bytes / 1e6, 1),
            "stored_mb": round(stored_bytes / 1e6, 1)}


def generate(*args, **kwargs) -> dict:
    """write_corpus in a child process, so that DuckDB's memory never counts as the service's."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(write_corpus, args, kwargs)


def docs_for_mb(target_mb: float, words: tuple[int, int]) -> int:
    """About how many documents make `target_mb` of JSONL (average word ~6.5 bytes with its space)."""
    per_doc = 45 + 6.5 * (words[0] + words[1]) / 2
    return max(1, int(target_mb * 1e6 / per_doc))


# -- the bare reader, in its own processes -------------------------------------------------------

_BARE = r"""
import json, os, resource, sys, time
os.nice(int(sys.argv[2]))   # the niceness of a Ray worker: both compete alike with the machine's other work
import pyarrow as pa, pyarrow.json as pj
files = json.loads(sys.argv[1])
schema = pa.schema([(name, pa.string()) for name in ("id", "text", "source")])
parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
read = pj.ReadOptions(use_threads=False, block_size=8 << 20)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t, rows = time.perf_counter(), 0
for path in files:
    stream = pa.input_stream(path, compression="detect")
    rows += pj.read_json(stream, read_options=read, parse_options=parse).num_rows
wall = time.perf_counter() - t
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": rows, "wall_s": wall,
                  "cpu_s": r.ru_utime + r.ru_stime - r0.ru_utime - r0.ru_stime}))
"""


def ray_worker_niceness() -> int:
    """Ray starts its workers at this niceness (15 by default), below a plain process's 0."""
    import ray
    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)
    return ray.get(niceness.remote())


def bare_reader(files: list[str], processes: int, nice: int = 0) -> dict:
    """pyarrow's JSON reader of id, text, source, one thread per process, `processes` side by side
    over an equal share of the files each. Wall and CPU time of the reading alone (not the
    interpreter's start): from the first file opened to the last one read, in the slowest process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shares = [files[i::processes] for i in range(processes)]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _BARE, json.dumps(s), str(nice)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for s in shares]
    outs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"bare reader failed:\n{err[-3000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return {"processes": processes, "rows": sum(o["rows"] for o in outs), "wall_s": max(o["wall_s"] for o in outs),
            "process_wall_s": time.perf_counter() - t, "cpu_s": sum(o["cpu_s"] for o in outs), "load_avg": load}


# -- sampling the service and the Ray workers ----------------------------------------------------

def is_ray_worker(p: psutil.Process) -> bool:
    try:
        name, cmd = p.name(), " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return name.startswith("ray::") or cmd.startswith("ray::") or "default_worker.py" in cmd


class Sampler:
    """Peak RSS of this process (the service) and of the Ray worker processes under it, and the
    CPU seconds they spend, sampled every `every` seconds on a thread until stopped (that thread's
    own CPU is left out of the service's)."""

    def __init__(self, every: float = 0.2):
        self.every, self.me = every, psutil.Process()
        self._stop = threading.Event()
        self.peak_service = self.peak_worker = self.peak_workers_sum = 0
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.cpu_service0 = self._cpu(self.me)
        self.workers_seen: set[int] = set()
        self.cpu_sampler = 0.0
        self.label: str | None = None        # the job's current stage, set by follow_job
        self.by_label: dict[str, list[int]] = {}   # stage -> [service peak, largest worker peak]

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def sample(self) -> None:
        label = self.label
        service_rss, worker_rss = self.me.memory_info().rss, 0
        self.peak_service = max(self.peak_service, service_rss)
        total = 0
        for p in self.me.children(recursive=True):
            if not is_ray_worker(p):
                continue
            try:
                rss, cpu = p.memory_info().rss, self._cpu(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.workers_seen.add(p.pid)
            self.cpu_first.setdefault(p.pid, cpu)
            self.cpu_last[p.pid] = cpu
            worker_rss = max(worker_rss, rss)
            total += rss
        self.peak_worker = max(self.peak_worker, worker_rss)
        self.peak_workers_sum = max(self.peak_workers_sum, total)
        if label is not None:
            peaks = self.by_label.setdefault(label, [0, 0])
            peaks[0], peaks[1] = max(peaks[0], service_rss), max(peaks[1], worker_rss)

    def __enter__(self):
        self.sample()
        self.start_service, self.start_worker = self.peak_service, self.peak_worker
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every):
            self.sample()
        self.cpu_sampler = time.thread_time()    # this thread's own CPU: the bench's, not the service's

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def result(self) -> dict:
        return {"start_rss_service_mb": round(self.start_service / 2**20),
                "start_rss_worker_mb": round(self.start_worker / 2**20),
                "peak_rss_service_mb": round(self.peak_service / 2**20),
                "peak_rss_worker_mb": round(self.peak_worker / 2**20),
                "peak_rss_workers_sum_mb": round(self.peak_workers_sum / 2**20),
                "cpu_s_workers": round(sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last), 2),
                "cpu_s_service": round(self._cpu(self.me) - self.cpu_service0 - self.cpu_sampler, 2),
                "cpu_s_sampler": round(self.cpu_sampler, 2),
                "workers": len(self.workers_seen),
                "peak_rss_mb_by_job_stage": {k: {"service": round(a / 2**20), "worker": round(b / 2**20)}
                                             for k, (a, b) in self.by_label.items()}}


# -- driving the service -------------------------------------------------------------------------

def follow_job(client, job_id: str, timeout: float = 4 * 3600, sampler: Sampler | None = None) -> dict:
    """Poll a job to its end; its wall time and the wall time of each stage it reported (told to
    `sampler` as they change, so that memory peaks are known per stage too)."""
    t0 = last = time.monotonic()
    stages: dict[str, float] = {}
    stage = None
    while time.monotonic() - t0 < timeout:
        job = client.get(f"/v1/jobs/{job_id}").json()
        now = time.monotonic()
        current = (job.get("progress") or {}).get("stage")
        if current != stage:
            if stage is not None:
                stages[stage] = stages.get(stage, 0.0) + now - last
            stage, last = current, now
            if sampler is not None:
                sampler.label = current
        if job["state"] in ("succeeded", "failed", "cancelled"):
            if stage is not None:
                stages[stage] = stages.get(stage, 0.0) + now - last
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['state']}: {job['error']}")
            job["wall_s"] = now - t0
            job["stages_s"] = {k: round(v, 2) for k, v in stages.items()}
            return job
        time.sleep(0.25)
    raise TimeoutError(job_id)


def register(client, name: str, uri: str, sampler: Sampler | None = None) -> tuple[dict, dict]:
    """Register `uri` and wait for the corpus: (corpus, its ingest job)."""
    r = client.post("/v1/corpora", json={"name": name, "uri": uri})
    if r.status_code != 202:
        raise RuntimeError(f"registering {uri}: {r.status_code} {r.text}")
    job = follow_job(client, r.json()["job_id"], sampler=sampler)
    return client.get(f"/v1/corpora/{r.json()['id']}").json(), job


def start_ray(num_cpus: int | None) -> None:
    """A local Ray of `num_cpus` CPUs, started before the app so that the service joins it."""
    import ray
    from workers.runtime import NAMESPACE
    ray.init(num_cpus=num_cpus, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)


# -- (a) many-file ingestion ---------------------------------------------------------------------

def label(codec: str, cpus: int) -> str:
    return f"thresher {codec}, Ray {cpus} CPU"


def bench_ingest(args, work: str) -> dict:
    words = (args.ingest_words // 2, args.ingest_words * 3 // 2)
    data = os.path.join(work, "ingest-data")
    n_docs = docs_for_mb(args.ingest_mb, words)
    t = time.perf_counter()
    corpus = generate(data, n_docs, args.files, words, args.compression)
    corpus["generate_s"] = round(time.perf_counter() - t, 1)
    warm = os.path.join(work, "ingest-warm")
    generate(warm, 2000, 2, (5, 10), args.compression, prefix="w")
    print(f"(a) corpus: {corpus}", flush=True)
    files = sorted(os.path.join(data, f) for f in os.listdir(data))
    mb = corpus["jsonl_mb"]
    out: dict = {"corpus": corpus, "runs": []}

    def record(run: dict) -> None:
        out["runs"].append(run)
        print(f"  {run['what']:24s} {run['wall_s']:8.2f} s  {run['mb_per_s_per_core']:7.1f} MB/s/core  "
              f"{run['mb_per_cpu_s']:7.1f} MB/cpu-s  load {run['load_avg']:.1f}", flush=True)

    start_ray(1)
    out["ray_worker_niceness"] = nice = ray_worker_niceness()
    import ray
    ray.shutdown()
    for processes in (1, 2):
        # The limit: the best of three (a short run on a shared machine is easily disturbed), at
        # the niceness of Ray's workers so that the machine's other work slows both alike.
        b = min((bare_reader(files, processes, nice) for _ in range(3)), key=lambda r: r["wall_s"])
        if b["rows"] != n_docs:
            raise RuntimeError(f"bare reader read {b['rows']} rows of {n_docs}")
        record({"what": f"bare reader x{processes}", "cores": processes, **b,
                "mb_per_s_per_core": mb / b["wall_s"] / processes, "mb_per_cpu_s": mb / b["cpu_s"]})

    codecs = [c.strip() for c in args.shard_compression.split(",") if c.strip()]
    for codec, cpus in [(c, n) for c in codecs for n in (1, 2)]:
        home = os.path.join(work, f"ingest-home-{codec}-{cpus}")
        start_ray(cpus)
        with service(home, allowed_roots=[work], max_inflight=args.max_inflight,
                     shard_compression=codec) as client:
            register(client, "warm-up", warm)        # the Ray workers start and import once
            load = os.getloadavg()[0]
            with Sampler() as s:
                t = time.perf_counter()
                cor, job = register(client, "pool", data, s)
                wall = time.perf_counter() - t
        if cor["state"] != "ready" or cor["num_docs"] != n_docs:
            raise RuntimeError(f"ingestion on {cpus} CPU(s) gave {cor}")
        res = s.result()
        cpu = res["cpu_s_workers"] + res["cpu_s_service"]
        stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(home) if "corpora" in d
                     for f in fs)
        record({"what": label(codec, cpus), "cores": cpus, "wall_s": wall, "load_avg": load,
                "shard_compression": codec, "shards_mb": round(stored / 1e6, 1),
                "load_avg_end": os.getloadavg()[0], "job_stages_s": job["stages_s"],
                "units": job["result"]["summary"]["units"], "num_shards": cor["num_shards"], **res,
                "mb_per_s_per_core": mb / wall / cpus, "mb_per_cpu_s": mb / cpu if cpu else float("nan")})
        shutil.rmtree(home, ignore_errors=True)

    runs = {r["what"]: r for r in out["runs"]}
    bare = runs["bare reader x1"]
    for codec, cpus in [(c, n) for c in codecs for n in (1, 2)]:
        r = runs[label(codec, cpus)]
        r["vs_bare_per_core"] = r["mb_per_s_per_core"] / bare["mb_per_s_per_core"]
        r["vs_bare_per_cpu_s"] = r["mb_per_cpu_s"] / bare["mb_per_cpu_s"]
    out["speedup_1_to_2"] = {c: runs[label(c, 1)]["wall_s"] / runs[label(c, 2)]["wall_s"] for c in codecs}
    out["bare_speedup_1_to_2"] = bare["wall_s"] / runs["bare reader x2"]["wall_s"]
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(warm, ignore_errors=True)
    return out


# -- (b) end to end ------------------------------------------------------------------------------

def bench_e2e(args, work: str, n_docs: int) -> dict:
    words = (args.e2e_words // 2, args.e2e_words * 3 // 2)
    data, target = os.path.join(work, f"e2e-{n_docs}"), os.path.join(work, f"e2e-target-{n_docs}")
    t = time.perf_counter()
    corpus = generate(data, n_docs, args.e2e_files, words, "zst")
    generate(target, 20_000, 1, words, "zst", prefix="t", only_source="wiki", seed=1)
    corpus["generate_s"] = round(time.perf_counter() - t, 1)
    print(f"(b) {n_docs:,} docs: {corpus}", flush=True)
    files = sorted(os.path.join(data, f) for f in os.listdir(data))
    bare = bare_reader(files, 1, nice=15)
    out: dict = {"docs": n_docs, "corpus": corpus, "stages": {},
                 "bare_reader_1_process": {**bare, "mb_per_s": corpus["jsonl_mb"] / bare["wall_s"]}}
    home = os.path.join(work, f"e2e-home-{n_docs}")
    start_ray(args.e2e_cpus)
    with service(home, allowed_roots=[work], max_inflight=args.max_inflight,
                 query_timeout_s=3600, query_memory="2GB") as client:
        tgt, _ = register(client, "target", target)

        def stage(name: str, fn):
            load = os.getloadavg()[0]
            with Sampler() as s:
                t = time.perf_counter()
                value, extra = fn(s)
                wall = time.perf_counter() - t
            out["stages"][name] = {"wall_s": round(wall, 2), "load_avg": load, **extra, **s.result()}
            st = out["stages"][name]
            print(f"  {name:9s} {wall:8.1f} s  service peak {st['peak_rss_service_mb']} MB  worker peak "
                  f"{st['peak_rss_worker_mb']} MB (sum {st['peak_rss_workers_sum_mb']} MB)  load {load:.1f}",
                  flush=True)
            return value

        def do_register(sampler):
            cor, job = register(client, "pool", data, sampler)
            if cor["state"] != "ready" or cor["num_docs"] != n_docs:
                raise RuntimeError(f"registration gave {cor}")
            return cor, {"job_stages_s": job["stages_s"], "num_shards": cor["num_shards"],
                         "mb_per_s": corpus["jsonl_mb"] / job["wall_s"]}

        def do_dsir(sampler):
            r = client.post("/v1/jobs", json={"kind": "dsir", "spec": {
                "pool": pool["id"], "target": tgt["id"], "select": {"fraction": 0.1}}})
            r.raise_for_status()
            job = follow_job(client, r.json()["id"], sampler=sampler)
            return job, {"job_stages_s": job["stages_s"], "num_selected": job["result"]["summary"]["num_selected"]}

        def do_query(sampler):
            r = client.post("/v1/query", json={
                "sql": "SELECT source, count(*) AS n FROM m WHERE selected GROUP BY source ORDER BY source",
                "tables": {"m": dsir["result"]["manifest_id"]}})
            if r.status_code != 200:
                raise RuntimeError(f"query: {r.status_code} {r.text}")
            rows = r.json()["rows"]
            return rows, {"rows": rows}

        pool = stage("register", do_register)
        dsir = stage("dsir", do_dsir)
        rows = stage("query", do_query)
        if sum(n for _, n in rows) != out["stages"]["dsir"]["num_selected"]:
            raise RuntimeError(f"per-source counts {rows} do not add up to the selection")
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    return out


def isolated(fn, *args):
    """fn(*args) in a fresh process: that process is the service, so its RSS is this run's alone."""
    from concurrent.futures import ProcessPoolExecutor
    from importlib import import_module
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(getattr(import_module("bench.scale"), fn.__name__), *args).result()


# -- report --------------------------------------------------------------------------------------

def report(results: dict) -> None:
    a = results.get("ingest")
    if a:
        rows = [[r["what"], r["cores"], round(r["wall_s"], 2), round(r["mb_per_s_per_core"], 1),
                 round(r.get("vs_bare_per_core", 1.0), 2), round(r["mb_per_cpu_s"], 1),
                 round(r.get("vs_bare_per_cpu_s", 1.0), 2), round(r["load_avg"], 1)] for r in a["runs"]]
        print_table(f"(a) ingestion of {a['corpus']['files']} files, {a['corpus']['jsonl_mb']} MB of JSONL "
                    f"({a['corpus']['stored_mb']} MB stored), {a['corpus']['docs']:,} docs",
                    ["run", "cores", "wall s", "MB/s/core", "vs bare", "MB/cpu-s", "vs bare", "load"], rows)
        for r in a["runs"]:
            if "shards_mb" in r:
                print(f"{r['what']}: shards {r['shards_mb']} MB")
        speedups = ", ".join(f"{c} {v:.2f}x" for c, v in a["speedup_1_to_2"].items())
        print(f"speedup 1 -> 2 Ray CPUs: {speedups} (goal >= 1.8); the bare reader in 1 -> 2 "
              f"processes, the machine's own: {a['bare_speedup_1_to_2']:.2f}x")
    for b in results.get("e2e", []):
        rows = [[name, s["wall_s"], f"{s['start_rss_service_mb']} -> {s['peak_rss_service_mb']}",
                 f"{s['start_rss_worker_mb']} -> {s['peak_rss_worker_mb']}",
                 s["peak_rss_workers_sum_mb"], round(s["load_avg"], 1),
                 ", ".join(f"{k} {v:.1f} s ({s['peak_rss_mb_by_job_stage'].get(k, {}).get('service', '-')}/"
                           f"{s['peak_rss_mb_by_job_stage'].get(k, {}).get('worker', '-')} MB)"
                           for k, v in s.get("job_stages_s", {}).items())]
                for name, s in b["stages"].items()]
        print_table(f"(b) {b['docs']:,} docs end to end ({b['corpus']['files']} files, {b['corpus']['jsonl_mb']} MB "
                    f"JSONL; bare reader {b['bare_reader_1_process']['mb_per_s']:.1f} MB/s on one core)",
                    ["stage", "wall s", "service RSS MB start -> peak", "largest worker RSS MB start -> peak",
                     "workers' sum MB", "load", "inside the job: stage s (service/worker peak MB)"],
                    rows)
    if a:
        print(f"Ray workers run at niceness {a['ray_worker_niceness']}; the bare reader ran at the same.")
    print(f"\n{results['cpus']} CPUs; load average {results['load_avg_start'][0]:.1f} at the start, "
          f"{results['load_avg_end'][0]:.1f} at the end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=64, help="(a) number of files")
    ap.add_argument("--ingest-mb", type=float, default=256, help="(a) MB of JSONL in all")
    ap.add_argument("--ingest-words", type=int, default=150, help="(a) mean words per document")
    ap.add_argument("--compression", choices=["zst", "none"], default="zst", help="(a) the files' compression")
    ap.add_argument("--shard-compression", default="zstd,lz4",
                    help="(a) THRESHER_SHARD_COMPRESSION of each Thresher run, comma-separated")
    ap.add_argument("--docs", default="1000000,5000000", help="(b) corpus sizes, comma-separated")
    ap.add_argument("--e2e-files", type=int, default=64, help="(b) number of files")
    ap.add_argument("--e2e-words", type=int, default=30, help="(b) mean words per document")
    ap.add_argument("--e2e-cpus", type=int, default=None, help="(b) Ray CPUs (default: all)")
    ap.add_argument("--max-inflight", type=int, default=0, help="THRESHER_MAX_INFLIGHT (0: 2x Ray CPUs)")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir)
    results: dict = {"config": vars(args), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        if not args.skip_ingest:
            results["ingest"] = bench_ingest(args, work)
        if not args.skip_e2e:
            results["e2e"] = [isolated(bench_e2e, args, work, int(n)) for n in args.docs.split(",") if n.strip()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_avg_end"] = os.getloadavg()
    report(results)
    keep_skipped_parts(results, args)
    write_json("scale", results)


def keep_skipped_parts(results: dict, args) -> None:
    """A part skipped this time keeps its figures from the last results file, marked with that
    run's start, so that re-running (a) alone does not lose (b) (and the reverse)."""
    path = os.path.join(ROOT, "bench", "results", "scale.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    for part, skipped in (("ingest", args.skip_ingest), ("e2e", args.skip_e2e)):
        if skipped and part in previous:
            results[part] = previous[part]
            results[f"{part}_from_run"] = previous.get(f"{part}_from_run", previous.get("started"))


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
