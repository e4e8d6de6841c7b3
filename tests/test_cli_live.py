"""The CLI's commands against the live test service (real HTTP through the Python client)."""
from __future__ import annotations

import io
import json
import re

import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from service import cli
from tests.corpus_gen import corpus, jsonl
from thresher import Client

runner = CliRunner()


def hf_checkpoint(path, texts):
    """A tiny local Hugging Face GPT-2 checkpoint with its tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from scoring.tokenizer import EOS_TOKEN, PAD_TOKEN, eos_id, train_tokenizer
    tok = train_tokenizer(texts, vocab_size=300)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN).save_pretrained(path)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                               bos_token_id=eos_id(tok), eos_token_id=eos_id(tok))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def env(live_service):
    return {"THRESHER_URL": live_service.url, "THRESHER_KEY": live_service.key}


@pytest.fixture(scope="module")
def client(live_service):
    with Client(live_service.url, live_service.key) as c:
        yield c


def th(env, *args):
    result = runner.invoke(cli.app, list(map(str, args)), env=env)
    return result


def ok(env, *args) -> str:
    result = th(env, *args)
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def uploaded(env, tmp_path_factory):
    f = tmp_path_factory.mktemp("cli") / "pool.jsonl"
    f.write_bytes(jsonl(corpus(120, seed=31)))
    out = ok(env, "corpora", "upload", f, "--name", "cli-pool", "--json")
    return json.loads(out)


def test_corpora_commands(env, uploaded, tmp_path, client):
    cid = uploaded["id"]
    assert uploaded["num_docs"] == 120
    listed = ok(env, "corpora", "list")
    assert cid in listed
    assert cid in ok(env, "corpora", "show", cid) and "120" in ok(env, "corpora", "show", cid)
    sample = ok(env, "corpora", "sample", cid, "-n", "3")
    assert all(f"d{i}" in sample for i in range(3))
    assert len(json.loads(ok(env, "corpora", "sample", cid, "-n", "2", "--json"))) == 2
    out = ok(env, "corpora", "download", cid, "-o", tmp_path / "p.jsonl", "--format", "jsonl")
    assert "Wrote" in out and len((tmp_path / "p.jsonl").read_text().splitlines()) == 120
    doomed = client.corpora.upload([{"text": "x"}], name="doomed")
    assert f"Deleted corpus {doomed.id}" in ok(env, "corpora", "delete", doomed.id)
    gone = th(env, "corpora", "show", doomed.id)
    assert gone.exit_code == 1 and "Error 404 (not_found)" in gone.stderr


def test_jobs_manifests_and_export(env, uploaded, tmp_path):
    spec = json.dumps({"pool": uploaded["id"], "select": {"count": 500}})
    out = ok(env, "jobs", "submit", "random", "--spec", spec, "--watch")
    assert "succeeded" in out
    jobs = json.loads(ok(env, "jobs", "list", "--kind", "random", "--json"))["items"]
    job = jobs[0]
    assert job["state"] == "succeeded"
    man = job["result"]["manifest_id"]
    assert job["id"] in ok(env, "jobs", "show", job["id"])
    assert man in ok(env, "manifests", "list") and "selected" in ok(env, "manifests", "show", man)
    ok(env, "manifests", "download", man, "-o", tmp_path / "m.parquet", "--selected-only")
    assert pq.read_table(tmp_path / "m.parquet").num_rows == 120
    q = ok(env, "manifests", "query", "-t", f"m={man}", "SELECT doc_id FROM m ORDER BY doc_id LIMIT 3")
    assert "d0" in q and "3 rows" in q
    exported = ok(env, "manifests", "export", man, "--name", "cli-export", "--watch")
    assert "succeeded" in exported and "corpus_id=cor_" in exported


def test_count_larger_than_pool_prints_the_warning(env, uploaded):
    spec = json.dumps({"pool": uploaded["id"], "select": {"count": 1000}})
    result = th(env, "jobs", "submit", "random", "--spec", spec, "--watch")
    assert result.exit_code == 0 and "warning: select.count is 1000" in result.stderr


def test_cancel_prints_the_state_after_the_cancel(env, uploaded):
    spec = json.dumps({"corpus": uploaded["id"], "preset": "tiny", "tokens": 50_000_000})
    job = json.loads(ok(env, "jobs", "submit", "train_model", "--spec", spec, "--json"))
    out = ok(env, "jobs", "cancel", job["id"])
    assert out.strip() == f"Job {job['id']}: cancelled"


def test_models_commands(env, uploaded, live_service, client):
    ckpt = hf_checkpoint(live_service.allowed_root / "cli-gpt2", [d["text"] for d in corpus(100, seed=3)])
    out = json.loads(ok(env, "models", "register", "my-gpt2", ckpt, "--json"))
    assert out["source"] == "huggingface"
    assert out["id"] in ok(env, "models", "list") and "my-gpt2" in ok(env, "models", "show", out["id"])
    refused = th(env, "models", "register", "x", "/etc")
    assert refused.exit_code == 1 and "Error 403 (forbidden_path)" in refused.stderr
    assert client.models.register("again", str(ckpt)).source == "huggingface"


def test_projections_commands(env, client, tmp_path):
    from tests.test_projection_api import spec
    ids = [client.corpora.upload(corpus(30, seed=50 + i, domains=[d]), name=d).id
           for i, d in enumerate(["cooking", "finance", "astronomy"])]
    val = client.corpora.upload(corpus(20, seed=59, domains=["astronomy"]), name="val")
    s = spec(ids, val.id)
    job = client.projection(s.pop("sources"), s.pop("validation"), **s).wait()
    out = ok(env, "projections", "predict", job.id, "-m", "1,0,0", "-m", "0,0,1", "-n", "4000", "--json")
    preds = json.loads(out)
    assert len(preds) == 2 and preds[1]["predicted"] < preds[0]["predicted"]
    assert "4000" in ok(env, "projections", "predict", job.id, "-m", "0.2,0.3,0.5", "-n", "4000")
    ok(env, "projections", "plot", job.id, "-o", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    bad = th(env, "projections", "predict", job.id, "-m", "1,0", "-n", "10")
    assert bad.exit_code == 1 and "mixtures.0" in bad.stderr


def test_curricula_commands(env, client, uploaded, tmp_path):
    job = client.curriculum(uploaded["id"], "seta", epochs=2, prune_ratio=0.3, num_groups=3).wait()
    run = job.curriculum_id
    assert "seta" in ok(env, "curricula", "show", run)
    ids = ok(env, "curricula", "epoch", run, 0).split()
    assert len(ids) == len(set(ids)) > 0
    ok(env, "curricula", "epoch", run, 0, "-o", tmp_path / "plan.parquet")
    assert pq.read_table(tmp_path / "plan.parquet")["doc_id"].to_pylist() == ids
    losses = tmp_path / "losses.csv"
    losses.write_text("doc_id,loss\n" + "".join(f"{d},{1 + i % 5}\n" for i, d in enumerate(ids)))
    out = ok(env, "curricula", "losses", run, 0, losses)
    assert f"Posted {len(ids)} losses" in out
    assert len(ok(env, "curricula", "epoch", run, 1).split()) > 0
    bad = tmp_path / "bad.csv"
    bad.write_text("doc_id,value\nd1,1\n")
    assert th(env, "curricula", "losses", run, 1, bad).exit_code == 2


def test_ids_are_never_cut(env, uploaded):
    """Piped output has no width limit; on a narrow terminal id columns keep their full width."""
    result = runner.invoke(cli.app, ["corpora", "list"], env={**env, "COLUMNS": "30"})
    assert uploaded["id"] in result.stdout
    long_id = "job_" + "0123456789abcdef" * 2
    console = Console(file=io.StringIO(), force_terminal=True, width=40)
    console.print(cli.id_table("id", "name", "state", rows=[[long_id, "a rather long job name here", "running"]]))
    assert long_id in console.file.getvalue().replace("\n", "#")


def test_serve_fails_fast_on_a_busy_port(live_service, monkeypatch):
    import time
    monkeypatch.delenv("THRESHER_API_KEYS", raising=False)
    port = live_service.url.rsplit(":", 1)[1]
    t0 = time.monotonic()
    result = runner.invoke(cli.app, ["serve", "--port", port])
    assert result.exit_code == 2 and "already in use" in result.stderr
    assert time.monotonic() - t0 < 5


def test_restrict_and_rejections(env, uploaded, client):
    """--restrict (repeated or comma-separated, manifest or job ids) on a selection, a projection's
    sources and an export; refused for a kind without restrict and beside --spec's own; and
    `manifests rejections` prints each filter's rejections per source."""
    pool = uploaded["id"]
    dedup = client.dedup(pool, method="exact").wait()
    half = client.random(pool, fraction=0.5, seed=3).wait()
    spec = json.dumps({"pool": pool, "select": {"count": 10}})
    job = json.loads(ok(env, "jobs", "submit", "random", "--spec", spec, "--restrict", f"{dedup.id}, {half.manifest_id}",
                        "--json"))
    assert job["spec"]["restrict"] == [dedup.manifest_id, half.manifest_id]
    again = json.loads(ok(env, "jobs", "submit", "random", "--spec", spec, "--restrict", half.id, "--restrict",
                          dedup.manifest_id, "--json"))
    assert again["spec"]["restrict"] == [half.manifest_id, dedup.manifest_id]
    other = client.corpora.upload(corpus(20, seed=32), name="cli-other")
    projection = {"sources": [{"corpus": c, "price_per_doc": 1.0, "available_docs": 100} for c in (pool, other.id)],
                  "validation": other.id, "pilot_sizes": [10, 20], "target_sizes": [40]}
    refused = th(env, "jobs", "submit", "projection", "--spec", json.dumps(projection), "--restrict", half.id)
    assert refused.exit_code == 1 and "spec.sources.1.restrict.0" in refused.stderr, refused.stderr  # source 0 passed
    for args, words in ((["dedup", "--spec", json.dumps({"pool": pool})], "a dedup job takes no restrict"),
                        (["random", "--spec", json.dumps({"pool": pool, "select": {"count": 1}, "restrict": []})],
                         "--spec has restrict too")):
        result = th(env, "jobs", "submit", *args, "--restrict", half.id)
        assert result.exit_code == 2 and words in re.sub(r"[\s│]+", " ", result.output), result.output
    exported = ok(env, "manifests", "export", half.manifest_id, "--restrict", dedup.id, "--watch")
    export = client.jobs.get(exported.split()[2].rstrip(","))
    assert export.summary["built_on"] == [dedup.manifest_id]
    sel = client.jobs.get(job["id"]).wait()
    r = client.manifests.rejections(sel)
    printed = ok(env, "manifests", "rejections", sel.id)
    assert f"1. dedup {dedup.manifest_id}: rejects {r.filters[0]['rejected']}" in printed
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in printed.splitlines() if line.startswith("│")}
    for s in r.by_source:
        assert lines[s["source"]][:2] == [str(s["pool"]), str(s["rejected"][dedup.manifest_id])]
        assert lines[s["source"]][-2:] == [str(s["survivors"]), str(s["selected"])]
    assert lines["all sources"][-1] == "10"
    assert json.loads(ok(env, "manifests", "rejections", sel.id, "--json")) == r.raw
    own = ok(env, "manifests", "rejections", dedup.id)     # a cleaning manifest is its own filter
    assert f"1. dedup {dedup.manifest_id}: rejects 0, 0 of them first" in own and "selected" not in own
