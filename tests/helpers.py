"""Helpers for driving the service over HTTP in tests."""
from __future__ import annotations

import contextlib
import subprocess
import time

import psutil
import pytest

from tests.corpus_gen import jsonl


def upload(client, rows, name="pool", **params):
    r = client.post("/v1/corpora", params={"name": name, "format": "jsonl", **params}, content=jsonl(rows))
    assert r.status_code == 201, r.text
    return r.json()


def submit(client, kind, spec, name=None, **kw):
    r = client.post("/v1/jobs", json={"kind": kind, "name": name or kind, "spec": spec}, **kw)
    assert r.status_code == 202, r.text
    return r.json()


def wait(client, job_id, timeout=120.0, states=("succeeded", "failed", "cancelled"), headers=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job}")


def run_ok(client, kind, spec, timeout=120.0):
    job = wait(client, submit(client, kind, spec)["id"], timeout)
    assert job["state"] == "succeeded", job
    return job


@contextlib.contextmanager
def tmpfs(path, size: str):
    """A tmpfs of `size` mounted at `path` (a new folder) for a full-disk test; skips the test where
    root or mount is missing."""
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ray_task_processes(*names: str) -> list[psutil.Process]:
    """The worker processes of this test session's Ray running a task or actor method named one of
    `names`. Only its raylet's children: another Ray on the machine (a bench) is not ours to kill."""
    import ray
    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    out = []
    for p in raylet.children(recursive=True):
        try:
            if p.cmdline()[:1] and p.cmdline()[0].startswith(tuple(f"ray::{n}" for n in names)):
                out.append(p)
        except psutil.Error:
            pass
    return out


def kill_tasks_of(client, job_id: str, *names: str, timeout: float = 120) -> int:
    """Kill the workers running tasks named `names` while the job is queued or running, until one
    was caught (or the job ended); how many were killed."""
    killed = 0
    deadline = time.monotonic() + timeout
    while not killed and time.monotonic() < deadline:
        for p in ray_task_processes(*names):
            p.kill()
            killed += 1
        if client.get(f"/v1/jobs/{job_id}").json()["state"] not in ("queued", "running"):
            break
        time.sleep(0.005)
    return killed
