"""The SQL sandbox refuses everything but reading the caller's own manifests."""
from __future__ import annotations

import os
import tempfile

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


# Every way to read the server's settings, paths or catalog: table functions (query() and
# query_table() run SQL of their own), catalog views under any name, settings functions, and
# WITH names that would shadow a view outside their scope.
@pytest.mark.parametrize("sql", [
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM query('SELECT * FROM duckdb_settings()')",
    "SELECT * FROM query_table('pg_settings')",
    "SELECT * FROM pg_catalog.pg_settings",
    "SELECT * FROM pg_settings",
    "SELECT setting FROM m, pg_settings",
    "SELECT * FROM m WHERE doc_id IN (SELECT name FROM pg_settings)",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM duckdb_tables",
    "SELECT * FROM main.duckdb_views",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM pragma_database_list",
    "SELECT * FROM duckdb_extensions()",
    "SELECT * FROM duckdb_temporary_files()",
    "SELECT * FROM duckdb_databases()",
    "SELECT * FROM (DESCRIBE pg_settings)",
    "SELECT * FROM (SHOW ALL TABLES)",
    "SELECT current_setting('home_directory')",
    "SELECT getvariable('x')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM parquet_metadata('{path}')",
    "SELECT * FROM '{path}'",
    "SELECT * FROM (WITH duckdb_settings AS (SELECT 1) SELECT 1), duckdb_settings",
    "SELECT * FROM (PIVOT (SELECT 1 AS a, 2 AS b) ON a USING first(b))",
])
def test_server_configuration_is_not_readable(service, manifests, sql):
    mine, _ = manifests
    path = service.app.state.svc.store.path("manifests", mine, "part-00000.parquet")
    r = q(service, sql.format(path=path), {"m": mine})
    assert 400 <= r.status_code < 500, (sql, r.text)
    settings = service.app.state.svc.settings
    for server_path in (os.path.abspath(settings.home), tempfile.gettempdir(), os.path.expanduser("~")):
        assert server_path not in r.text


@pytest.mark.parametrize("sql", [
    "WITH c AS (SELECT * FROM m) SELECT count(*) FROM c WHERE selected",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 9) SELECT 10 FROM t LIMIT 1",
    "SELECT count(*) FROM m, range(1) WHERE selected",
    "SELECT sum(x) FROM (SELECT unnest([4, 6]) AS x)",
    "SELECT count(*) FROM main.m WHERE selected",
])
def test_what_the_sandbox_allows(service, manifests, sql):
    mine, _ = manifests
    r = q(service, sql, {"m": mine})
    assert r.status_code == 200 and r.json()["rows"] == [[10]], (sql, r.text)
