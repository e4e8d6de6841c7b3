"""Benchmark of fuzzy deduplication (issue 29, item 7): pair precision and recall on planted
near-duplicates, CPU-seconds per MB and peak memory, Thresher's `dedup` side by side with
DataTrove's MinHash pipeline on the same JSONL files, in the same run. Not run in CI.

    python -m bench.curation --docs 20000                     # both (DataTrove from bench/.venv-datatrove)
    python -m bench.curation --docs 20000 --skip-datatrove

DataTrove runs under a virtualenv of the bench's own, never the project's:

    python3.11 -m venv bench/.venv-datatrove
    bench/.venv-datatrove/bin/pip install datatrove fasttext-numpy2-wheel regex spacy tokenizers orjson "xxhash<4" psutil

The corpus: `--docs` documents of 150–400 words drawn from a Zipf vocabulary of 50,000 made-up words
of letters
(random text shares almost no word 5-gram by chance), and a near copy of a `--dup-fraction` of them
with a known fraction of their words replaced (uniform in 0–6%), so that the true Jaccard similarity
of every planted pair, on normalised word 5-grams, is computed exactly. Positives are the planted
pairs at Jaccard ≥ 0.8 (`--positive`). A method's predicted pairs are all pairs within one of its
clusters; recall is the share of positives among them, precision the share of them that are planted
pairs (any similarity: a planted copy found at Jaccard 0.75 is a true near-duplicate), and
`precision_at_positive` the share at Jaccard ≥ `--positive`.

CPU-seconds: the user+system time of every process doing the work (Thresher: the Ray workers and the
service process, sampled; DataTrove: its process tree, from rusage), over the input's megabytes.
Peak memory: the largest sum of resident memory over those processes, sampled every 0.1 s (for
Thresher this includes Ray's own processes and the service; `idle_MB` is that sum before the job).
Both use `--workers` processes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import psutil

from bench.common import print_table, run_job, service, write_json
from scoring.ngrams import normalised_words

HERE = Path(__file__).resolve().parent
DATATROVE_PYTHON = HERE / ".venv-datatrove" / "bin" / "python"


# -- the corpus ------------------------------------------------------------------------------------

def letters(i: int) -> str:
    """A made-up word for number i, in letters only (normalisation turns every digit into 0)."""
    out = ""
    while True:
        i, k = divmod(i, 26)
        out += chr(97 + k)
        if not i:
            return out + "aeiou"[len(out) % 5]


def make_corpus(out: Path, docs: int, dup_fraction: float, files: int, seed: int) -> dict:
    """JSONL files under `out`; returns {pairs: {(a, b): jaccard}, megabytes}."""
    rng = np.random.default_rng(seed)
    vocab = np.array([letters(i) for i in range(50_000)])
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    p /= p.sum()
    texts = {}
    for i in range(docs):
        texts[f"d{i}"] = " ".join(vocab[rng.choice(len(vocab), size=int(rng.integers(150, 401)), p=p)])
    pairs = {}
    r = random.Random(seed)
    for i in r.sample(range(docs), int(docs * dup_fraction)):
        words = texts[f"d{i}"].split()
        rate = r.uniform(0.0, 0.06)
        copy = [letters(r.randrange(10**9)) + "q" if r.random() < rate else w for w in words]
        texts[f"c{i}"] = " ".join(copy)
        pairs[(f"d{i}", f"c{i}")] = jaccard(texts[f"d{i}"], texts[f"c{i}"])
    ids = list(texts)
    r.shuffle(ids)
    out.mkdir(parents=True, exist_ok=True)
    size = 0
    for k in range(files):
        with open(out / f"part-{k:03d}.jsonl", "w") as f:
            for doc_id in ids[k::files]:
                line = json.dumps({"id": doc_id, "text": texts[doc_id]}) + "\n"
                size += len(line.encode())
                f.write(line)
    return {"pairs": pairs, "megabytes": size / 1e6, "documents": len(ids)}


def shingles(text: str, n: int = 5) -> set:
    w = normalised_words([text]).to_pylist()[0]
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def scores(clusters: dict[str, int], planted: dict, positive: float) -> dict:
    """Pair precision and recall of predicted clusters {doc id: cluster}."""
    members: dict[int, list[str]] = {}
    for doc, c in clusters.items():
        members.setdefault(c, []).append(doc)
    predicted = {tuple(sorted((a, b), key=lambda d: d[0] == "c")) for group in members.values()
                 for i, a in enumerate(group) for b in group[i + 1:]}
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


# -- measuring -------------------------------------------------------------------------------------

class Sampler:
    """CPU time and resident memory of a process tree, sampled every 0.1 s in a thread (a process
    that ends between two samples loses at most its last 0.1 s)."""

    def __init__(self, roots: list[psutil.Process]):
        self.roots, self.peak_rss, self.cpu = roots, 0, {}
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

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def __enter__(self):
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


def run_thresher(data: Path, home: Path, workers: int, threshold: float | None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    # The service joins this Ray (init is idempotent): as many worker CPUs as DataTrove gets.
    ray.init(address="local", num_cpus=workers, include_dashboard=False, namespace="thresher", log_to_driver=False)
    with service(str(home), allowed_roots=[str(data)]) as client:
        r = client.post("/v1/corpora", json={"name": "planted", "uri": str(data), "format": "jsonl"})
        r.raise_for_status()
        corpus = r.json()
        deadline = time.monotonic() + 3600
        while client.get(f"/v1/corpora/{corpus['id']}").json()["state"] == "ingesting" and time.monotonic() < deadline:
            time.sleep(0.5)
        spec = {"pool": corpus["id"], **({"threshold": threshold} if threshold else {})}
        run_job(client, "random", {"pool": corpus["id"], "select": {"count": 1}})   # start the Ray workers
        with Sampler([psutil.Process()]) as s:
            t0 = time.perf_counter()
            job = run_job(client, "dedup", spec)
            wall = time.perf_counter() - t0
        body = client.get(f"/v1/manifests/{job['result']['manifest_id']}/download",
                          params={"format": "parquet"}).content
        table = pq.read_table(pa.BufferReader(body), columns=["doc_id", "cluster_id", "cluster_size"])
    rows = table.to_pylist()
    clusters = {r["doc_id"]: r["cluster_id"] for r in rows if r["cluster_size"] > 1}
    return {"clusters": clusters, "cpu_s": s.cpu_seconds(), "wall_s": wall, "peak_rss_mb": s.peak_rss / 2**20,
            "idle_rss_mb": s.baseline_rss / 2**20, "summary": job["result"]["summary"]}


def run_datatrove(data: Path, work: Path, workers: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = psutil.Popen([str(DATATROVE_PYTHON), str(HERE / "datatrove_minhash.py"), str(data), str(work),
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
    return {"clusters": clusters, "cpu_s": cpu, "wall_s": wall, "peak_rss_mb": s.peak_rss / 2**20,
            "idle_rss_mb": 0.0, "stage_seconds": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--positive", type=float, default=0.8)
    ap.add_argument("--threshold", type=float, default=None, help="Thresher's verification threshold (off: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="thresher-curation-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        corpus = make_corpus(tmp / "data", args.docs, args.dup_fraction, args.files, args.seed)
        print(f"corpus: {corpus['documents']} documents, {corpus['megabytes']:.1f} MB, "
              f"{len(corpus['pairs'])} planted pairs ({time.perf_counter() - t0:.0f} s)")
        methods = {"thresher": run_thresher(tmp / "data", tmp / "home", args.workers, args.threshold)}
        if not args.skip_datatrove:
            if not DATATROVE_PYTHON.exists():
                sys.exit(f"{DATATROVE_PYTHON} is missing: see this file's docstring, or pass --skip-datatrove")
            methods["datatrove"] = run_datatrove(tmp / "data", tmp / "datatrove", args.workers)
    results = {"args": vars(args), "megabytes": corpus["megabytes"], "documents": corpus["documents"],
               "planted_pairs": len(corpus["pairs"]), "methods": {}}
    rows = []
    for name, m in methods.items():
        sc = scores(m.pop("clusters"), corpus["pairs"], args.positive)
        m.update(sc, cpu_s_per_mb=m["cpu_s"] / corpus["megabytes"])
        results["methods"][name] = m
        rows.append([name, sc["recall"], sc["precision"], sc["precision_at_positive"], sc["predicted_pairs"],
                     m["cpu_s"], m["cpu_s_per_mb"], m["wall_s"], m["peak_rss_mb"], m["idle_rss_mb"]])
    print_table(f"fuzzy dedup, {corpus['documents']} documents ({corpus['megabytes']:.1f} MB), "
                f"positives: planted pairs at Jaccard >= {args.positive}",
                ["method", "recall", "precision", f"prec@{args.positive}", "pairs", "cpu_s", "cpu_s/MB",
                 "wall_s", "peak_MB", "idle_MB"], rows)
    for name, m in results["methods"].items():
        print(f"{name} recall by Jaccard: {m['recall_by_jaccard']}")
    write_json("curation", results)


if __name__ == "__main__":
    main()
