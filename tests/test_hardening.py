"""Hostile and broken input that once crashed or misled the service (issue 15): each answers a
clear 4xx (or 507), changes nothing, and leaves nothing behind."""
from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ALICE, make_settings
from tests.corpus_gen import corpus, jsonl
from tests.helpers import run_ok, tmpfs, upload


@pytest.fixture(scope="module")
def pool(service):
    return upload(service, corpus(50, seed=15), name="hardening-pool")


def job_count(service) -> int:
    return len(service.get("/v1/jobs", params={"limit": 1000}).json()["items"])


# -- item 4: one Idempotency-Key, ten concurrent submissions, one job ------------------------------

def test_concurrent_idempotent_submissions_get_one_job(service, pool):
    body = {"kind": "random", "name": "race", "spec": {"pool": pool["id"], "select": {"count": 5}}}
    before = job_count(service)

    def post(_):
        return service.post("/v1/jobs", json=body, headers={**ALICE, "Idempotency-Key": "race-1"})
    with ThreadPoolExecutor(10) as ex:
        answers = list(ex.map(post, range(10)))
    assert [r.status_code for r in answers] == [202] * 10, [r.text for r in answers if r.status_code != 202]
    assert len({r.json()["id"] for r in answers}) == 1
    assert job_count(service) == before + 1
    other = {**body, "name": "race, another body"}
    r = service.post("/v1/jobs", json=other, headers={**ALICE, "Idempotency-Key": "race-1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"


# -- item 6: strict specs ------------------------------------------------------------------------

@pytest.mark.parametrize("spec, field", [
    ({"select": {"count": 3}, "seed": -1}, "spec.seed"),
    ({"select": {"count": 10**400}, "mode": "per_shard"}, "spec.select.count"),
    ({"select": {"count": 10**13}}, "spec.select.count"),
    ({"select": {"fraction": "0.1"}}, "spec.select.fraction"),
    ({"select": {"count": True}}, "spec.select.count"),
    ({"select": {"count": 3}, "seed": "7"}, "spec.seed"),
])
def test_specs_are_strict(service, pool, spec, field):
    before = job_count(service)
    r = service.post("/v1/jobs", json={"kind": "random", "spec": {"pool": pool["id"], **spec}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == field, r.json()
    assert job_count(service) == before


def test_non_finite_and_oversized_values_are_refused(service, pool):
    raw = '{"kind": "dsir", "spec": {"pool": "%s", "target": "%s", "select": {"tau": Infinity}}}' % (
        pool["id"], pool["id"])
    r = service.post("/v1/jobs", content=raw, headers={**ALICE, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "spec.select.tau", r.text
    r = service.post("/v1/jobs", json={"kind": "random", "name": "n" * 1_000_000,
                                       "spec": {"pool": pool["id"], "select": {"count": 1}}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "name", r.text[:300]
    assert len(r.content) < 10_000  # the refusal does not echo the megabyte back
    r = service.post("/v1/jobs", json={"kind": "random", "spec": {"pool": "c" * 5000, "select": {"count": 1}}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "spec.pool"


def test_integers_still_fill_float_fields(service, pool):
    job = run_ok(service, "random", {"pool": pool["id"], "select": {"fraction": 1}, "seed": 2})
    assert job["spec"]["select"]["fraction"] == 1.0
    assert job["result"]["summary"]["num_selected"] == 50


# -- item 5: 500s that must be 4xx ---------------------------------------------------------------

def test_text_field_equal_to_id_field_is_422(service):
    r = service.post("/v1/corpora", params={"name": "same", "format": "jsonl", "text_field": "id",
                                            "id_field": "id"}, content=jsonl(corpus(3)))
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "id_field", r.text
    target = service.allowed_root / "same-fields.jsonl"
    target.write_bytes(jsonl(corpus(3)))
    r = service.post("/v1/corpora", json={"name": "same", "uri": str(target), "text_field": "body",
                                          "id_field": "body"})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "id_field", r.text


def test_nul_byte_in_a_path_is_422(service):
    r = service.post("/v1/models", json={"name": "m", "path": f"{service.allowed_root}/ckpt\x00/x"})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "path", r.text
    r = service.post("/v1/corpora", json={"name": "c", "uri": f"{service.allowed_root}/a\x00.jsonl"})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "uri", r.text


def test_exporting_an_empty_selection_is_422(service, pool):
    job = run_ok(service, "random", {"pool": pool["id"], "select": {"fraction": 0.001}})
    man = job["result"]["manifest_id"]
    assert service.get(f"/v1/manifests/{man}").json()["num_selected"] == 0
    corpora_before = len(service.get("/v1/corpora", params={"limit": 1000}).json()["items"])
    r = service.post(f"/v1/manifests/{man}/export", json={})
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_export", r.text
    assert len(service.get("/v1/corpora", params={"limit": 1000}).json()["items"]) == corpora_before
    r = service.post(f"/v1/manifests/{man}/export", json={"selected_only": False})
    assert r.status_code == 202  # all 50 rows: a real corpus


@pytest.fixture
def tiny_disk(tmp_path):
    with tmpfs(tmp_path / "tiny", "256k") as mnt:
        yield mnt


def test_full_disk_is_507_and_leaves_nothing(tmp_path, ray_address, tiny_disk):
    from fastapi.testclient import TestClient
    from service.app import create_app
    settings = make_settings(tmp_path / "home", ray_address, storage_uri=str(tiny_disk / "store"),
                             max_upload_bytes=50_000_000)
    rows = [{"id": f"r{i}", "text": os.urandom(600).hex()} for i in range(1500)]  # ~1.8 MB, incompressible
    with TestClient(create_app(settings), headers=ALICE, client=("127.0.0.1", 50001)) as client:
        r = client.post("/v1/corpora", params={"name": "big", "format": "jsonl"}, content=jsonl(rows))
        assert r.status_code == 507, r.text[:500]
        assert r.json()["error"]["code"] == "insufficient_storage"
        assert client.get("/v1/corpora").json()["items"] == []
        left = [os.path.join(d, f) for d, _, files in os.walk(tiny_disk) for f in files]
        assert left == [], left   # uploads are spooled into the store: that is checked here too
        assert client.get("/healthz").status_code == 200  # and the service is still up


# -- item 3: query results are bounded -----------------------------------------------------------

def test_huge_query_result_is_refused(service):
    r = service.post("/v1/query", json={"sql": "SELECT repeat('x', 5000) AS s FROM range(100000)",
                                        "tables": {}, "limit": 100000})
    assert r.status_code == 413, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "result_too_large" and err["details"]["limit_bytes"] == 32 * 1024**2
    assert len(r.content) < 10_000
    small = service.post("/v1/query", json={"sql": "SELECT repeat('x', 50) AS s FROM range(100)", "tables": {}})
    assert small.status_code == 200 and len(small.json()["rows"]) == 100


def test_query_spills_under_home(service, tmp_path):
    from storage.query import run_query
    scratch = tmp_path / "scratch"
    # A sort of ~60 MB under a 40 MB memory limit must spill: it does so under the given root,
    # bounded, and the directory is gone afterwards.
    sql = "SELECT count(*) FROM (SELECT repeat(i::VARCHAR, 10) AS s FROM range(1000000) t(i) ORDER BY s)"
    bounds = dict(memory_limit="40MB", temp_root=str(scratch), timeout_s=120, threads=1)
    assert json.loads(run_query(sql, {}, max_temp_size="2GB", **bounds))["rows"] == [[1000000]]
    assert scratch.is_dir() and list(scratch.iterdir()) == []
    with pytest.raises(Exception) as e:
        run_query(sql, {}, max_temp_size="1MB", **bounds)
    assert getattr(e.value, "code", None) == "query_too_large", e.value
    assert str(scratch) not in str(e.value)


# -- item 10: /metrics and server paths ----------------------------------------------------------

@pytest.mark.parametrize("sql", ["SELECT * FROM duckdb_settings()", "SELECT current_setting('temp_directory')",
                                 "SELECT * FROM pragma_database_list", "SELECT * FROM duckdb_temporary_files()",
                                 "SELECT 1 FROM (SELECT * FROM duckdb_extensions()) WHERE true"])
def test_sandbox_hides_server_configuration(service, sql):
    r = service.post("/v1/query", json={"sql": sql, "tables": {}})
    assert r.status_code == 403, r.text
    assert str(service.app.state.svc.settings.home) not in r.text


def test_metrics_is_loopback_only_or_needs_its_token(service):
    from fastapi.testclient import TestClient
    remote = TestClient(service.app, client=("203.0.113.7", 4000))
    r = remote.get("/metrics")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "thresher_jobs" in service.get("/metrics").text  # loopback
    settings = service.app.state.svc.settings
    settings.metrics_token = "scrape-secret"
    try:
        assert remote.get("/metrics").status_code == 401
        assert service.get("/metrics").status_code == 401  # an API key is not the scrape token
        r = remote.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "thresher_jobs" in r.text
    finally:
        settings.metrics_token = None


# -- item 12: an error keeps the connection ------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unhandled_error_answers_the_envelope_and_keeps_the_connection():
    import uvicorn
    from fastapi import FastAPI

    from service import errors
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    @app.get("/full")
    def full():
        raise OSError(28, "No space left on device")

    @app.get("/fine")
    def fine():
        return {"ok": True}
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for path, status, code in (("/boom", 500, "internal_error"), ("/full", 507, "insufficient_storage")):
            conn.request("GET", path)
            r = conn.getresponse()
            body = json.loads(r.read())
            assert r.status == status and body["error"]["code"] == code
            assert (r.getheader("connection") or "").lower() != "close"
            sock = conn.sock
            conn.request("GET", "/fine")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read()) == {"ok": True}
            assert conn.sock is sock  # the same connection answered
        conn.close()
    finally:
        server.should_exit = True
        th.join(10)


# -- item 8: the startup janitor -----------------------------------------------------------------

def test_startup_janitor_removes_only_unreferenced_leftovers(tmp_path, ray_address):
    from fastapi.testclient import TestClient
    from service.app import create_app
    from storage import layout
    from storage.fs import TMP_PREFIX, Store
    home = tmp_path / "home"
    settings = make_settings(home, ray_address)
    with TestClient(create_app(settings), headers=ALICE, client=("127.0.0.1", 50002)) as client:
        kept = upload(client, corpus(30, seed=3), name="kept")
    store = Store(settings.store_root)
    orphan = ("cor_orphan0000000000000",)
    store.write_bytes(b"half an ingest", *layout.corpus_shard(orphan[0], 0))
    store.write_bytes(b"spool", *layout.uploads(), "upload-1")
    store.write_bytes(b"probe", *layout.probe("abc"))
    shard = store.path(*layout.corpus_shard(kept["id"], 0))
    tmp_file = os.path.join(os.path.dirname(shard), f"{TMP_PREFIX}dead-shard-00001.parquet")
    with open(tmp_file, "wb") as f:
        f.write(b"partial")
    (home / "uploads").mkdir(exist_ok=True)
    (home / "uploads" / "tmpabc").write_bytes(b"spooled")
    (home / "tmp" / "duckdb-x").mkdir(parents=True)
    past = time.time() - 60
    for d, dirs, files in os.walk(tmp_path):
        for name in dirs + files:
            os.utime(os.path.join(d, name), (past, past))

    with TestClient(create_app(settings), headers=ALICE, client=("127.0.0.1", 50002)) as client:
        assert not store.exists(*layout.corpus(orphan[0]))
        assert store.entries(*layout.uploads()) == [] and store.entries(*layout.probes()) == []
        assert not os.path.exists(tmp_file)
        assert os.listdir(home / "uploads") == [] and os.listdir(home / "tmp") == []
        assert os.path.exists(shard)  # the catalog's corpus is untouched
        got = client.get(f"/v1/corpora/{kept['id']}/download", params={"format": "jsonl"})
        assert got.status_code == 200 and len(got.text.splitlines()) == 30


def test_job_errors_do_not_show_server_paths(service):
    from storage import layout
    from tests.helpers import wait
    svc = service.app.state.svc
    pool = upload(service, corpus(30, seed=5), name="vanishing")
    with open(svc.store.path(*layout.corpus_shard(pool["id"], 0)), "wb") as f:
        f.write(b"not parquet at all")  # a damaged shard: the job must fail, naming the file
    job = service.post("/v1/jobs", json={"kind": "random", "spec": {"pool": pool["id"], "select": {"count": 3}}}).json()
    job = wait(service, job["id"])
    assert job["state"] == "failed", job
    assert svc.store.base not in job["error"]["message"] and str(svc.settings.home) not in job["error"]["message"]
    assert "<server>" in job["error"]["message"], job["error"]
