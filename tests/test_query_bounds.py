"""POST /v1/query is bounded while it runs: a query runs in a process of its own, so its memory is
never the service's; the result is refused as it grows past its byte limit; a query that nests too
deeply is a 422; error messages never show the server's paths."""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from contextlib import contextmanager

import psutil
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

MB = 1 << 20


@contextmanager
def peak_growth():
    """The most this process's resident memory grew above its size at the start, sampled every
    few milliseconds while the block runs."""
    proc, stop, peak = psutil.Process(), threading.Event(), {"rss": 0}
    start = proc.memory_info().rss

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            time.sleep(0.005)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    growth = {}
    try:
        yield growth
    finally:
        stop.set()
        sampler.join()
        growth["mb"] = (peak["rss"] - start) / MB


@contextmanager
def setting(service, name, value):
    settings = service.app.state.svc.settings
    old = getattr(settings, name)
    setattr(settings, name, value)
    try:
        yield
    finally:
        setattr(settings, name, old)


def q(service, sql, tables=None, **body):
    return service.post("/v1/query", json={"sql": sql, "tables": tables or {}, **body})


def test_result_bound_holds_while_the_result_is_produced(service):
    # The example (4 rows of 100 MB: the service grew by 1 GB before its 413), and a
    # result of 1.5 GB in 100,000 rows of 15 kB: both refused, the service's memory unmoved.
    with peak_growth() as growth:
        r = q(service, "SELECT repeat('x', 100000000) FROM range(4)")
        many = q(service, "SELECT repeat('x', 15000) AS s FROM range(100000)", limit=100000)
    for answer in (r, many):
        assert answer.status_code == 413, answer.text[:300]
        assert answer.json()["error"]["code"] == "result_too_large"
        assert answer.json()["error"]["details"]["limit_bytes"] == 32 * MB
    assert many.json()["error"]["details"]["rows_before_limit"] < 2300
    assert growth["mb"] < 300, growth
    assert q(service, "SELECT 1 AS one").json() == {"columns": [{"name": "one", "type": "INTEGER"}],
                                                     "rows": [[1]], "truncated": False}


def test_query_over_its_process_memory_is_stopped(service):
    # 15 rows of 100 MB sit in one DuckDB vector (1.5 GB) before the first row can be looked at:
    # that costs the query's process, stopped at its limit, not the service.
    with setting(service, "query_process_memory", "600MB"), peak_growth() as growth:
        r = q(service, "SELECT repeat('x', 100000000) || i AS s FROM range(15) t(i)")
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "query_too_large" and "600MB" in err["message"]
    assert growth["mb"] < 300, growth
    assert q(service, "SELECT 2").json()["rows"] == [[2]]


def test_query_past_its_time_is_stopped(service):
    t0 = time.monotonic()
    with setting(service, "query_timeout_s", 1.0):
        r = q(service, "SELECT count(*) FROM range(10000000000000)")
    assert r.status_code == 408 and r.json()["error"]["code"] == "query_timeout", r.text
    assert time.monotonic() - t0 < 10


def test_no_spill_directory_is_left_behind(service):
    temp = service.app.state.svc.settings.temp_dir
    before = set(os.listdir(temp)) if os.path.isdir(temp) else set()
    assert q(service, "SELECT repeat('x', 100000000) FROM range(4)").status_code == 413
    with setting(service, "query_timeout_s", 1.0):
        assert q(service, "SELECT count(*) FROM range(10000000000000)").status_code == 408
    assert set(os.listdir(temp)) <= before


def test_deep_expressions_are_a_422_and_the_service_carries_on(service):
    # 900 terms is within DuckDB's depth: it is answered (it was a 500, a RecursionError).
    r = q(service, "SELECT " + "+".join(["1"] * 900) + " AS n")
    assert r.status_code == 200 and r.json()["rows"] == [[900]], r.text[:300]
    for sql in ("SELECT " + "+".join(["1"] * 5000), "SELECT " + "(" * 3000 + "1" + ")" * 3000,
                "SELECT " + "(SELECT " * 2000 + "1" + ")" * 2000):
        r = q(service, sql)
        assert r.status_code == 422, r.text[:300]
        err = r.json()["error"]
        assert err["code"] == "validation_error" and "nests too deeply" in err["message"]
        assert err["details"]["field"] == "sql" and "SET" not in err["message"]
    assert q(service, "SELECT 3").json()["rows"] == [[3]]


def server_paths(service):
    settings = service.app.state.svc.settings
    return {"home": os.path.abspath(settings.home), "store": settings.store_root, "temp": settings.temp_dir,
            "system temp": tempfile.gettempdir(), "user home": os.path.expanduser("~")}


@pytest.mark.parametrize("which", ["home", "store", "temp", "system temp", "user home"])
def test_error_messages_leave_out_server_paths(service, which):
    path = server_paths(service)[which]
    r = q(service, f"SELECT '{path}/x'::INTEGER")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_sql", r.text
    assert path not in r.text and "<server>/x" in r.json()["error"]["message"]


def test_values_are_plain_json(service):
    r = q(service, "SELECT 'nan'::DOUBLE AS a, 'inf'::FLOAT AS b, DATE '2024-01-02' AS c, 1.5::DECIMAL(5,2) AS d, "
                   "MAP {'k': 2} AS e, 'ab'::BLOB AS f, TIMESTAMP '2024-01-01 10:00:00' AS g, [1, NULL] AS h, 1, 1")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[None, None, "2024-01-02", 1.5, {"k": 2}, "ab", "2024-01-01T10:00:00", [1, None], 1, 1]]
    assert [c["name"] for c in r.json()["columns"]][-2:] == ["1", "1_1"]


def test_query_reads_tables_on_an_object_store(s3_server, tmp_path):
    # The query's process gets the tables as pickled Arrow datasets, filesystem and all.
    from storage.query import run_query
    uri = s3_server("thresher-query")
    fs, base = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(f"{base}/part-0.parquet") as out:
        pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "score": [0.5, 1.5, 2.5]}), out)
    table = ds.dataset([f"{base}/part-0.parquet"], filesystem=fs, format="parquet")
    answer = json.loads(run_query("SELECT count(*), sum(score) FROM m", {"m": table}, temp_root=str(tmp_path)))
    assert answer["rows"] == [[3, 4.5]]
