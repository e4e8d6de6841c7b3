"""A service that started its own local Ray stops all of it when it stops (SIGTERM)."""
from __future__ import annotations

import re
import signal
import subprocess
import time

import httpx
import psutil
import pytest

from tests.conftest import ALICE
from tests.corpus_gen import corpus, jsonl
from tests.helpers import alive
from tests.net import free_port, start_service_process

pytestmark = pytest.mark.timeout(300)


def test_sigterm_stops_every_process_of_the_services_own_ray(tmp_path):
    port = free_port()
    proc = start_service_process(tmp_path / "home", port, None, timeout=180, THRESHER_SHARD_SIZE="20")   # its own Ray
    url = f"http://127.0.0.1:{port}"
    try:
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
