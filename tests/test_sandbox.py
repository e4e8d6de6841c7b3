"""The SQL sandbox refuses everything but reading the caller's own manifests."""
from __future__ import annotations

import pytest

from tests.conftest import BOB
from tests.corpus_gen import corpus
from tests.helpers import run_ok, upload, wait


@pytest.fixture(scope="module")
def manifests(service):
    pool = upload(service, corpus(300, seed=7), name="sandbox-pool")
    mine = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 10}})["result"]["manifest_id"]
    bob_pool = service.post("/v1/corpora", params={"name": "bob", "format": "jsonl"}, headers=BOB,
                            content=b'{"id": "b1", "text": "secret"}\n').json()
    bob_job = service.post("/v1/jobs", headers=BOB, json={"kind": "random", "spec": {"pool": bob_pool["id"], "select": {"count": 1}}}).json()
    bobs = wait(service, bob_job["id"], headers=BOB)
    return mine, bobs["result"]["manifest_id"]


def q(service, sql, tables):
    return service.post("/v1/query", json={"sql": sql, "tables": tables})


def test_select_works(service, manifests):
    mine, _ = manifests
    r = q(service, "SELECT count(*) FILTER (WHERE selected) FROM m", {"m": mine})
    assert r.status_code == 200 and r.json()["rows"] == [[10]]
    r = service.post("/v1/query", json={"sql": "SELECT doc_id FROM m ORDER BY rank", "tables": {"m": mine}, "limit": 5})
    assert len(r.json()["rows"]) == 5 and r.json()["truncated"] is True


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('{path}')",
    "COPY (SELECT * FROM m) TO '/tmp/out.csv'",
    "ATTACH '/tmp/x.duckdb' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET memory_limit='100GB'",
    "SELECT * FROM glob('/etc/*')",
    "CREATE TABLE t AS SELECT 1",
    "SELECT 1; SELECT 2",
])
def test_refused(service, manifests, sql):
    mine, _ = manifests
    path = service.app.state.svc.store.path("manifests", mine, "part-00000.parquet")
    r = q(service, sql.format(path=path), {"m": mine})
    assert 400 <= r.status_code < 500, (sql, r.text)
    assert r.json()["error"]["message"]


def test_other_tenants_manifest_refused(service, manifests):
    mine, bobs = manifests
    r = q(service, "SELECT * FROM b", {"b": bobs})
    assert r.status_code == 404
    path = service.app.state.svc.store.path("manifests", bobs, "part-00000.parquet")
    r = q(service, f"SELECT * FROM read_parquet('{path}')", {"m": mine})
    assert r.status_code == 403


def test_bad_table_name(service, manifests):
    mine, _ = manifests
    r = q(service, "SELECT 1", {"m; DROP": mine})
    assert r.status_code == 422
