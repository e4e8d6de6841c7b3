"""The service when its storage or its Ray fails under it (issue 32, items 14-16): a frozen object
store, a missing bucket, a full disk, a worker that dies while loading a checkpoint, and the Ray
processes a killed service leaves behind. Each answers a documented status quickly (503, 507,
422), never a 500 or a hang, and stores nothing."""
from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.conftest import ALICE, make_settings
from tests.corpus_gen import corpus, jsonl
from tests.helpers import alive, tmpfs, upload, wait
from tests.net import free_port, start_service_process, wait_for_port

pytestmark = pytest.mark.timeout(240)


def answer_within(limit_s: float, call):
    """(response, seconds) of `call()`, failing the test if it has not answered after `limit_s`
    (the call runs in a thread, so a hanging service cannot hang the test)."""
    box = {}
    t0 = time.monotonic()
    th = threading.Thread(target=lambda: box.update(r=call()), daemon=True)
    th.start()
    th.join(limit_s)
    assert "r" in box, f"no answer after {limit_s} s"
    return box["r"], time.monotonic() - t0


def app_client(settings, port: int = 50002):
    from fastapi.testclient import TestClient

    from service.app import create_app
    return TestClient(create_app(settings), headers=ALICE, client=("127.0.0.1", port))


def s3_options(port: int) -> str:
    return f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"


def s3_admin(options: str, bucket: str):
    import pyarrow.fs as pafs
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{options}&allow_bucket_creation=true&allow_bucket_deletion=true")
    return fs


@pytest.fixture
def own_moto():
    """An S3 server of this test's own (the test freezes it; the session's server stays as it is)."""
    port = free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield proc, s3_options(port)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


# -- item 14: a frozen object store --------------------------------------------------------------

def test_a_frozen_object_store_answers_503_within_seconds(tmp_path, ray_address, own_moto):
    from service.routes.ops import READY_FRESH_S
    proc, options = own_moto
    s3_admin(options, "frozen").create_dir("frozen")
    settings = make_settings(tmp_path / "home", ray_address, storage_uri=f"s3://frozen/store?{options}",
                             storage_timeout_s=1)
    with app_client(settings) as client:
        pool = upload(client, corpus(30, seed=3), name="before")
        assert client.get("/readyz").status_code == 200
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(READY_FRESH_S)  # the last answer, from before the freeze, is no longer reused
            for _ in range(2):  # the second probe finds the first still waiting on the store
                r, took = answer_within(30, lambda: client.get("/readyz"))
                assert r.status_code == 503 and took < 3, (r.status_code, took, r.text)
                body = r.json()
                assert body["checks"] == {"ray": True, "storage": False}, body
                assert "no answer" in body["reasons"]["storage"], body
            r, took = answer_within(30, lambda: client.post("/v1/jobs", json={
                "kind": "random", "spec": {"pool": pool["id"], "select": {"count": 5}}}))
            assert r.status_code == 202 and took < 3, (r.status_code, took, r.text)
            r, took = answer_within(60, lambda: client.get(f"/v1/corpora/{pool['id']}/sample"))
            assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
            assert took < 15, took
            r, took = answer_within(60, lambda: client.post("/v1/corpora", params={"name": "during", "format": "jsonl"},
                                                            content=jsonl(corpus(30, seed=4))))
            assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
            assert "THRESHER_STORAGE_TIMEOUT_S" in r.json()["error"]["message"]
            assert took < 25, took
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "storage did not come back"
            time.sleep(0.5)
        assert [c["name"] for c in client.get("/v1/corpora").json()["items"]] == ["before"]


def test_a_tenants_bucket_that_freezes_fails_its_listing_within_seconds(own_moto, monkeypatch):
    """A tenant's object-store URI is read with the store's time limit too: listing a prefix of a
    frozen server fails in seconds instead of holding the worker for pyarrow's 99 s a call."""
    from storage.inputs import Access, list_inputs
    proc, options = own_moto
    admin = s3_admin(options, "theirs")
    admin.create_dir("theirs")
    with admin.open_output_stream("theirs/data/a.jsonl") as f:
        f.write(b'{"text": "x"}\n')
    monkeypatch.setenv("THRESHER_STORAGE_TIMEOUT_S", "1")
    access = Access(roots=(f"s3://theirs/data?{options}",))
    assert [f.name for f in list_inputs("s3://theirs/data/*.jsonl", access)] == ["a.jsonl"]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError):
            list_inputs("s3://theirs/data/*.jsonl", access)
        assert time.monotonic() - t0 < 15
    finally:
        os.kill(proc.pid, signal.SIGCONT)


# -- item 16: a missing bucket -------------------------------------------------------------------

def test_a_missing_bucket_answers_503_and_readyz_names_it(tmp_path, ray_address, s3_server):
    options = s3_options(s3_server.port)
    s3_server("doomed")
    settings = make_settings(tmp_path / "home", ray_address, storage_uri=f"s3://doomed/store?{options}",
                             storage_timeout_s=2)
    with app_client(settings) as client:
        pool = upload(client, corpus(20, seed=5), name="p")
        s3_admin(options, "doomed").delete_dir("doomed")  # an operator removes the bucket
        r = client.get("/readyz")
        assert r.status_code == 503 and "'doomed'" in r.json()["reasons"]["storage"], r.text
        for method, path, kw in (("GET", f"/v1/corpora/{pool['id']}/sample", {}),
                                 ("GET", f"/v1/corpora/{pool['id']}/download", {}),
                                 ("POST", "/v1/corpora", {"params": {"name": "q", "format": "jsonl"},
                                                          "content": jsonl(corpus(5))})):
            r = client.request(method, path, **kw)
            assert r.status_code == 503, (path, r.status_code, r.text[:300])
            err = r.json()["error"]
            assert err["code"] == "storage_unavailable" and "bucket does not exist" in err["message"], err
            assert "doomed" not in r.text  # where the server keeps its files is not the tenant's business
    # A service whose bucket was never made starts, and says why it is not ready.
    settings = make_settings(tmp_path / "home2", ray_address, storage_uri=f"s3://never-made/store?{options}",
                             storage_timeout_s=2)
    with app_client(settings) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and "'never-made'" in r.json()["reasons"]["storage"], r.text


# -- item 16: a full disk ------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "1m") as mnt:
        yield mnt


def files_under(folder) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]


def test_a_disk_that_fills_while_ingesting_is_507_and_keeps_nothing(tmp_path, ray_address, small_disk):
    # ~800 KB of JSONL: the spooled upload fits on the 1 MiB disk, its shards (~600 KB of zstd)
    # do not fit beside it, so the disk fills in the Ray worker that writes them.
    def random_rows(n):
        return [{"id": f"r{i}", "text": base64.b64encode(os.urandom(450)).decode()} for i in range(n)]
    rows = random_rows(1300)
    files = tmp_path / "files"
    files.mkdir()
    (files / "big.jsonl").write_bytes(jsonl(random_rows(2600)))  # its shards alone overfill the disk
    settings = make_settings(tmp_path / "home", ray_address, storage_uri=str(small_disk / "store"),
                             max_upload_bytes=50_000_000, allowed_roots=[str(files)])
    with app_client(settings) as client:
        r = client.post("/v1/corpora", params={"name": "big", "format": "jsonl"}, content=jsonl(rows))
        assert r.status_code == 507, r.text[:500]
        assert r.json()["error"] == {"code": "insufficient_storage", "details": {},
                                     "message": "the server's storage is full; nothing was stored, try again later"}
        assert client.get("/v1/corpora").json()["items"] == []
        assert files_under(small_disk) == []

        r = client.post("/v1/corpora", json={"name": "registered", "uri": str(files / "big.jsonl")})
        assert r.status_code == 202, r.text
        job = wait(client, r.json()["job_id"], timeout=120)
        assert job["state"] == "failed" and job["error"]["code"] == "insufficient_storage", job
        assert client.get(f"/v1/corpora/{r.json()['id']}").json()["state"] == "failed"
        assert not [f for f in files_under(small_disk) if "/corpora/" in f]
        assert client.get("/healthz").status_code == 200


# -- item 16: a worker that dies while a checkpoint is registered --------------------------------

def hf_checkpoint(path):
    """A small Hugging Face GPT-2 checkpoint (~14 MB: loading it takes a moment to interrupt)."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from scoring.tokenizer import EOS_TOKEN, PAD_TOKEN, eos_id, train_tokenizer
    tok = train_tokenizer([d["text"] for d in corpus(100, seed=7)], vocab_size=300)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN).save_pretrained(path)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=1024, n_embd=256, n_layer=4, n_head=4,
                               bos_token_id=eos_id(tok), eos_token_id=eos_id(tok))).save_pretrained(path)


def loading_workers() -> list[psutil.Process]:
    """The workers of this session's Ray (started by this process) that run inspect_checkpoint."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::inspect_checkpoint"):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_a_worker_dying_while_loading_a_checkpoint_is_422(service):
    ckpt = service.allowed_root / "crashing-gpt2"
    hf_checkpoint(ckpt)
    for attempt in range(3):  # the load may finish before this test finds its worker: try again
        box = {}
        th = threading.Thread(target=lambda: box.update(r=service.post(
            "/v1/models", json={"name": f"crash-{attempt}", "path": str(ckpt)})), daemon=True)
        th.start()
        killed = False
        while th.is_alive() and not killed:
            for p in loading_workers():  # as the kernel's OOM killer would
                p.kill()
                killed = True
            time.sleep(0.02)
        th.join(120)
        r = box["r"]
        if killed:
            break
        assert r.status_code == 201, r.text
    assert killed, "never caught the worker loading the checkpoint"
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "bad_checkpoint" and "worker loading it died" in err["message"], err


# -- item 15: the Ray a SIGKILLed service leaves behind ------------------------------------------

def test_the_next_start_stops_the_ray_of_a_killed_service(tmp_path, ray_address):
    home = tmp_path / "home"
    tree: list[psutil.Process] = []
    proc = reader = None
    try:
        proc = start_service_process(home, free_port(), None, timeout=120)   # with a Ray of its own
        time.sleep(2)  # the agents start a little after the raylet
        tree = psutil.Process(proc.pid).children(recursive=True)
        sessions = {m.group(0) for p in tree for a in p.cmdline()
                    for m in [re.search(r"[^\s=]*/session_\d{4}-\d\d-\d\d_[\d_-]+", a)] if m}
        assert len(sessions) == 1, sessions
        proc.kill()
        proc.wait(10)
        time.sleep(3)  # what shares the service's fate is gone by now
        left = [p for p in tree if alive(p)]
        assert left, "nothing outlived the killed service: this test no longer shows anything"
        names = " ".join(p.cmdline()[0] for p in left)
        session = sessions.pop()
        # Someone reading that session's logs is not part of it.
        reader = subprocess.Popen(["tail", "-f", f"{session}/logs/raylet.out"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        # The next start with this home (here joining another Ray) stops them, and only them.
        with app_client(make_settings(home, ray_address)) as client:
            assert client.get("/readyz").status_code == 200  # this session's Ray is untouched
            survivors = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left if alive(p)]
            assert not survivors, (names, survivors)
            assert not (home / "ray-session.json").exists()
        assert reader.poll() is None
        others = [p.pid for p in psutil.process_iter(["cmdline"])
                  if any(session in a for a in (p.info["cmdline"] or [])) and alive(p) and p.pid != reader.pid]
        assert not others, others
    finally:
        for child in (proc, reader):
            if child is not None and child.poll() is None:
                child.kill()
        for p in tree:  # never leave them behind for the rest of the suite
            if alive(p):
                p.kill()
