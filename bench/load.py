"""Load and memory bench (loopback only, bounded; not part of CI).

Starts `thresher serve` on 127.0.0.1 with its own local Ray and a throwaway home, uploads the demo
corpora, starts a `color_filter` job, and while it runs sends
  1. 200 concurrent mixed GETs (lists, single resources, health, metrics),
  2. 50 concurrent job submissions (small `random` selections),
reporting errors (goal 0) and p50/p99 latency of each; then measures the service process's RSS
before a decompression-bomb upload (a gzip of zeros with no newline), at its peak during the
upload, and a few seconds after the answer (goal: back within 10%, peak < 200 MB above the start).
Last, `--rounds` bursts of `--transfers` concurrent downloads (a 40 MB corpus and a selection of
it, as JSONL, CSV and Parquet) together with as many concurrent uploads, while the service's RSS
and its child processes' (Ray) are sampled and /healthz is asked every 50 ms (goals: the service's
peak bounded, not growing round after round; /healthz p99 under 1 s; no errors).

    .venv/bin/python -m bench.load [--bomb-mb 1] [--transfers 10] [--rounds 3]

Prints a table and writes bench/results/load.json.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from bench.common import print_table, write_json
from service.demo import free_port, write_corpora

KEY = "bench-load-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def start_service(home: Path, port: int, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "THRESHER_RAY_ADDRESS")}
    env.update(THRESHER_API_KEYS=f"bench:{KEY}", THRESHER_SHARD_SIZE="500")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--home", str(home), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"thresher serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("thresher serve did not become ready")


def stop_service(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this bench started, nothing else
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def burst(url: str, requests: list[tuple[str, str, dict | None]]) -> dict:
    """Send all requests at once over as many connections; errors are non-2xx answers or failures."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=120, limits=limits) as client:
        async def one(method, path, body):
            t0 = time.perf_counter()
            try:
                r = await client.request(method, path, json=body)
                ok = r.status_code < 400
                status = r.status_code
            except httpx.HTTPError as e:
                ok, status = False, type(e).__name__
            return ok, status, time.perf_counter() - t0
        results = await asyncio.gather(*(one(*r) for r in requests))
    latencies = [t for _, _, t in results]
    errors = [s for ok, s, _ in results if not ok]
    return {"requests": len(results), "errors": len(errors), "error_statuses": sorted(map(str, set(errors))),
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)}


def bomb(mb: float) -> bytes:
    """A gzip of zeros (no newline anywhere) of about `mb` MB: ~1000x that once decompressed."""
    out = io.BytesIO()
    chunk = bytes(1 << 24)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        while out.tell() < mb * 1e6:
            gz.write(chunk)
    return out.getvalue()


def rss_during_bomb(url: str, pid: int, body: bytes) -> dict:
    proc = psutil.Process(pid)
    before = proc.memory_info().rss
    peak, done = before, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        r = httpx.post(f"{url}/v1/corpora", params={"name": "bomb", "format": "jsonl", "filename": "bomb.jsonl.gz"},
                       content=body, headers=HEADERS, timeout=600)
        answer = f"{r.status_code} {r.json().get('error', {}).get('code', '') if r.status_code >= 400 else ''}".strip()
    except httpx.HTTPError as e:
        answer = type(e).__name__
    seconds = time.perf_counter() - t0
    time.sleep(3)
    done.set()
    th.join()
    after = proc.memory_info().rss if proc.is_running() else float("nan")
    mb = 1 / 2**20
    return {"bomb_compressed_bytes": len(body), "answer": answer, "upload_s": seconds,
            "rss_before_mb": before * mb, "rss_peak_mb": peak * mb, "rss_after_mb": after * mb,
            "peak_over_start_mb": (peak - before) * mb, "after_vs_before": after / before}


def big_corpus(path: Path, docs: int, seed: int = 0) -> Path:
    """`docs` JSONL documents of ~2 KB of random words."""
    import random
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(4000)]
    with path.open("w") as f:
        for i in range(docs):
            f.write(json.dumps({"id": f"big-{i:06d}", "text": " ".join(rng.choices(words, k=330))}) + "\n")
    return path


class Sampler:
    """RSS of the service process and of its descendants (Ray), and /healthz latency, sampled on
    background threads until stopped."""

    def __init__(self, url: str, pid: int):
        self.url, self.proc, self.stop = url, psutil.Process(pid), threading.Event()
        self.service_mb: list[float] = []
        self.children_mb: list[float] = []
        self.healthz_s: list[float] = []
        self.healthz_errors = 0

    def _rss(self):
        while not self.stop.is_set():
            try:
                self.service_mb.append(self.proc.memory_info().rss / 2**20)
                kids = 0
                for child in self.proc.children(recursive=True):
                    try:
                        kids += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.children_mb.append(kids / 2**20)
            except psutil.Error:
                return
            time.sleep(0.05)

    def _healthz(self):
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = c.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.healthz_s.append(time.perf_counter() - t0)
                self.healthz_errors += not ok
                time.sleep(0.05)

    def __enter__(self):
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._rss, self._healthz)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


async def transfers(url: str, downloads: list[str], uploads: list[bytes]) -> dict:
    """The downloads (read to the end, in chunks) and uploads, all at once."""
    n = len(downloads) + len(uploads)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=600, limits=limits) as client:
        async def download(path):
            t0, size = time.perf_counter(), 0
            try:
                async with client.stream("GET", path) as r:
                    async for chunk in r.aiter_bytes():
                        size += len(chunk)
                    status = r.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            return "download", status, time.perf_counter() - t0, size

        async def upload(i, body):
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/corpora", params={"name": f"burst-{i}", "format": "jsonl"}, content=body)
                status = r.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            return "upload", status, time.perf_counter() - t0, len(body)
        return await asyncio.gather(*(download(p) for p in downloads), *(upload(i, b) for i, b in enumerate(uploads)))


def transfer_phase(url: str, pid: int, c: httpx.Client, tmp: Path, args) -> dict:
    big = c.post("/v1/corpora", params={"name": "big", "format": "jsonl"},
                 content=big_corpus(tmp / "big.jsonl", args.big_docs).read_bytes()).json()
    job = c.post("/v1/jobs", json={"kind": "random", "name": "big-half", "spec": {
        "pool": big["id"], "select": {"fraction": 0.5}, "seed": 1}}).json()
    deadline = time.monotonic() + 300
    while (job := c.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed") \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    manifest = job["result"]["manifest_id"]
    kinds = [f"/v1/corpora/{big['id']}/download?format=jsonl", f"/v1/corpora/{big['id']}/download?format=parquet",
             f"/v1/corpora/{big['id']}/download?format=csv", f"/v1/manifests/{manifest}/download?format=jsonl",
             f"/v1/manifests/{manifest}/download?format=parquet&selected_only=true"]
    downloads = [kinds[i % len(kinds)] for i in range(args.transfers)]
    small = tmp / "small.jsonl"
    big_corpus(small, 500, seed=2)
    uploads = [small.read_bytes()] * args.transfers
    rounds = []
    with Sampler(url, pid) as sampler:
        time.sleep(1)
        start_mb = sampler.service_mb[-1]
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            results = asyncio.run(transfers(url, downloads, uploads))
            ok = {"download": 200, "upload": 201}
            rounds.append({
                "seconds": time.perf_counter() - t0,
                "errors": [f"{kind} {status}" for kind, status, _, _ in results if status != ok[kind]],
                "download_p99_s": percentile([t for k, _, t, _ in results if k == "download"], 0.99),
                "upload_p99_s": percentile([t for k, _, t, _ in results if k == "upload"], 0.99),
                "downloaded_mb": sum(n for k, _, _, n in results if k == "download") / 2**20,
                "service_rss_after_mb": sampler.service_mb[-1]})
        time.sleep(3)
    health = sampler.healthz_s
    return {"transfers": args.transfers, "rounds": rounds, "service_rss_start_mb": start_mb,
            "service_rss_peak_mb": max(sampler.service_mb), "service_rss_end_mb": sampler.service_mb[-1],
            "children_rss_start_mb": sampler.children_mb[0], "children_rss_peak_mb": max(sampler.children_mb),
            "healthz_requests": len(health), "healthz_errors": sampler.healthz_errors,
            "healthz_p50_ms": 1000 * percentile(health, 0.5), "healthz_p99_ms": 1000 * percentile(health, 0.99),
            "healthz_max_ms": 1000 * max(health)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bomb-mb", type=float, default=1.0, help="compressed size of the gzip bomb (MB)")
    ap.add_argument("--gets", type=int, default=200)
    ap.add_argument("--submissions", type=int, default=50)
    ap.add_argument("--transfers", type=int, default=10, help="concurrent downloads, and as many uploads")
    ap.add_argument("--rounds", type=int, default=3, help="bursts of transfers")
    ap.add_argument("--big-docs", type=int, default=20_000, help="documents of the downloaded corpus (~2 KB each)")
    ap.add_argument("--only-transfers", action="store_true", help="skip the other phases")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="thresher-load-") as tmp:
        tmp = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(tmp / "server.log", "wb") as log:
            proc = start_service(tmp / "home", port, log)
            try:
                results = run(url, proc.pid, tmp, args)
            finally:
                stop_service(proc)
    t = results["transfers"]
    print_table(f"{t['transfers']} concurrent downloads and {t['transfers']} uploads, {len(t['rounds'])} rounds",
                ["round", "seconds", "errors", "download p99 s", "upload p99 s", "downloaded MB", "service RSS after MB"],
                [[i, r["seconds"], len(r["errors"]), r["download_p99_s"], r["upload_p99_s"], r["downloaded_mb"],
                  r["service_rss_after_mb"]] for i, r in enumerate(t["rounds"])])
    print_table("Service memory and /healthz during the transfers",
                ["service start MB", "service peak MB", "service end MB", "Ray start MB", "Ray peak MB",
                 "/healthz n", "errors", "p50 ms", "p99 ms", "max ms"],
                [[t["service_rss_start_mb"], t["service_rss_peak_mb"], t["service_rss_end_mb"],
                  t["children_rss_start_mb"], t["children_rss_peak_mb"], t["healthz_requests"], t["healthz_errors"],
                  t["healthz_p50_ms"], t["healthz_p99_ms"], t["healthz_max_ms"]]])
    write_json("load", results)
    if args.only_transfers:
        return 0
    g, s, b = results["gets"], results["submissions"], results["bomb"]
    print_table("Load while a color_filter job runs (loopback)", ["phase", "requests", "errors", "p50 ms", "p99 ms"],
                [["mixed GETs", g["requests"], g["errors"], g["p50_ms"], g["p99_ms"]],
                 ["job submissions", s["requests"], s["errors"], s["p50_ms"], s["p99_ms"]]])
    print_table("Service RSS around a decompression-bomb upload",
                ["bomb bytes", "answer", "before MB", "peak MB", "after MB", "peak-start MB", "after/before"],
                [[b["bomb_compressed_bytes"], b["answer"], b["rss_before_mb"], b["rss_peak_mb"], b["rss_after_mb"],
                  b["peak_over_start_mb"], b["after_vs_before"]]])
    return 0


def run(url: str, pid: int, tmp: Path, args) -> dict:
    pool_path, target_path = write_corpora(tmp)
    with httpx.Client(base_url=url, headers=HEADERS, timeout=300) as c:
        if args.only_transfers:
            return {"transfers": transfer_phase(url, pid, c, tmp, args)}
        pool = c.post("/v1/corpora", params={"name": "pool", "format": "jsonl"}, content=pool_path.read_bytes()).json()
        target = c.post("/v1/corpora", params={"name": "target", "format": "jsonl"},
                        content=target_path.read_bytes()).json()
        job = c.post("/v1/jobs", json={"kind": "color_filter", "name": "background", "spec": {
            "pool": pool["id"], "target": target["id"], "select": {"fraction": 0.1}}}).json()
        deadline = time.monotonic() + 120
        while c.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.5)
        paths = ["/v1/corpora", "/v1/jobs", f"/v1/jobs/{job['id']}", f"/v1/corpora/{pool['id']}",
                 f"/v1/corpora/{pool['id']}/sample", "/v1/manifests", "/v1/models", "/healthz", "/metrics"]
        gets = [("GET", paths[i % len(paths)], None) for i in range(args.gets)]
        subs = [("POST", "/v1/jobs", {"kind": "random", "name": f"load-{i}",
                                      "spec": {"pool": pool["id"], "select": {"count": 10}, "seed": i}})
                for i in range(args.submissions)]
        state_during = c.get(f"/v1/jobs/{job['id']}").json()["state"]
        out = {"background_job_state": state_during,
               "gets": asyncio.run(burst(url, gets)),
               "submissions": asyncio.run(burst(url, subs))}
        out["bomb"] = rss_during_bomb(url, pid, bomb(args.bomb_mb))
        c.post(f"/v1/jobs/{job['id']}/cancel")
        out["transfers"] = transfer_phase(url, pid, c, tmp, args)
    return out


if __name__ == "__main__":
    sys.exit(main())
