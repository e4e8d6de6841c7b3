"""Nothing is lost: a killed service or a killed Ray worker costs at most the shards in flight."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ALICE
from tests.corpus_gen import corpus
from tests.helpers import kill_tasks_of, ray_task_processes, submit, upload, wait
from tests.net import free_port, start_service_process


def start_service(home, port, ray_address) -> subprocess.Popen:
    return start_service_process(home, port, ray_address, THRESHER_SHARD_SIZE="20", THRESHER_MAX_INFLIGHT="1")


def test_killed_service_resumes_job_without_loss(tmp_path, ray_address):
    port = free_port()
    proc = start_service(tmp_path, port, ray_address)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ALICE, timeout=30)
    try:
        rows = corpus(4000, seed=11, min_words=10, max_words=20)
        pool = upload(client, rows, name="pool")
        assert pool["num_shards"] == 200
        target = upload(client, corpus(40, seed=12, domains=["finance"], prefix="t"), name="target")
        job = submit(client, "dsir", {"pool": pool["id"], "target": target["id"], "select": {"fraction": 0.2}})
        # Kill the service once some (not all) of the scoring shards are done, as the store says
        # (the job's published progress lags behind it).
        scores = tmp_path / "store" / "jobs" / job["id"] / "scores"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(scores.glob("part-*"))) < 3:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = {f.name: f.stat().st_mtime_ns for f in scores.iterdir() if f.name.startswith("part-")}
        assert 3 <= len(before) < 200

        proc = start_service(tmp_path, port, ray_address)
        done = wait(client, job["id"], timeout=180)
        assert done["state"] == "succeeded", done
        after = {f.name: f.stat().st_mtime_ns for f in scores.iterdir() if f.name.startswith("part-")}
        assert len(after) == 200
        assert all(after[name] == mtime for name, mtime in before.items()), "finished shards were recomputed"
        man = done["result"]["manifest_id"]
        r = client.post("/v1/query", json={"sql": "SELECT count(*), count(DISTINCT doc_id), count(*) FILTER (WHERE selected) FROM m",
                                           "tables": {"m": man}}).json()
        assert r["rows"] == [[4000, 4000, 800]]
    finally:
        proc.kill()
        proc.wait()


def test_killed_ray_worker_still_finishes(service):
    """A 6,000-document dsir is light: its tasks run on the light lane's warm workers (actors),
    which Ray restarts, retrying the call; a heavy one's are plain tasks, which Ray retries."""
    pool = upload(service, corpus(6000, seed=13, min_words=60, max_words=90), name="big")
    target = upload(service, corpus(100, seed=14, domains=["cooking"], prefix="t"), name="t")
    job = submit(service, "dsir", {"pool": pool["id"], "target": target["id"], "select": {"fraction": 0.1}})
    assert kill_tasks_of(service, job["id"], "dsir_scores", "LightWorker.run"), "never caught a scoring task to kill"
    done = wait(service, job["id"], timeout=180)
    assert done["state"] == "succeeded", done
    r = service.post("/v1/query", json={"sql": "SELECT count(*), count(DISTINCT doc_id) FROM m",
                                        "tables": {"m": done["result"]["manifest_id"]}}).json()
    assert r["rows"] == [[6000, 6000]]


def assert_abandoned_soon(ref) -> None:
    """The task ends with Abandoned within a minute (its 50M-token budget would take many)."""
    import ray

    from workers.driver.engine import Abandoned
    started = time.monotonic()
    with pytest.raises(ray.exceptions.RayTaskError) as e:
        ray.get(ref, timeout=120)
    assert isinstance(e.value.cause, Abandoned)
    assert time.monotonic() - started < 60


def test_training_whose_job_is_gone_stops_itself(tmp_path, ray_address):
    """A cancel that Ray misses (it can take a starting task for one not running) must not leave a
    training holding the cluster's CPUs for its whole budget: the task stops at its next progress
    report once the job's progress board is gone."""
    import pyarrow as pa
    import ray

    from storage import layout
    from storage.fs import Store
    from workers.driver.engine import ProgressBoard
    from workers.jobs.lm import pretrain_task
    store = Store(str(tmp_path / "store"))
    rows = corpus(300, seed=21)
    part = layout.corpus_shard("cor_gone", 0)
    store.write_parquet(pa.Table.from_pylist(rows), *part)
    board = ProgressBoard.remote()
    ref = pretrain_task.options(num_cpus=1, max_retries=0).remote(
        store.root, {"preset": "tiny", "tokens": 50_000_000}, len(rows), [part], "mdl_gone", board, 1)
    deadline = time.monotonic() + 120
    while ray.get(board.get.remote())[0] == 0:  # training has begun and reported
        assert time.monotonic() < deadline, "the training never reported progress"
        time.sleep(0.1)
    ray.kill(board)
    assert_abandoned_soon(ref)
    assert not store.exists(*layout.model_meta("mdl_gone"))


def test_proxy_training_whose_job_has_ended_stops_itself(tmp_path, ray_address):
    """The same for a training that reports to no one (evaluate's proxies, Projektor's pilots): it
    pings its job's lifeline, which the engine kills when the job ends."""
    import pyarrow as pa
    import ray

    from storage import layout
    from storage.fs import Store
    from workers.driver.engine import Lifeline
    from workers.jobs.lm import proxy_task
    store = Store(str(tmp_path / "store"))
    rows = corpus(300, seed=22)
    part, man = layout.corpus_shard("cor_gone", 0), layout.manifest_part("man_gone", 0)
    store.write_parquet(pa.Table.from_pylist(rows), *part)
    store.write_parquet(pa.table({"selected": [True] * len(rows)}), *man)
    lifeline = Lifeline.remote()
    ref = proxy_task.options(num_cpus=1, max_retries=0).remote(
        store.root, [(part, man, None)], True, None, "documents", [part], [part],
        {"preset": "tiny", "tokens": 50_000_000}, 1, lifeline)
    time.sleep(1)
    ray.kill(lifeline)
    assert_abandoned_soon(ref)


def test_no_keys_refuses_public_bind(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "THRESHER_API_KEYS"}
    r = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--home", str(tmp_path), "--host", "0.0.0.0",
                        "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "API keys" in (r.stdout + r.stderr)


pytestmark = pytest.mark.timeout(400)


def test_a_job_its_service_dies_under_is_failed_not_resumed_forever(tmp_path, ray_address):
    """A job that kills its service would be resumed, and kill it, at every start (issue 32: a
    projection grew the service by GBs at each start until the catalog was edited by hand). With
    THRESHER_MAX_JOB_ATTEMPTS=1: an orderly stop (SIGTERM) does not count, a kill fails it."""
    port, env = free_port(), {"THRESHER_MAX_JOB_ATTEMPTS": "1"}
    proc = start_service_process(tmp_path, port, ray_address, **env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ALICE, timeout=30)
    try:
        pool = upload(client, corpus(100, seed=41), name="crash")
        job = submit(client, "train_model", {"corpus": pool["id"], "tokens": 50_000_000, "vocab_size": 300})
        for stop in (signal.SIGTERM, signal.SIGKILL):
            assert wait(client, job["id"], timeout=60, states=("running", "failed"))["state"] == "running"
            proc.send_signal(stop)
            proc.wait(timeout=60)
            proc = start_service_process(tmp_path, port, ray_address, **env)
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["state"] == "failed", done
        assert done["error"]["code"] == "job_crashed" and "stopped 1 time " in done["error"]["message"], done
    finally:
        proc.kill()
        proc.wait()


def test_a_cancelled_projection_stays_cancelled_and_its_tasks_stop(tmp_path, ray_address):
    """A cancel is recorded when it is asked, not when the job's thread notices (issue 32: a
    cancelled projection came back running after a restart); its pilot proxies stop."""
    port = free_port()
    proc = start_service(tmp_path, port, ray_address)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ALICE, timeout=30)
    try:
        ids = [upload(client, corpus(40, seed=50 + i, domains=[d]), name=d)["id"]
               for i, d in enumerate(["cooking", "finance", "astronomy"])]
        spec = {"sources": [{"corpus": c, "price_per_doc": 1.0, "available_docs": 1000} for c in ids[:2]],
                "validation": ids[2], "pilot_sizes": [20, 40], "target_sizes": [80],
                "auto": {"grid_step": 0.5, "tokens": 50_000_000, "validation_docs": 10,
                         "proxy": {"vocab_size": 300, "batch_size": 4, "seq_len": 16}}}
        job = submit(client, "projection", spec)
        deadline = time.monotonic() + 120
        while not ray_task_processes("pilot_task"):
            assert time.monotonic() < deadline, client.get(f"/v1/jobs/{job['id']}").json()
            time.sleep(0.2)
        assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
        deadline = time.monotonic() + 30
        while ray_task_processes("pilot_task"):
            assert time.monotonic() < deadline, "the cancelled job's proxies still train"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_service(tmp_path, port, ray_address)
        time.sleep(2)  # a resumed job would have started again by now
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
        assert not ray_task_processes("pilot_task")
    finally:
        proc.kill()
        proc.wait()
