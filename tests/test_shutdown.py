"""A service that started its own local Ray stops all of it when it stops (SIGTERM)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import ALICE, KEYS
from tests.corpus_gen import corpus, jsonl
from tests.test_faults import free_port

pytestmark = pytest.mark.timeout(300)


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_sigterm_stops_every_process_of_the_services_own_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "THRESHER_RAY_ADDRESS")}
    env.update(THRESHER_API_KEYS=",".join(KEYS), THRESHER_SHARD_SIZE="20")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--home", str(tmp_path / "home"),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"service exited with {proc.returncode}"
            assert time.monotonic() < deadline, "service did not become ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        # Run a job so that Ray has started workers too.
        with httpx.Client(base_url=url, headers=ALICE, timeout=60) as c:
            pool = c.post("/v1/corpora", params={"name": "p", "format": "jsonl"}, content=jsonl(corpus(60))).json()
            job = c.post("/v1/jobs", json={"kind": "random", "spec": {"pool": pool["id"], "select": {"count": 5}}}).json()
            while c.get(f"/v1/jobs/{job['id']}").json()["state"] not in ("succeeded", "failed"):
                time.sleep(0.3)
        time.sleep(2)  # the agents start a little after the raylet
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        sessions = {m.group(0) for p in ray_procs for a in p.cmdline()
                    for m in [re.search(r"session_\d{4}-\d\d-\d\d_[\d_-]+", a)] if m}
        names = " ".join(" ".join(p.cmdline()) for p in ray_procs)
        assert sessions and "raylet" in names and "DashboardAgent" in names, names
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    deadline = time.monotonic() + 15
    while any(alive(p) for p in ray_procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in ray_procs if alive(p)]
    for p in ray_procs:  # never leave them behind for the rest of the suite
        if alive(p):
            p.kill()
    assert not survivors, survivors
    session = next(iter(sessions))
    others = [p.pid for p in psutil.process_iter(["cmdline"])
              if any(session in a for a in (p.info["cmdline"] or [])) and alive(p)]
    assert not others, others
    assert not (tmp_path / "home" / "ray-session.json").exists()  # stopped in order: nothing to clean next time
