"""The spine end to end over HTTP: upload → job on Ray → manifest → query → download."""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from tests.conftest import BOB
from tests.corpus_gen import corpus, jsonl
from tests.helpers import run_ok, submit, upload, wait


@pytest.fixture(scope="module")
def pool_and_target(service):
    pool = upload(service, corpus(1200, seed=1), name="pool")
    target = upload(service, corpus(150, seed=2, domains=["astronomy"], prefix="t"), name="target")
    return pool, target


def test_upload_reports_stats(service, pool_and_target):
    pool, _ = pool_and_target
    assert pool["state"] == "ready" and pool["num_docs"] == 1200
    assert pool["num_shards"] == 6  # shard_size 200
    assert sum(pool["sources"].values()) == 1200 and set(pool["sources"]) == {"cooking", "finance", "astronomy"}
    assert service.get(f"/v1/corpora/{pool['id']}").json()["id"] == pool["id"]
    assert pool["id"] in [c["id"] for c in service.get("/v1/corpora").json()["items"]]


def test_dsir_end_to_end(service, pool_and_target):
    pool, target = pool_and_target
    job = run_ok(service, "dsir", {"pool": pool["id"], "target": target["id"], "select": {"fraction": 0.1}, "seed": 3})
    man_id = job["result"]["manifest_id"]
    assert job["progress"]["done"] == job["progress"]["total"]
    man = service.get(f"/v1/manifests/{man_id}").json()
    assert man["num_rows"] == 1200 and man["num_selected"] == 120 and man["num_shards"] == 6
    cols = {c["name"] for c in man["columns"]}
    assert {"doc_id", "corpus_id", "shard", "row", "source", "n_tokens", "score", "rank", "selected"} <= cols

    # The selection toward astronomy is dominated by astronomy.
    q = service.post("/v1/query", json={"sql": "SELECT source, count(*) AS n FROM m WHERE selected GROUP BY source ORDER BY n DESC",
                                        "tables": {"m": man_id}})
    assert q.status_code == 200, q.text
    rows = {r[0]: r[1] for r in q.json()["rows"]}
    assert rows["astronomy"] / sum(rows.values()) >= 0.9, rows

    # Every document exactly once.
    q = service.post("/v1/query", json={"sql": "SELECT count(*), count(DISTINCT doc_id) FROM m", "tables": {"m": man_id}})
    assert q.json()["rows"] == [[1200, 1200]]

    # Downloads: parquet (whole), csv and jsonl (selected only), one shard.
    r = service.get(f"/v1/manifests/{man_id}/download", params={"format": "parquet"})
    t = pq.read_table(io.BytesIO(r.content))
    assert t.num_rows == 1200 and sorted(t["rank"].drop_null().to_pylist()) == list(range(1, 1201))
    r = service.get(f"/v1/manifests/{man_id}/download", params={"format": "jsonl", "selected_only": "true"})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert len(lines) == 120 and all(x["selected"] for x in lines)
    r = service.get(f"/v1/manifests/{man_id}/download", params={"format": "csv", "selected_only": "true"})
    assert len(r.text.strip().splitlines()) == 121
    shards = service.get(f"/v1/manifests/{man_id}/shards").json()["items"]
    assert len(shards) == 6 and sum(s["num_selected"] for s in shards) == 120
    one = pq.read_table(io.BytesIO(service.get(shards[2]["url"]).content))
    assert one.num_rows == shards[2]["num_selected"] and set(one["shard"].to_pylist()) <= {2}

    # Export the selection as a corpus with text.
    r = service.post(f"/v1/manifests/{man_id}/export", json={"selected_only": True})
    assert r.status_code == 202, r.text
    exp = wait(service, r.json()["id"])
    assert exp["state"] == "succeeded", exp
    new = service.get(f"/v1/corpora/{exp['result']['corpus_id']}").json()
    assert new["state"] == "ready" and new["num_docs"] == 120


def test_random_per_shard_and_count(service, pool_and_target):
    pool, _ = pool_and_target
    job = run_ok(service, "random", {"pool": pool["id"], "select": {"fraction": 0.25}, "mode": "per_shard"})
    man_id = job["result"]["manifest_id"]
    shards = service.get(f"/v1/manifests/{man_id}/shards").json()["items"]
    assert [s["num_selected"] for s in shards] == [50] * 6
    job = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 7}})
    assert service.get(f"/v1/manifests/{job['result']['manifest_id']}").json()["num_selected"] == 7
    job = run_ok(service, "random", {"pool": pool["id"], "select": {"tau": 4}})
    assert service.get(f"/v1/manifests/{job['result']['manifest_id']}").json()["num_selected"] == 300


def test_idempotency_key(service, pool_and_target):
    pool, _ = pool_and_target
    spec = {"pool": pool["id"], "select": {"count": 5}}
    a = submit(service, "random", spec, headers={"Idempotency-Key": "k1"})
    b = submit(service, "random", spec, headers={"Idempotency-Key": "k1"})
    assert a["id"] == b["id"]
    r = service.post("/v1/jobs", json={"kind": "random", "name": "random", "spec": {**spec, "seed": 9}},
                     headers={"Idempotency-Key": "k1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"
    wait(service, a["id"])


def test_events_stream_ends_with_terminal_state(service, pool_and_target):
    pool, _ = pool_and_target
    job = submit(service, "random", {"pool": pool["id"], "select": {"count": 3}})
    with service.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1]["state"] == "succeeded" and events[-1]["id"] == job["id"]


def test_cancel(service, pool_and_target):
    pool, target = pool_and_target
    job = submit(service, "dsir", {"pool": pool["id"], "target": target["id"], "select": {"count": 5}})
    r = service.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    done = wait(service, job["id"])
    assert done["state"] in ("cancelled", "succeeded")  # it may win the race on a fast machine


def test_upload_while_a_training_holds_every_core(service):
    """An upload is parsed on a Ray worker, but it does not queue behind the CPUs a job reserved:
    with a training holding all of them, an upload still answers at once."""
    import time

    import ray
    pool = upload(service, corpus(300, seed=31), name="to-train")
    job = submit(service, "train_model", {"corpus": pool["id"], "preset": "tiny", "tokens": 50_000_000})
    deadline = time.monotonic() + 60
    while service.get(f"/v1/jobs/{job['id']}").json()["progress"].get("done", 0) == 0:
        assert time.monotonic() < deadline, "the training never started"
        time.sleep(0.1)
    try:
        assert ray.available_resources().get("CPU", 0) < 1  # the training holds them all
        started = time.monotonic()
        c = upload(service, corpus(30, seed=32), name="during-training")
        assert c["num_docs"] == 30 and time.monotonic() - started < 20
    finally:
        assert wait(service, service.post(f"/v1/jobs/{job['id']}/cancel").json()["id"])["state"] == "cancelled"


def test_sample_download_and_delete(service):
    c = upload(service, corpus(30, seed=5), name="small")
    r = service.get(f"/v1/corpora/{c['id']}/sample", params={"n": 3})
    assert [d["id"] for d in r.json()["items"]] == ["d0", "d1", "d2"]
    r = service.get(f"/v1/corpora/{c['id']}/download", params={"format": "jsonl"})
    assert len(r.text.splitlines()) == 30
    assert service.delete(f"/v1/corpora/{c['id']}").status_code == 204
    assert service.get(f"/v1/corpora/{c['id']}").status_code == 404


def test_register_by_uri(service):
    path = service.allowed_root / "server.jsonl"
    path.write_bytes(jsonl(corpus(50, seed=6)))
    r = service.post("/v1/corpora", json={"name": "server", "uri": f"file://{path}"})
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "ingesting"
    job = wait(service, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert service.get(f"/v1/corpora/{r.json()['id']}").json()["num_docs"] == 50
    r = service.post("/v1/corpora", json={"name": "x", "uri": "file:///etc/passwd"})
    assert r.status_code == 403


def test_ops(service):
    assert service.get("/healthz").json()["status"] == "ok"
    assert service.get("/readyz").json()["checks"] == {"ray": True, "storage": True}
    m = service.get("/metrics").text
    assert "thresher_http_requests_total" in m and "thresher_jobs" in m
    spec = service.get("/openapi.json").json()
    for path in ("/v1/corpora", "/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/manifests/{manifest_id}/download", "/v1/query"):
        assert path in spec["paths"]


def test_pagination(service):
    for i in range(3):
        upload(service, corpus(5, seed=10 + i), name=f"p{i}")
    first = service.get("/v1/corpora", params={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = service.get("/v1/corpora", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert not {c["id"] for c in first["items"]} & {c["id"] for c in second["items"]}
    assert service.get("/v1/corpora", params={"cursor": "garbage"}).status_code == 400


def test_other_tenant_sees_nothing(service, pool_and_target):
    pool, target = pool_and_target
    job = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 2}})
    man = job["result"]["manifest_id"]
    for url in (f"/v1/corpora/{pool['id']}", f"/v1/jobs/{job['id']}", f"/v1/manifests/{man}",
                f"/v1/manifests/{man}/download", f"/v1/corpora/{pool['id']}/download"):
        r = service.get(url, headers=BOB)
        assert r.status_code == 404, url
        assert r.json()["error"]["code"] == "not_found"
    assert service.get("/v1/corpora", headers=BOB).json()["items"] == []
    r = service.post("/v1/query", json={"sql": "SELECT count(*) FROM m", "tables": {"m": man}}, headers=BOB)
    assert r.status_code == 404
    r = service.post("/v1/jobs", json={"kind": "random", "spec": {"pool": pool["id"], "select": {"count": 1}}}, headers=BOB)
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "spec.pool"
    assert service.get("/v1/corpora", headers={"Authorization": ""}).status_code == 401
    assert service.get("/v1/corpora", headers={"Authorization": "Bearer nope"}).status_code == 401
