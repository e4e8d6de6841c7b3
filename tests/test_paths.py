"""Paths a tenant names are checked where they are opened (issue 32: items 1, 5, 6, 8 and the glob
of 16): a file swapped for a link after its registration, a model folder with a link in it, a link
loop under a root, an object-store URI that picks its own endpoint, a malformed glob."""
from __future__ import annotations

import os
import shutil
import socket
import threading

import pyarrow.fs as pafs
import pytest

from storage import layout
from storage.errors import DomainError
from storage.fs import Store
from storage.inputs import Access, _open_no_links
from tests.conftest import ALICE, BOB, make_settings
from tests.corpus_gen import corpus, csv_bytes, encode, jsonl
from tests.helpers import submit, upload, wait

SECRET = "root:x:0:0:secret-line"


def app_client(settings):
    from fastapi.testclient import TestClient
    from service.app import create_app
    return TestClient(create_app(settings), headers=ALICE, client=("127.0.0.1", 50000))


@pytest.fixture(scope="module")
def paths_service(tmp_path_factory, ray_address, s3_server):
    """A service allowed a local root and an object-store prefix (which carries its endpoint),
    with a small bound on the files one registration may name."""
    allowed = tmp_path_factory.mktemp("paths-files")
    bucket = s3_server("paths-data")
    s3_root = bucket.replace("?", "/data/?", 1)
    settings = make_settings(tmp_path_factory.mktemp("paths-home"), ray_address,
                             allowed_roots=[str(allowed), s3_root], max_input_files=20)
    with app_client(settings) as client:
        client.allowed_root = allowed
        client.data_fs, _ = pafs.FileSystem.from_uri(bucket)
        yield client


def register(client, uri: str, name: str = "reg", **kw):
    return client.post("/v1/corpora", json={"name": name, "uri": uri}, **kw)


# -- item 1: the check happens at the open, on the worker -----------------------------------------

def test_a_file_swapped_for_a_link_while_the_job_waits_is_refused_at_its_open(tmp_path, ray_address):
    """Alice registers two folders; their jobs stay queued (the service has no job slot, then
    restarts); she swaps a file of each for a link to Bob's shard in the store, and to a file
    outside the roots. The worker that opens them refuses both: the jobs fail naming her file,
    quoting nothing of the target, and her corpora hold none of Bob's documents."""
    home, allowed, outside = tmp_path / "home", tmp_path / "allowed", tmp_path / "outside"
    for d in (allowed / "one", allowed / "two", outside):
        d.mkdir(parents=True)
    (allowed / "one" / "mine.parquet").write_bytes(encode(corpus(5, seed=1, prefix="alice-"), "parquet"))
    (allowed / "two" / "mine.csv").write_bytes(csv_bytes(corpus(5, seed=2, prefix="alice-")))
    (outside / "passwd.csv").write_text(f"{SECRET}\nother:x:1:1\n")
    queued = make_settings(home, ray_address, allowed_roots=[str(allowed)], max_concurrent_jobs=0)
    with app_client(queued) as client:
        bob = client.post("/v1/corpora", params={"name": "bob-private", "format": "jsonl"}, headers=BOB,
                          content=jsonl(corpus(60, seed=3, prefix="bob-"))).json()
        regs = [register(client, str(allowed / d)).json() for d in ("one", "two")]
        assert all(r["state"] == "ingesting" for r in regs), regs
    store = Store(str(home / "store"))
    bob_shard = store.path(*layout.corpus_shards(store, bob["id"])[0][1])
    os.remove(allowed / "one" / "mine.parquet")
    os.symlink(bob_shard, allowed / "one" / "mine.parquet")
    os.remove(allowed / "two" / "mine.csv")
    os.symlink(outside / "passwd.csv", allowed / "two" / "mine.csv")

    with app_client(make_settings(home, ray_address, allowed_roots=[str(allowed)])) as client:
        for reg, name in zip(regs, ("mine.parquet", "mine.csv")):
            job = wait(client, reg["job_id"])
            assert job["state"] == "failed" and job["error"]["code"] == "forbidden_uri", job
            message = job["error"]["message"]
            assert name in message and "secret" not in message and "root:x" not in message, message
            assert str(home) not in message and "bob" not in message
            rec = client.get(f"/v1/corpora/{reg['id']}").json()
            assert rec["state"] == "failed" and not rec.get("num_docs")
            assert store.list(*layout.corpus(reg["id"])) == []
        assert client.get(f"/v1/corpora/{bob['id']}", headers=BOB).json()["num_docs"] == 60


def test_an_open_never_follows_a_link_that_appeared_after_the_check(tmp_path):
    """The gap between resolving a path and opening it: the open walks the resolved path without
    following links, so a directory swapped for a link in between fails the open."""
    (tmp_path / "root" / "dir").mkdir(parents=True)
    (tmp_path / "root" / "dir" / "a.jsonl").write_text("{}\n")
    (tmp_path / "store" / "dir").mkdir(parents=True)
    (tmp_path / "store" / "dir" / "a.jsonl").write_text("private\n")
    access = Access((str(tmp_path / "root"),), (str(tmp_path / "store"),))
    real = access.check_local(str(tmp_path / "root" / "dir" / "a.jsonl"))
    shutil.rmtree(tmp_path / "root" / "dir")
    os.symlink(tmp_path / "store" / "dir", tmp_path / "root" / "dir")   # swapped after the check
    with pytest.raises(OSError):
        _open_no_links(real)
    with pytest.raises(DomainError) as e:      # and opened afresh, the link is resolved and refused
        access.open_local(str(tmp_path / "root" / "dir" / "a.jsonl"), "dir/a.jsonl")
    assert e.value.code == "forbidden_uri" and "private" not in e.value.message


# -- item 5: every file of a model folder is checked, at registration and at each load ------------

def hf_checkpoint(folder) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from scoring.tokenizer import EOS_TOKEN, PAD_TOKEN, eos_id, train_tokenizer
    tok = train_tokenizer([d["text"] for d in corpus(100, seed=5)], vocab_size=300)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN).save_pretrained(folder)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                               bos_token_id=eos_id(tok), eos_token_id=eos_id(tok))).save_pretrained(folder)


def test_a_model_folder_with_a_link_out_of_the_roots_or_into_the_store_is_refused(paths_service, tmp_path):
    client = paths_service
    good = client.allowed_root / "hf-good"
    hf_checkpoint(good)
    # A loadable tokenizer outside the roots, and one in the store (as another tenant's model's).
    shutil.copy(good / "tokenizer.json", tmp_path / "tokenizer.json")
    store = client.app.state.svc.store
    store.write_bytes((good / "tokenizer.json").read_bytes(), *layout.model_file("mdl_other", "tokenizer.json"))
    for name, target in (("hf-out", tmp_path / "tokenizer.json"),
                         ("hf-store", store.path(*layout.model_file("mdl_other", "tokenizer.json")))):
        folder = client.allowed_root / name
        shutil.copytree(good, folder)
        os.remove(folder / "tokenizer.json")
        os.symlink(target, folder / "tokenizer.json")
        r = client.post("/v1/models", json={"name": name, "path": str(folder)})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["details"]["file"] == "tokenizer.json" and error["details"]["field"] == "path"
        assert "tokenizer.json" in error["message"] and str(tmp_path) not in error["message"]

    # Registered while sound, then swapped: the worker that loads it for scoring refuses it.
    r = client.post("/v1/models", json={"name": "hf-good", "path": str(good)})
    assert r.status_code == 201, r.text
    os.remove(good / "tokenizer.json")
    os.symlink(tmp_path / "tokenizer.json", good / "tokenizer.json")
    pool = upload(client, corpus(10, seed=6), name="score-me")
    job = wait(client, submit(client, "score", {"corpus": pool["id"], "model": r.json()["id"]})["id"], timeout=240)
    assert job["state"] == "failed" and job["error"]["code"] == "forbidden_uri", job
    assert "tokenizer.json" in job["error"]["message"] and str(tmp_path) not in job["error"]["message"]


# -- item 6: listings are bounded, follow no cycle, and run on a worker ---------------------------

def test_a_symlink_loop_answers_at_once_and_each_file_is_ingested_once(paths_service):
    client = paths_service
    loop = client.allowed_root / "loop"
    (loop / "d").mkdir(parents=True)
    (loop / "d" / "a.jsonl").write_bytes(jsonl(corpus(4, seed=7, prefix="a")))
    (loop / "o.jsonl").write_bytes(jsonl(corpus(3, seed=8, prefix="o")))
    os.symlink("..", loop / "d" / "a")
    os.symlink("..", loop / "d" / "b")
    answers = []
    thread = threading.Thread(target=lambda: answers.append(register(client, str(loop / "d"))), daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert answers, "registering a folder with a link loop did not answer within 20 s"
    r = answers[0]
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["summary"]["files"] == 2
    assert client.get(f"/v1/corpora/{r.json()['id']}").json()["num_docs"] == 7


def test_a_listing_past_its_file_bound_is_refused_naming_the_setting(paths_service):
    client = paths_service
    many = client.allowed_root / "many"
    many.mkdir()
    for i in range(25):
        (many / f"f{i:02d}.jsonl").write_bytes(jsonl(corpus(1, seed=i, prefix=f"m{i}-")))
    r = register(client, str(many))
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_files", r.text
    assert "THRESHER_MAX_INPUT_FILES" in r.json()["error"]["message"]


# -- item 8: a tenant's URI does not choose the store's endpoint, scheme or credentials -----------

def test_an_object_store_uri_cannot_choose_its_endpoint(paths_service):
    client = paths_service
    client.data_fs.create_dir("paths-data/data")
    with client.data_fs.open_output_stream("paths-data/data/x.jsonl") as out:
        out.write(jsonl(corpus(5, seed=9, prefix="s3-")))
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.settimeout(0.5)
    port = trap.getsockname()[1]
    try:
        for options in (f"endpoint_override=127.0.0.1:{port}&scheme=http", "access_key=mine&secret_key=x"):
            r = register(client, f"s3://paths-data/data/x.jsonl?{options}")
            assert r.status_code == 422 and r.json()["error"]["code"] == "uri_option_not_allowed", r.text
            assert r.json()["error"]["details"]["option"] in r.json()["error"]["message"]
        with pytest.raises(socket.timeout):
            trap.accept()      # nothing was sent to the tenant's address
    finally:
        trap.close()
    # Without options, a URI under the root is read with the root's endpoint.
    r = register(client, "s3://paths-data/data/x.jsonl")
    assert r.status_code == 202, r.text
    assert wait(client, r.json()["job_id"])["state"] == "succeeded"
    assert register(client, "s3://paths-data/other/x.jsonl").status_code == 403


def test_an_object_store_prefix_of_the_store_is_never_readable():
    access = Access(("s3://b/?endpoint_override=h:1",), ("s3://b/store?endpoint_override=h:1",))
    assert access.resolve_remote("s3://b/data/x.jsonl") == "s3://b/data/x.jsonl?endpoint_override=h:1"
    for uri in ("s3://b/store/corpora/x.parquet", "s3://b/data/../store/x"):
        with pytest.raises(DomainError):
            access.resolve_remote(uri)


# -- item 16: a malformed glob is a 422, not a 500 -----------------------------------------------

def test_a_malformed_glob_is_422(paths_service):
    for pattern in ("[z-a].jsonl", "x[].jsonl"):
        r = register(paths_service, str(paths_service.allowed_root / pattern))
        assert r.status_code == 422 and r.json()["error"]["code"] == "bad_glob", r.text
        assert r.json()["error"]["details"]["field"] == "uri"
