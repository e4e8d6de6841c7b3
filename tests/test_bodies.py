"""Bodies bounded by what they inflate to, parsed off the service, downloads in constant memory,
names safe in headers (issue 32, items 7, 10, 13 and 18)."""
from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.fs import Store
from storage.ingest import IngestError, ingest
from tests.conftest import ALICE, make_settings
from tests.corpus_gen import corpus, jsonl
from tests.helpers import run_ok, upload

MB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


def parquet_bomb(path: Path, rows: int = 20, value_mb: int = 16, encoding: str = "dictionary",
                 column: str = "text", extra: dict | None = None) -> Path:
    """`rows` equal values of `value_mb` MB each, a file of a few KB: one dictionary entry, one
    DELTA_BYTE_ARRAY prefix repeated, or plain (where the footer tells the size)."""
    table = pa.table({column: pa.array(["x" * (value_mb * MB)] * rows), **(extra or {})})
    options = {"dictionary": {"dictionary_pagesize_limit": 1 << 30},
               "delta": {"use_dictionary": False, "column_encoding": {column: "DELTA_BYTE_ARRAY"}},
               "plain": {"use_dictionary": False}}[encoding]
    pq.write_table(table, path, compression="zstd", **options)
    return path


def ingest_in_subprocess(path: Path, **limits) -> dict:
    """Ingest `path` in a fresh process: its outcome and its peak RSS over its RSS before."""
    # VmHWM, this process's own peak (ru_maxrss also counts the parent's peak before the exec).
    code = f"""
import json, re, tempfile, psutil
from storage.fs import Store
from storage.ingest import IngestError, ingest
before = psutil.Process().memory_info().rss
out = {{}}
with tempfile.TemporaryDirectory() as d:
    try:
        out["docs"] = ingest({str(path)!r}, filename="x.parquet", store=Store(d), dest=("c",), **{limits!r}).num_docs
    except IngestError as e:
        out.update(code=e.code, message=e.message, details=e.details)
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
out["peak_over_start_mb"] = (peak - before) / 2**20
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- item 7: Parquet inflates; the decompressed bound and the batch size hold ------------------------

@pytest.mark.parametrize("encoding", ["dictionary", "delta"])
def test_parquet_bomb_is_refused_at_the_decompressed_bound_in_bounded_memory(tmp_path, encoding):
    path = parquet_bomb(tmp_path / "bomb.parquet", encoding=encoding)   # 320 MB of text in a few KB
    assert path.stat().st_size < 10_000
    out = ingest_in_subprocess(path, max_decompressed_bytes=64 * MB, max_doc_bytes=64 * MB)
    assert out.get("code") == "decompressed_too_large", out
    assert "THRESHER_MAX_DECOMPRESSED_BYTES" in out["message"] and out["details"]["limit_bytes"] == 64 * MB
    assert out["peak_over_start_mb"] < 200, out      # a batch of 4096 rows decoded all 320 MB at once


def test_parquet_bomb_within_the_bounds_is_ingested_a_row_at_a_time(tmp_path):
    out = ingest_in_subprocess(parquet_bomb(tmp_path / "bomb.parquet"), max_decompressed_bytes=1 << 34,
                               max_doc_bytes=64 * MB)
    assert out.get("docs") == 20, out
    assert out["peak_over_start_mb"] < 250, out


def test_parquet_footer_refuses_before_decoding(tmp_path):
    path = parquet_bomb(tmp_path / "plain.parquet", encoding="plain")   # the footer says 320 MB
    t0 = time.perf_counter()
    with pytest.raises(IngestError) as e:
        ingest(path, filename="plain.parquet", store=Store(str(tmp_path / "store")), dest=("c",),
               max_decompressed_bytes=64 * MB)
    assert e.value.code == "decompressed_too_large" and "decompress to 335544" in e.value.message
    assert time.perf_counter() - t0 < 2


def test_parquet_document_too_large_stops_at_the_first(tmp_path):
    path = parquet_bomb(tmp_path / "bomb.parquet", extra={"id": [str(i) for i in range(20)]})
    out = ingest_in_subprocess(path, max_doc_bytes=8 * MB)
    assert out.get("code") == "document_too_large" and out["details"]["line"] == 1, out
    assert "THRESHER_MAX_DOC_BYTES" in out["message"]
    assert out["peak_over_start_mb"] < 150, out


def test_bounded_batches_of_a_stored_file(tmp_path):
    from storage.encode import bounded_batches
    pq.write_table(pa.table({"text": [f"{i:05d}" * 1000 for i in range(8192)]}), tmp_path / "s.parquet")
    sizes = [b.nbytes for b in bounded_batches(pq.ParquetFile(tmp_path / "s.parquet"))]
    assert sum(b for b in sizes) >= 8192 * 5000 and max(sizes) < 3 * MB


# -- item 18: blank lines are skipped in bulk --------------------------------------------------------

def newline_bomb(path: Path, head: bytes, tail: bytes, mb: int) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(head)
        for _ in range(mb // 16):
            f.write(b"\n" * (16 * MB))
        f.write(tail)
    return path


def test_newline_bomb_jsonl_is_skipped_in_seconds(tmp_path):
    path = newline_bomb(tmp_path / "nl.jsonl.gz", b'{"text": "first"}\n', b'{"text": "last"}\n', 256)
    assert path.stat().st_size < 2 * MB
    t0 = time.perf_counter()
    stats = ingest(path, filename="nl.jsonl.gz", store=Store(str(tmp_path / "store")), dest=("c",))
    assert stats.num_docs == 2
    assert time.perf_counter() - t0 < 10           # was ~35 s (139 s for 1 GiB)


def test_newline_bomb_jsonl_names_the_bad_line_fast(tmp_path):
    path = newline_bomb(tmp_path / "nl.jsonl.gz", b'{"text": "first"}\n', b"  null\n", 192)
    t0 = time.perf_counter()
    with pytest.raises(IngestError) as e:
        ingest(path, filename="nl.jsonl.gz", store=Store(str(tmp_path / "store")), dest=("c",))
    assert e.value.code == "malformed_json" and e.value.details["line"] == 192 * MB + 2
    assert time.perf_counter() - t0 < 8            # was ~16 s


def test_newline_bomb_csv_diagnosis_is_fast(tmp_path):
    path = newline_bomb(tmp_path / "nl.csv.gz", b"text,id\na,1\n", b"b,2,3\n", 64)
    t0 = time.perf_counter()
    with pytest.raises(IngestError) as e:
        ingest(path, filename="nl.csv.gz", store=Store(str(tmp_path / "store")), dest=("c",))
    assert e.value.code == "malformed_csv" and e.value.details["line"] == 64 * MB + 3, e.value
    assert time.perf_counter() - t0 < 10           # was ~23 s


def test_blank_lines_count_toward_the_decompressed_bound(tmp_path):
    path = newline_bomb(tmp_path / "nl.jsonl.gz", b'{"text": "first"}\n', b'{"text": "last"}\n', 64)
    with pytest.raises(IngestError) as e:
        ingest(path, filename="nl.jsonl.gz", store=Store(str(tmp_path / "store")), dest=("c",),
               max_decompressed_bytes=16 * MB)
    assert e.value.code == "decompressed_too_large"


def test_blank_and_padded_lines_keep_their_numbers(tmp_path):
    body = b'\n \r\n{"id": "a", "text": "x"}\r\n\t\n  {"id": "b", "text": "y"}\n\x0c\n{"id": "a", "text": "z"}\n'
    (tmp_path / "d.jsonl").write_bytes(body)
    with pytest.raises(IngestError) as e:
        ingest(tmp_path / "d.jsonl", filename="d.jsonl", store=Store(str(tmp_path / "store")), dest=("c",))
    assert e.value.code == "duplicate_id" and e.value.details.get("lines") == [3, 7], e.value.details


# -- the service: loss bodies, parse slots, names ----------------------------------------------------

@pytest.fixture(scope="module")
def svc(tmp_path_factory, ray_address):
    from fastapi.testclient import TestClient
    from service.app import create_app
    settings = make_settings(tmp_path_factory.mktemp("bodies-home"), ray_address, max_parse_tasks=1,
                             parse_wait_s=0.5, max_decompressed_bytes=64 * MB)
    with TestClient(create_app(settings), headers=ALICE, client=("127.0.0.1", 50000)) as client:
        yield client


@pytest.fixture(scope="module")
def run(svc):
    pool = upload(svc, corpus(50, seed=32), name="bodies-pool")
    job = run_ok(svc, "curriculum", {"corpus": pool["id"], "method": "seta", "epochs": 2, "prune_ratio": 0.2})
    run_id = job["result"]["curriculum_id"]
    plan = svc.get(f"/v1/curricula/{run_id}/epochs/0").json()
    return run_id, plan["doc_ids"]


class PeakRss:
    """This process's peak RSS over its RSS at the start, sampled every 10 ms."""

    def __enter__(self):
        self.proc, self.stop = psutil.Process(), threading.Event()
        self.start = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.over_mb = (self.peak - self.start) / MB


def test_parquet_loss_bomb_is_parsed_off_the_service(svc, run, tmp_path):
    run_id, _ = run
    before = svc.get(f"/v1/curricula/{run_id}").json()
    body = parquet_bomb(tmp_path / "losses.parquet", column="doc_id", extra={"loss": [1.0] * 20}).read_bytes()
    with PeakRss() as rss:
        r = svc.post(f"/v1/curricula/{run_id}/losses", params={"epoch": 0}, content=body,
                     headers={"content-type": "application/vnd.apache.parquet"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_doc_id", r.text
    assert rss.over_mb < 100, rss.over_mb          # read in the service: +640 MB
    assert svc.get(f"/v1/curricula/{run_id}").json() == before


def test_loss_body_is_bounded_by_what_the_run_can_take(svc, run):
    run_id, ids = run
    before = svc.get(f"/v1/curricula/{run_id}").json()
    body = json.dumps({"epoch": 0, "losses": [{"doc_id": ids[i % len(ids)], "loss": 1.0} for i in range(40_000)]})
    r = svc.post(f"/v1/curricula/{run_id}/losses", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    assert "a run of 50 documents" in r.json()["error"]["message"]
    assert svc.get(f"/v1/curricula/{run_id}").json() == before
    r = svc.post(f"/v1/curricula/{run_id}/losses", json={"epoch": 0, "losses": [{"doc_id": ids[0], "loss": "x"}]})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "losses.0.loss", r.text
    ok = svc.post(f"/v1/curricula/{run_id}/losses", json={"epoch": 0, "losses": [
        {"doc_id": d, "loss": 1.0 + i % 3} for i, d in enumerate(ids)]})
    assert ok.status_code == 200 and ok.json()["losses_posted"] == len(ids), ok.text


def test_upload_waits_for_a_parse_slot_then_answers_503(svc):
    s = svc.app.state.svc

    async def take():
        from service.bodies import parse_slot
        held = parse_slot(s)
        await held.__aenter__()
        return held

    held = svc.portal.call(take)      # every slot (THRESHER_MAX_PARSE_TASKS=1) busy
    try:
        t0 = time.perf_counter()
        r = svc.post("/v1/corpora", params={"name": "waits", "format": "jsonl"}, content=jsonl(corpus(3, seed=1)))
        assert r.status_code == 503 and r.json()["error"]["code"] == "busy", r.text
        assert r.headers["retry-after"] == "5" and "THRESHER_MAX_PARSE_TASKS" in r.json()["error"]["message"]
        assert 0.4 < time.perf_counter() - t0 < 10
    finally:
        svc.portal.call(held.__aexit__, None, None, None)
    assert not [c for c in svc.get("/v1/corpora").json()["items"] if c["name"] == "waits"]
    upload(svc, corpus(3, seed=1), name="waits")


@pytest.mark.parametrize("name", ["two\r\nlines", "nul\x00byte", "bell\x07", "sep\u2028line"])
def test_names_with_control_characters_are_422(svc, name):
    r = svc.post("/v1/corpora", params={"name": name, "format": "jsonl"}, content=jsonl(corpus(3, seed=2)))
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "name", r.text
    r = svc.post("/v1/corpora", json={"name": name, "uri": "/nowhere"})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "name", r.text
    r = svc.post("/v1/jobs", json={"kind": "random", "name": name, "spec": {"pool": "cor_x", "select": {"count": 1}}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "name", r.text


def test_download_names_any_name_safely(svc):
    name = "корпус-名前 \"q\""
    cor = upload(svc, corpus(3, seed=3), name=name)
    for stored, fallback in ((name, "______-__ _q_"), ("old\r\nname\x00", "old__name_")):
        svc.app.state.svc.catalog.update("corpora", cor["id"], name=stored)   # as if stored before the check
        for fmt in ("jsonl", "csv", "parquet"):
            r = svc.get(f"/v1/corpora/{cor['id']}/download", params={"format": fmt})
            assert r.status_code == 200, r.text
            disposition = r.headers["content-disposition"]
            assert disposition.startswith(f'attachment; filename="{fallback}.{fmt}"; filename*=UTF-8\'\''), disposition
            clean = stored.replace("\r", "_").replace("\n", "_").replace("\x00", "_").replace('"', "_")
            assert disposition.endswith(quote(f"{clean}.{fmt}", safe="")), disposition
        assert len(pq.read_table(io.BytesIO(r.content))) == 3
