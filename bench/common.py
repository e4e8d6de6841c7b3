"""Shared bench helpers: an in-process Thresher (real app, real local Ray) and result output."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
# Where the Debian corpus is built (data/ is git-ignored); THRESHER_DEBIAN_CORPUS points elsewhere.
DEBIAN = os.environ.get("THRESHER_DEBIAN_CORPUS", os.path.join(HERE, "..", "data", "debian"))


def debian_corpus(out: str = DEBIAN) -> str:
    """The Debian corpus of bench/build_debian_corpus.py, built on first use (root and apt; a few minutes)."""
    if not os.path.exists(os.path.join(out, "pool.jsonl")):
        from bench.build_debian_corpus import build
        build(out)
    return out


@contextmanager
def service(home: str, **settings):
    """A real Thresher app (catalog, storage, engine on a local Ray) driven over HTTP in-process."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    import ray
    try:
        with TestClient(create_app(Settings(home=home, **settings))) as client:
            yield client
    finally:
        # Once the client has closed, Ray's driver excepthook can no longer reach its GCS: a bench
        # failing after this point hung for a minute and died without printing its traceback.
        ray.shutdown()


def upload_file(client, path: str, name: str) -> dict:
    with open(path, "rb") as f:
        r = client.post("/v1/corpora", params={"name": name, "filename": os.path.basename(path)}, content=f.read())
    r.raise_for_status()
    return r.json()


def run_job(client, kind: str, spec: dict, timeout: float = 7200, on_poll=None) -> dict:
    """Submit a job and wait for it; `on_poll(job)` sees the job object at every poll (its progress)."""
    r = client.post("/v1/jobs", json={"kind": kind, "spec": spec})
    r.raise_for_status()
    job_id, t0 = r.json()["id"], time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if on_poll:
            on_poll(job)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            if job["state"] != "succeeded":
                raise RuntimeError(f"{kind} job {job['state']}: {job['error']}")
            job["wall_s"] = time.monotonic() - t0
            return job
        time.sleep(0.5)
    raise TimeoutError(kind)


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, data: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
    print(f"\nwrote {path}")
    return path
