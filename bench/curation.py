"""Benchmark of fuzzy deduplication (issue 29, item 7): Thresher's `dedup` through the service side
by side with DataTrove's MinHash pipeline on the same JSONL files, in the same run: pair precision
and recall on planted near-duplicates, agreement on the project's Debian corpus, CPU-seconds per MB
and peak memory, and the same end to end (ingest + dedup) at millions of documents. Not run in CI.

    python -m bench.curation --docs 20000                        # both (DataTrove from bench/.venv-datatrove)
    python -m bench.curation --docs 100000 1000000 3000000 --words 60-120   # DataTrove at <= --datatrove-max-docs
    python -m bench.curation --corpus debian                     # data/debian/pool.jsonl (bench/common.py)

DataTrove runs under a virtualenv of the bench's own, never the project's:

    python3.11 -m venv bench/.venv-datatrove
    bench/.venv-datatrove/bin/pip install datatrove fasttext-numpy2-wheel regex spacy tokenizers orjson "xxhash<4" psutil

The planted corpus: `--docs` documents of `--words` words (150–400 by default) drawn from a Zipf
vocabulary of 50,000 made-up words of letters (random text shares almost no word 5-gram by chance),
and a near copy of a `--dup-fraction` of them with a known fraction of their words replaced (uniform
in 0–6%), so that the true Jaccard similarity of every planted pair, on normalised word 5-grams
(64-bit hashed), is computed exactly. Positives are the planted pairs at Jaccard ≥ 0.8
(`--positive`). A method's predicted pairs are all pairs within one of its clusters; recall is the
share of positives among them, precision the share of them that are planted pairs (any similarity: a
planted copy found at Jaccard 0.75 is a true near-duplicate), and `precision_at_positive` the share at
Jaccard ≥ `--positive`.

The Debian corpus has no planted truth: its pool is split into `--files` parts in order, both methods
run on them, and agreement is pairwise. Of the pairs (two documents in one cluster) that either finds,
the share both find; every pair only one finds is judged by its true 5-gram Jaccard similarity: at ≥
`--positive` the other method missed a near-duplicate; far below the LSH's implied threshold (0.72),
the finder joined two documents through a chain of others (transitivity) or a chance band collision.

Each size runs in a process of its own (the service, on a fresh local Ray of `--workers` CPUs);
the corpus is generated in another, so neither holds the other's memory. CPU-seconds: the
user+system time of every process doing the work (Thresher: the service process and Ray's processes,
sampled; DataTrove: its process tree, from rusage), over the input's megabytes. Peak memory: the
largest sum of resident memory over those processes, sampled every 0.1 s (for Thresher including
Ray's own processes and the service; `idle_MB` is that sum before the stage; shared pages such as
Ray's object store count once per process that maps them). Both use `--workers` processes.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import psutil

from bench.common import debian_corpus, print_table, run_job, service, write_json
from scoring.ngrams import ngram_hashes, text_hashes, word_hashes

HERE = Path(__file__).resolve().parent
DATATROVE_PYTHON = HERE / ".venv-datatrove" / "bin" / "python"
CHUNK = 50_000          # documents generated at a time: the generator's memory does not grow with --docs


# -- the corpora -----------------------------------------------------------------------------------

def letters(i: int) -> str:
    """A made-up word for number i, in letters only (normalisation turns every digit into 0)."""
    out = ""
    while True:
        i, k = divmod(i, 26)
        out += chr(97 + k)
        if not i:
            return out + "aeiou"[len(out) % 5]


def make_corpus(out: Path, docs: int, words: tuple[int, int], dup_fraction: float, files: int,
                seed: int) -> dict:
    """JSONL files under `out`, written as they are generated; returns {pairs: {(a, b): jaccard},
    megabytes, documents}. Each document (original or copy) goes to a random file."""
    rng = np.random.default_rng(seed)
    vocab = [letters(i) for i in range(50_000)]
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    p /= p.sum()
    r = random.Random(seed)
    copied = set(r.sample(range(docs), int(docs * dup_fraction)))
    out.mkdir(parents=True, exist_ok=True)
    handles = [open(out / f"part-{k:03d}.jsonl", "w", buffering=1 << 20) for k in range(files)]
    pairs, size, n = {}, 0, 0
    for start in range(0, docs, CHUNK):
        lengths = rng.integers(words[0], words[1] + 1, size=min(CHUNK, docs - start))
        drawn = rng.choice(len(vocab), size=int(lengths.sum()), p=p).tolist()
        ends = np.cumsum(lengths).tolist()
        originals, copies = [], []
        for i, (s, e) in enumerate(zip([0, *ends[:-1]], ends), start):
            text = " ".join(map(vocab.__getitem__, drawn[s:e]))
            chunk = [(f"d{i}", text)]
            if i in copied:
                rate = r.uniform(0.0, 0.06)
                copy = " ".join(letters(r.randrange(10**9)) + "q" if r.random() < rate else w
                                for w in text.split())
                chunk.append((f"c{i}", copy))
                originals.append(text)
                copies.append(copy)
            for doc_id, t in chunk:
                line = json.dumps({"id": doc_id, "text": t}) + "\n"
                size += len(line)          # ASCII: characters are bytes
                handles[r.randrange(files)].write(line)
                n += 1
        ids = [i for i in range(start, start + len(lengths)) if i in copied]
        for i, j in zip(ids, jaccards(originals, copies)):
            pairs[(f"c{i}", f"d{i}")] = j      # in order, as cluster_pairs names pairs
    for h in handles:
        h.close()
    return {"pairs": pairs, "megabytes": size / 1e6, "documents": n}


def debian_files(out: Path, files: int) -> dict:
    """The Debian pool split into `files` JSONL parts in order (DataTrove runs one task per file)."""
    with open(Path(debian_corpus()) / "pool.jsonl", "rb") as f:
        lines = f.readlines()
    out.mkdir(parents=True, exist_ok=True)
    per = -(-len(lines) // files)
    for k in range(files):
        with open(out / f"part-{k:03d}.jsonl", "wb") as f:
            f.writelines(lines[k * per:(k + 1) * per])
    texts = {d["id"]: d["text"] for d in map(json.loads, lines)}
    return {"texts": texts, "megabytes": sum(map(len, lines)) / 1e6, "documents": len(lines)}


def shingle_sets(texts: list[str], n: int = 5) -> list[np.ndarray]:
    """Per text, its distinct word n-gram hashes, as dedup shingles it (normalised words, 64-bit;
    a text shorter than n words is one shingle)."""
    h, offsets = word_hashes(texts)
    grams, doc = ngram_hashes(h, offsets, n, short=True)
    bounds = np.searchsorted(doc, np.arange(len(texts) + 1))
    return [np.unique(grams[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def jaccards(a: list[str], b: list[str]) -> list[float]:
    """The true Jaccard similarity of each pair (a[i], b[i]) on word 5-grams."""
    sa, sb = shingle_sets(a), shingle_sets(b)
    return [len(np.intersect1d(x, y, assume_unique=True)) / max(1, len(np.union1d(x, y))) for x, y in zip(sa, sb)]


def cluster_pairs(clusters: dict[str, int]) -> set:
    """Every pair (a, b), a < b, of documents in one cluster."""
    members: dict[int, list[str]] = {}
    for doc, c in clusters.items():
        members.setdefault(c, []).append(doc)
    return {(a, b) if a < b else (b, a) for group in members.values()
            for i, a in enumerate(group) for b in group[i + 1:]}


def scores(predicted: set, planted: dict, positive: float) -> dict:
    """Pair precision and recall of predicted pairs (cluster_pairs)."""
    positives = {p for p, j in planted.items() if j >= positive}
    found = predicted & set(planted)
    return {"predicted_pairs": len(predicted), "positives": len(positives),
            "recall": len(predicted & positives) / max(1, len(positives)),
            "precision": len(found) / max(1, len(predicted)),
            "precision_at_positive": len(predicted & positives) / max(1, len(predicted)),
            "recall_by_jaccard": recall_by_bucket(predicted, planted)}


def recall_by_bucket(predicted: set, planted: dict) -> dict:
    edges = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.01]
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        pairs = [p for p, j in planted.items() if lo <= j < hi]
        if pairs:
            out[f"{lo:.2f}-{min(hi, 1):.2f}"] = round(sum(p in predicted for p in pairs) / len(pairs), 4)
    return out


def cluster_counts(clusters: dict[str, int], texts: dict[str, str]) -> dict:
    """Clusters of more than one document, how many of them hold one normalised text only (exact),
    and the documents a cluster-keeps-one rule removes."""
    members: dict[int, list[str]] = {}
    for doc, c in clusters.items():
        members.setdefault(c, []).append(doc)
    groups = [g for g in members.values() if len(g) > 1]
    exact = 0
    for g in groups:
        exact += len(set(text_hashes(*word_hashes([texts[d] for d in g])).tolist())) == 1
    return {"clusters": len(groups), "exact_clusters": exact, "near_clusters": len(groups) - exact,
            "documents_in_clusters": sum(map(len, groups)), "removed": sum(len(g) - 1 for g in groups),
            "largest_cluster": max(map(len, groups), default=0)}


def agreement(methods: dict, texts: dict[str, str], positive: float, examples: int = 2) -> dict:
    """Pairwise agreement of two methods' clusters: every pair either finds, by its true Jaccard
    similarity, as found by both or by one only, with examples of the latter."""
    (na, a), (nb, b) = [(name, cluster_pairs(m["clusters"])) for name, m in methods.items()]
    either = sorted(a | b)
    js = jaccards([texts[x] for x, _ in either], [texts[y] for _, y in either]) if either else []
    edges = [0.0, 0.5, 0.72, positive, 1.01]
    out = {"pairs": {na: len(a), nb: len(b), "both": len(a & b), "either": len(either),
                     "agreement": len(a & b) / max(1, len(either))}, "by_jaccard": {}}
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = [p for p, j in zip(either, js) if lo <= j < hi]
        out["by_jaccard"][f"{lo:.2f}-{min(hi, 1):.2f}"] = {
            "both": sum(p in a and p in b for p in inside), f"only_{na}": sum(p not in b for p in inside),
            f"only_{nb}": sum(p not in a for p in inside)}
    for name, mine, other in ((na, a, b), (nb, b, a)):
        ranked = sorted(((j, p) for p, j in zip(either, js) if p in mine and p not in other), reverse=True)
        picks = ranked[:examples] + ranked[-examples:] if len(ranked) > 2 * examples else ranked
        out[f"only_{name}_examples"] = [
            {"a": x, "b": y, "jaccard": round(j, 3), "a_text": texts[x][:160], "b_text": texts[y][:160]}
            for j, (x, y) in picks]
    return out


# -- measuring -------------------------------------------------------------------------------------

class Sampler:
    """CPU time and resident memory of a process tree, sampled every 0.1 s in a thread (a process
    that ends between two samples loses at most its last 0.1 s)."""

    def __init__(self, roots: list[psutil.Process]):
        self.roots, self.peak_rss, self.cpu = roots, 0, {}
        self.stage, self.stages = None, {}     # per stage of the job (see mark): peak MB and seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def processes(self) -> list[psutil.Process]:
        found = {}
        for root in self.roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in tree:
                found[p.pid] = p
        return list(found.values())

    def sample(self) -> None:
        rss = 0
        for p in self.processes():
            try:
                t = p.cpu_times()
                self.cpu[(p.pid, p.create_time())] = t.user + t.system
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, rss)
        if self.stage:
            st = self.stages.setdefault(self.stage, {"peak_rss_mb": 0.0, "from_s": time.perf_counter() - self.t0})
            st["peak_rss_mb"] = max(st["peak_rss_mb"], rss / 2**20)
            st["to_s"] = time.perf_counter() - self.t0

    def mark(self, job: dict) -> None:
        """Attribute the samples from now on to the job's current stage."""
        self.stage = (job.get("progress") or {}).get("stage") or self.stage

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.sample()
        self.start_cpu, self.baseline_rss = dict(self.cpu), self.peak_rss
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        self.sample()

    def cpu_seconds(self) -> float:
        return sum(v - self.start_cpu.get(k, 0.0) for k, v in self.cpu.items())

    def figures(self, wall: float) -> dict:
        return {"wall_s": wall, "cpu_s": self.cpu_seconds(), "peak_rss_mb": self.peak_rss / 2**20,
                "idle_rss_mb": self.baseline_rss / 2**20}


def run_thresher(data: Path, home: Path, workers: int, threshold: float | None) -> dict:
    """Ingest + dedup through the service, each stage measured; in a process of its own."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray
    # The service joins this Ray (init is idempotent): as many worker CPUs as DataTrove gets.
    ray.init(address="local", num_cpus=workers, include_dashboard=False, namespace="thresher", log_to_driver=False)
    with service(str(home), allowed_roots=[str(data)]) as client:
        with Sampler([psutil.Process()]) as ingest:
            t0 = time.perf_counter()
            r = client.post("/v1/corpora", json={"name": "bench", "uri": str(data), "format": "jsonl"})
            r.raise_for_status()
            corpus = r.json()
            deadline = time.monotonic() + 7200
            while (state := client.get(f"/v1/corpora/{corpus['id']}").json()["state"]) == "ingesting":
                if time.monotonic() > deadline:
                    raise TimeoutError("ingest")
                time.sleep(0.5)
            if state != "ready":
                raise RuntimeError(f"ingest {state}: {client.get('/v1/jobs/' + corpus['job_id']).json()['error']}")
            ingest_wall = time.perf_counter() - t0
        spec = {"pool": corpus["id"], **({"threshold": threshold} if threshold else {})}
        with Sampler([psutil.Process()]) as s:
            t0 = time.perf_counter()
            job = run_job(client, "dedup", spec, on_poll=s.mark)
            wall = time.perf_counter() - t0
        body = client.get(f"/v1/manifests/{job['result']['manifest_id']}/download",
                          params={"format": "parquet"}).content
    table = pq.read_table(pa.BufferReader(body), columns=["doc_id", "cluster_id", "cluster_size"])
    table = table.filter(pc.greater(table["cluster_size"], 1))
    clusters = dict(zip(table["doc_id"].to_pylist(), table["cluster_id"].to_pylist()))
    return {"clusters": clusters, **s.figures(wall), "ingest": ingest.figures(ingest_wall), "stages": s.stages,
            "summary": job["result"]["summary"]}


def run_datatrove(data: Path, work: Path, workers: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # -P: bench/ first on sys.path would let bench/selectors.py shadow the standard library's.
    proc = psutil.Popen([str(DATATROVE_PYTHON), "-P", str(HERE / "datatrove_minhash.py"), str(data), str(work),
                         str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Sampler([proc]) as s:
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"DataTrove failed:\n{err[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # rusage misses the pool processes DataTrove's executor does not wait for; the samples see them.
    cpu = max((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), s.cpu_seconds())
    clusters = {}
    with open(work / "clusters.jsonl") as f:
        for line in f:
            d = json.loads(line)
            clusters[d["id"]] = d["cluster"]
    stages = json.loads(out.strip().splitlines()[-1])["stage_seconds"]
    return {"clusters": clusters, **s.figures(wall), "cpu_s": cpu, "idle_rss_mb": 0.0, "stage_seconds": stages}


def in_process(context: str, fn, *args):
    """fn(*args) in a fresh process ("fork" for the generator, "spawn" for a fresh Ray and service)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(context)) as pool:
        return pool.submit(fn, *args).result()


def run_methods(data: Path, tmp: Path, args, datatrove: bool) -> dict:
    methods = {"thresher": in_process("spawn", run_thresher, data, tmp / "home", args.workers, args.threshold)}
    if datatrove:
        if not DATATROVE_PYTHON.exists():
            sys.exit(f"{DATATROVE_PYTHON} is missing: see this file's docstring, or pass --skip-datatrove")
        methods["datatrove"] = run_datatrove(data, tmp / "datatrove", args.workers)
    return methods


def method_row(name: str, m: dict, megabytes: float) -> list:
    m["cpu_s_per_mb"] = m["cpu_s"] / megabytes
    return [name, m["cpu_s"], m["cpu_s_per_mb"], m["wall_s"], m["peak_rss_mb"], m["idle_rss_mb"]]


# -- the runs --------------------------------------------------------------------------------------

def planted(args, docs: int, datatrove: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="thresher-curation-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        corpus = in_process("fork", make_corpus, tmp / "data", docs, args.words, args.dup_fraction, args.files,
                            args.seed)
        print(f"corpus: {corpus['documents']} documents of {args.words[0]}-{args.words[1]} words, "
              f"{corpus['megabytes']:.1f} MB, {len(corpus['pairs'])} planted pairs "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        methods = run_methods(tmp / "data", tmp, args, datatrove)
    result = {"docs": docs, "megabytes": corpus["megabytes"], "documents": corpus["documents"],
              "planted_pairs": len(corpus["pairs"]), "methods": {}}
    rows, found = [], {}
    for name, m in methods.items():
        predicted = cluster_pairs(m.pop("clusters"))
        found[name] = {p for p in predicted if corpus["pairs"].get(p, 0) >= args.positive}
        sc = scores(predicted, corpus["pairs"], args.positive)
        m.update(sc)
        result["methods"][name] = m
        rows.append([name, sc["recall"], sc["precision"], sc["precision_at_positive"], sc["predicted_pairs"],
                     *method_row(name, m, corpus["megabytes"])[1:]])
    print_table(f"fuzzy dedup, {corpus['documents']} documents of {args.words[0]}-{args.words[1]} words "
                f"({corpus['megabytes']:.1f} MB), positives: planted pairs at Jaccard >= {args.positive}",
                ["method", "recall", "precision", f"prec@{args.positive}", "pairs", "cpu_s", "cpu_s/MB",
                 "wall_s", "peak_MB", "idle_MB"], rows)
    for name, m in result["methods"].items():
        print(f"{name} recall by Jaccard: {m['recall_by_jaccard']}")
    if len(found) == 2:
        # The positives one finds and the other misses: the paired view of the recall difference
        # (McNemar: with d1 + d2 discordant pairs, |d1 - d2| beyond ~2·sqrt(d1 + d2) is not chance).
        (na, a), (nb, b) = found.items()
        result["found_by_one_only"] = {na: len(a - b), nb: len(b - a)}
        print(f"positives found by one method only: {result['found_by_one_only']}")
    return result


def debian(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="thresher-curation-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        corpus = debian_files(tmp / "data", args.files)
        print(f"Debian pool: {corpus['documents']} documents, {corpus['megabytes']:.1f} MB", flush=True)
        methods = run_methods(tmp / "data", tmp, args, not args.skip_datatrove)
    texts = corpus.pop("texts")
    result = {**corpus, "methods": {}}
    rows = []
    for name, m in methods.items():
        counts = cluster_counts(m["clusters"], texts)
        rows.append([name, counts["clusters"], counts["exact_clusters"], counts["near_clusters"],
                     counts["removed"], counts["largest_cluster"], *method_row(name, m, corpus["megabytes"])[1:]])
        result["methods"][name] = {**m, **counts}
    if len(methods) == 2:
        result["agreement"] = agreement(methods, texts, args.positive)
    for m in result["methods"].values():
        m.pop("clusters")
    print_table(f"fuzzy dedup of the Debian pool, {corpus['documents']} documents ({corpus['megabytes']:.1f} MB)",
                ["method", "clusters", "exact", "near", "removed", "largest", "cpu_s", "cpu_s/MB", "wall_s",
                 "peak_MB", "idle_MB"], rows)
    if "agreement" in result:
        ag = result["agreement"]
        print(f"\npairs in one cluster: {ag['pairs']}")
        print_table("the pairs either finds, by their true word 5-gram Jaccard similarity",
                    ["jaccard", *next(iter(ag["by_jaccard"].values()))],
                    [[k, *v.values()] for k, v in ag["by_jaccard"].items()])
        for key in [k for k in ag if k.endswith("_examples")]:
            for ex in ag[key]:
                print(f"{key[:-9]}: J={ex['jaccard']}: {ex['a']} ~ {ex['b']}: {ex['a_text'][:60]!r} / "
                      f"{ex['b_text'][:60]!r}")
    return result


def scale_table(runs: list[dict]) -> dict:
    """Thresher end to end per size, and how its peak memory grows with the pool."""
    rows = []
    for r in runs:
        t = r["methods"]["thresher"]
        i = t["ingest"]
        rows.append([r["documents"], r["megabytes"], i["wall_s"], i["cpu_s"], t["wall_s"], t["cpu_s"],
                     (i["cpu_s"] + t["cpu_s"]) / r["megabytes"], t["cpu_s_per_mb"], i["peak_rss_mb"],
                     t["peak_rss_mb"], max(i["peak_rss_mb"], t["peak_rss_mb"]),
                     max(i["peak_rss_mb"] - i["idle_rss_mb"], t["peak_rss_mb"] - t["idle_rss_mb"])])
    print_table("Thresher end to end (ingest + dedup through the service)",
                ["docs", "MB", "ingest_wall", "ingest_cpu", "dedup_wall", "dedup_cpu", "cpu_s/MB", "dedup_cpu/MB",
                 "ingest_peak_MB", "dedup_peak_MB", "peak_MB", "above_idle_MB"], rows)
    big, small = (runs.index(f(runs, key=lambda r: r["docs"])) for f in (max, min))
    ratio = {"sizes": [runs[small]["docs"], runs[big]["docs"]],
             "peak": rows[big][10] / rows[small][10], "peak_above_idle": rows[big][11] / rows[small][11]}
    print(f"peak memory {ratio['sizes'][1]} / {ratio['sizes'][0]} documents: {ratio['peak']:.2f} "
          f"(above idle: {ratio['peak_above_idle']:.2f})")
    return ratio


def words_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    lo, hi = int(lo), int(hi or lo)
    if not 5 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"--words {text}: want LO-HI with 5 <= LO <= HI")
    return lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", choices=["planted", "debian"], default="planted")
    ap.add_argument("--docs", type=int, nargs="+", default=[20_000], help="one run per size, in this order")
    ap.add_argument("--words", type=words_range, default=(150, 400), help="words per document, LO-HI")
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--positive", type=float, default=0.8)
    ap.add_argument("--threshold", type=float, default=None, help="Thresher's verification threshold (off: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--datatrove-max-docs", type=int, default=200_000,
                    help="DataTrove (~5.5 CPU-s/MB) runs only at sizes up to this")
    ap.add_argument("--workdir", default=None, help="where the generated files go (default: the temp dir)")
    ap.add_argument("--out", default=None, help="results file name (default: curation_CORPUS)")
    args = ap.parse_args()
    results = {"args": vars(args), "machine": {"cpus": os.cpu_count(), "ram_gb": psutil.virtual_memory().total / 2**30}}
    name = args.out or f"curation_{args.corpus}"
    if args.corpus == "debian":
        results["debian"] = debian(args)
    else:
        results["runs"] = []
        for docs in args.docs:
            results["runs"].append(planted(args, docs, not args.skip_datatrove and docs <= args.datatrove_max_docs))
            results["load_average"] = os.getloadavg()
            write_json(name, results)            # after every size: a later one failing keeps the others
        if len(args.docs) == 1:
            return
        results["scale"] = scale_table(results["runs"])
    write_json(name, results)


if __name__ == "__main__":
    main()
