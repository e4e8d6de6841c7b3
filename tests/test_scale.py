"""Scale-out, for real: corpora registered from many files of an S3-compatible store (moto's server,
spoken to by pyarrow's real S3 client), Thresher's own storage on that store too, ingestion in
parallel units (files and byte ranges) that resume after a restart, and a multi-node Ray cluster."""
from __future__ import annotations

import io
import os
import signal
import time

import httpx
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from storage import layout
from storage.fs import Store
from tests.conftest import ALICE, make_settings
from tests.corpus_gen import compress, corpus, csv_bytes, jsonl, parquet_bytes
from tests.helpers import run_ok, upload, wait
from tests.net import free_port, start_service_process

FORMATS = [("jsonl", ""), ("jsonl", "gz"), ("jsonl", "zst"), ("parquet", ""), ("csv", ""), ("csv", "gz")]


def encoded(rows: list[dict], fmt: str, compression: str) -> bytes:
    data = {"jsonl": jsonl, "csv": csv_bytes}.get(fmt, lambda r: parquet_bytes(pa.Table.from_pylist(r)))(rows)
    return compress(data, compression)


def write_files(fs, base: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        with fs.open_output_stream(f"{base}/{name}", compression=None) as f:  # bytes as given
            f.write(data)


def many_files(n_files: int, docs_per_file: int, seed: int = 0, prefix: str = "f") -> tuple[dict, list[dict]]:
    """n_files files in every format and compression, every document once."""
    files, everything = {}, []
    for i in range(n_files):
        rows = corpus(docs_per_file, seed=seed + i, prefix=f"{prefix}{i}-")
        fmt, comp = FORMATS[i % len(FORMATS)]
        files[f"part-{i:03d}.{fmt}" + (f".{comp}" if comp else "")] = encoded(rows, fmt, comp)
        everything += rows
    return files, everything


def manifest_table(client, manifest_id: str) -> pa.Table:
    r = client.get(f"/v1/manifests/{manifest_id}/download", params={"format": "parquet"})
    assert r.status_code == 200, r.text
    return pq.read_table(io.BytesIO(r.content))


def assert_exactly_once(table: pa.Table, ids: set) -> None:
    doc_ids = table["doc_id"].to_pylist()
    assert len(doc_ids) == len(set(doc_ids)) == len(ids) and set(doc_ids) == ids


@pytest.fixture(scope="module")
def s3_service(tmp_path_factory, ray_address, s3_server):
    """The service with its own storage on the S3 server, allowed to read the bucket's data/."""
    from fastapi.testclient import TestClient
    from service.app import create_app
    store_uri = s3_server("thresher-store").replace("?", "/store?", 1)
    data_uri = s3_server("thresher-data")
    settings = make_settings(tmp_path_factory.mktemp("home"), ray_address, storage_uri=store_uri,
                             allowed_roots=[data_uri.replace("?", "/data/?", 1)], split_bytes=8192)
    with TestClient(create_app(settings), headers=ALICE) as client:
        client.data_fs, _ = pafs.FileSystem.from_uri(data_uri)
        client.options = data_uri.split("?", 1)[1]
        client.store = client.app.state.svc.store
        yield client


def register(client, name: str, uri: str, **fields):
    return client.post("/v1/corpora", json={"name": name, "uri": uri, **fields})


def test_many_files_on_s3_end_to_end(s3_service):
    client = s3_service
    files, rows = many_files(24, 40)
    big = corpus(400, seed=99, prefix="big-")          # ~40 KB uncompressed: five byte ranges of 8 KiB
    files["zz-big.jsonl"] = jsonl(big)
    write_files(client.data_fs, "thresher-data/data/pool", files)
    r = register(client, "pool", f"s3://thresher-data/data/pool/*?{client.options}")
    assert r.status_code == 202, r.text
    pool = r.json()
    job = wait(client, pool["job_id"], timeout=240)
    assert job["state"] == "succeeded", job
    assert job["result"]["summary"]["files"] == 25 and job["result"]["summary"]["units"] > 25
    pool = client.get(f"/v1/corpora/{pool['id']}").json()
    ids = {d["id"] for d in rows + big}
    assert pool["state"] == "ready" and pool["num_docs"] == len(ids)
    # Thresher's own files are in the bucket, not on this machine's disk.
    assert client.store.scheme == "s3" and layout.corpus_shards(client.store, pool["id"])

    target = upload(client, corpus(60, seed=7, domains=["finance"], prefix="t"), name="target")
    dsir = run_ok(client, "dsir", {"pool": pool["id"], "target": target["id"], "select": {"fraction": 0.1}})
    man = dsir["result"]["manifest_id"]
    table = manifest_table(client, man)
    assert_exactly_once(table, ids)
    # The selection streams into training straight from the bucket.
    from thresher.data import SelectionDataset
    streamed = [d["doc_id"] for d in SelectionDataset(man, storage=client.store.root, seed=3)]
    selected = set(table.filter(table["selected"])["doc_id"].to_pylist())
    assert len(streamed) == len(set(streamed)) == len(selected) and set(streamed) == selected

    color = run_ok(client, "color_filter", {
        "pool": pool["id"], "target": target["id"], "select": {"fraction": 0.1},
        "prior": {"train": {"tokens": 20_000, "vocab_size": 512, "batch_size": 8, "seq_len": 32}},
        "conditional": {"finetune": {"epochs": 1}}}, timeout=600)
    assert_exactly_once(manifest_table(client, color["result"]["manifest_id"]), ids)

    q = client.post("/v1/query", json={"sql": "SELECT source, count(*) AS n FROM m WHERE selected GROUP BY 1",
                                       "tables": {"m": man}})
    assert q.status_code == 200, q.text
    assert sum(row[1] for row in q.json()["rows"]) == dsir["result"]["summary"]["num_selected"]

    r = client.post(f"/v1/manifests/{man}/export", json={"name": "picked"})
    assert r.status_code == 202, r.text
    export = wait(client, r.json()["id"])
    assert export["state"] == "succeeded", export
    exported = client.get(f"/v1/corpora/{export['result']['corpus_id']}").json()
    assert exported["num_docs"] == dsir["result"]["summary"]["num_selected"]
    body = client.get(f"/v1/corpora/{exported['id']}/download", params={"format": "jsonl"})
    assert body.status_code == 200 and body.text.count("\n") == exported["num_docs"]


def test_duplicate_ids_across_files_fail_the_corpus_and_leave_nothing(s3_service):
    client = s3_service
    rows = corpus(30, seed=3, prefix="dup")
    write_files(client.data_fs, "thresher-data/data/dups", {
        "a.jsonl": jsonl(rows[:20]), "b.jsonl.gz": compress(jsonl(rows[15:]), "gz")})
    r = register(client, "dups", f"s3://thresher-data/data/dups/?{client.options}")
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["job_id"])
    assert job["state"] == "failed" and job["error"]["code"] == "duplicate_id"
    assert "a.jsonl" in job["error"]["message"] and "b.jsonl.gz" in job["error"]["message"]
    corpus_rec = client.get(f"/v1/corpora/{r.json()['id']}").json()
    assert corpus_rec["state"] == "failed"
    assert client.store.list(*layout.corpus(corpus_rec["id"])) == []


def test_registration_errors(s3_service, tmp_path):
    client = s3_service
    r = register(client, "none", f"s3://thresher-data/data/nothing-*.jsonl?{client.options}")
    assert r.status_code == 404 and "nothing-*.jsonl" in r.json()["error"]["message"]
    r = register(client, "outside", f"s3://thresher-data/*/x.jsonl?{client.options}")
    assert r.status_code == 403


def test_glob_reaching_outside_the_allowed_roots_is_refused(service, tmp_path):
    root = service.allowed_root
    (root / "ok").mkdir()
    (root / "ok" / "a.jsonl").write_bytes(jsonl(corpus(5, seed=1)))
    os.symlink(tmp_path, root / "ok" / "elsewhere")
    (tmp_path / "b.jsonl").write_bytes(jsonl(corpus(5, seed=2, prefix="e")))
    r = service.post("/v1/corpora", json={"name": "x", "uri": str(root / "ok" / "**" / "*.jsonl")})
    # The listing does not enter a directory that leads out of the roots (nor show what is in it).
    assert r.status_code == 403 and r.json()["error"]["details"]["file"] == "elsewhere"
    r = service.post("/v1/corpora", json={"name": "x", "uri": str(root.parent / "*" / "ok" / "*.jsonl")})
    assert r.status_code == 403
    r = service.post("/v1/corpora", json={"name": "x", "uri": str(root / "ok" / "*.jsonl")})
    assert r.status_code == 202
    assert wait(service, r.json()["job_id"])["state"] == "succeeded"


def test_killed_registration_resumes_without_reingesting_finished_files(tmp_path, ray_address):
    data = tmp_path / "data"
    data.mkdir()
    files, rows = many_files(40, 2000)
    for name, blob in files.items():
        (data / name).write_bytes(blob)
    port = free_port()
    env = {"THRESHER_ALLOWED_ROOTS": str(data), "THRESHER_MAX_INFLIGHT": "1"}
    proc = start_service_process(tmp_path / "home", port, ray_address, **env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ALICE, timeout=30)
    store = Store(str(tmp_path / "home" / "store"))
    try:
        r = client.post("/v1/corpora", json={"name": "many", "uri": str(data)})
        assert r.status_code == 202, r.text
        cid, job_id = r.json()["id"], r.json()["job_id"]
        units = [layout.ingested_unit(job_id, (i, 0)) for i in range(40)]
        # The store, not the job's progress, says when to kill: progress is published a little
        # behind, and on a busy machine the whole registration can finish within that lag.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(store.exists(*p) for p in units) < 3:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        finished = [p for p in units if store.exists(*p)]
        assert 3 <= len(finished) < 40
        done_units = {tuple(int(x) for x in p[-1][5:-5].split("-")) for p in finished}
        before = {p: store.fs.get_file_info(store.path(*p)).mtime for _, p in layout.corpus_shards(store, cid)
                  if layout.unit_of(p) in done_units}
        assert before
        time.sleep(1.1)   # a rewrite would show in the modification time
        proc = start_service_process(tmp_path / "home", port, ray_address, **env)
        job = wait(client, job_id, timeout=180)
        assert job["state"] == "succeeded", job
        after = {p: store.fs.get_file_info(store.path(*p)).mtime for p in before}
        assert after == before
        rec = client.get(f"/v1/corpora/{cid}").json()
        assert rec["state"] == "ready" and rec["num_docs"] == len(rows)
        got = client.get(f"/v1/corpora/{cid}/download", params={"format": "jsonl"}).text.splitlines()
        assert len(got) == len(rows)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_commit_protocol_on_an_object_store(s3_service):
    """No rename on S3: a file is written under its final name and published whole when closed;
    one whose writer fails is removed, so a reader never finds half of it."""
    store = s3_service.store
    table = pa.table({"x": list(range(1000))})
    with pytest.raises(RuntimeError):
        with store.parquet_writer(table.schema, "protocol", "part-00000.parquet") as w:
            w.write(table)
            raise RuntimeError("the task died")
    assert not store.exists("protocol", "part-00000.parquet")
    with pytest.raises(RuntimeError):
        with store.open_output("protocol", "blob") as out:
            out.write(b"half")
            raise RuntimeError("the task died")
    assert not store.exists("protocol", "blob")
    store.write_parquet(table, "protocol", "part-00000.parquet")
    store.write_parquet(table.slice(0, 10), "protocol", "part-00000.parquet")   # a retry overwrites
    assert store.read_parquet("protocol", "part-00000.parquet").num_rows == 10


def test_shard_compression_setting_reaches_uploads_registrations_and_exports(tmp_path_factory, ray_address):
    """THRESHER_SHARD_COMPRESSION: the codec of every corpus shard written, uploaded, registered or
    exported from a selection."""
    from fastapi.testclient import TestClient
    from service.app import create_app
    data = tmp_path_factory.mktemp("lz4-files")
    for i in range(2):
        (data / f"part-{i}.jsonl").write_bytes(jsonl(corpus(30, seed=i, prefix=f"z{i}-")))
    settings = make_settings(tmp_path_factory.mktemp("lz4-home"), ray_address, allowed_roots=[str(data)],
                             shard_compression="lz4")
    with TestClient(create_app(settings), headers=ALICE, client=("127.0.0.1", 50000)) as client:
        r = register(client, "registered", str(data))
        assert r.status_code == 202, r.text
        assert wait(client, r.json()["job_id"])["state"] == "succeeded"
        uploaded = upload(client, corpus(20, seed=9, prefix="u"), name="uploaded")
        sel = run_ok(client, "random", {"pool": uploaded["id"], "select": {"fraction": 0.5}})
        ex = client.post(f"/v1/manifests/{sel['result']['manifest_id']}/export", json={"name": "exported"})
        assert ex.status_code == 202, ex.text
        done = wait(client, ex.json()["id"])
        assert done["state"] == "succeeded", done
        exported = done["result"]["corpus_id"]
        store = Store(settings.store_root)
        for corpus_id in (r.json()["id"], uploaded["id"], exported):
            shards = layout.corpus_shards(store, corpus_id)
            assert shards
            for _, shard in shards:
                meta = store.parquet_file(*shard).metadata
                assert meta.row_group(0).column(1).compression == "LZ4", (corpus_id, shard)
