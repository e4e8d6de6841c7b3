"""CoLoR-Filter and the model jobs end to end over HTTP, on a real local Ray."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from service.app import create_app

from tests.conftest import ALICE, make_settings
from tests.corpus_gen import corpus
from tests.helpers import run_ok, submit, upload, wait

FAST_TRAIN = {"preset": "tiny", "tokens": 150_000, "vocab_size": 512, "batch_size": 16, "seq_len": 64}
FAST_FT = {"epochs": 2, "warmup_steps": 5, "batch_size": 8}


@pytest.fixture(scope="module")
def data(service):
    pool = upload(service, corpus(1000, seed=21, min_words=15, max_words=40), name="pool")
    target = upload(service, corpus(120, seed=22, domains=["astronomy"], prefix="t"), name="target")
    return pool, target


@pytest.fixture(scope="module")
def color_job(service, data):
    pool, target = data
    return run_ok(service, "color_filter", {
        "pool": pool["id"], "target": target["id"], "select": {"fraction": 0.1},
        "prior": {"train": FAST_TRAIN}, "conditional": {"finetune": FAST_FT}, "compare_with": "dsir"}, timeout=600)


def test_color_filter_selects_target_domain(service, color_job):
    man = color_job["result"]["manifest_id"]
    q = service.post("/v1/query", json={"sql": "SELECT source, count(*) FROM m WHERE selected GROUP BY 1",
                                        "tables": {"m": man}}).json()
    counts = {r[0]: r[1] for r in q["rows"]}
    assert sum(counts.values()) == 100
    assert counts.get("astronomy", 0) >= 90, counts


def test_manifest_columns_and_score_sign(service, color_job):
    man = color_job["result"]["manifest_id"]
    t = pq.read_table(io.BytesIO(service.get(f"/v1/manifests/{man}/download").content))
    assert {"prior_loss", "cond_loss", "score", "diff_sd", "evidence", "rank", "selected",
            "n_tokens"} <= set(t.column_names)
    rows = t.to_pylist()
    for row in rows:
        assert row["score"] == pytest.approx(row["prior_loss"] - row["cond_loss"], abs=1e-9)
        assert row["n_tokens"] > 0 and row["diff_sd"] >= 0
        assert (row["evidence"] > 0) == (row["score"] > 0)
    # The selection ranks by evidence (the default rank_by), not by the mean reduction alone.
    assert color_job["result"]["summary"]["rank_by"] == "evidence"
    by_rank = sorted(rows, key=lambda r: r["rank"])
    assert [r["evidence"] for r in by_rank] == sorted((r["evidence"] for r in rows), reverse=True)
    assert {r["doc_id"] for r in rows if r["selected"]} == {r["doc_id"] for r in by_rank[:100]}
    assert t.num_rows == 1000 and len(set(t["doc_id"].to_pylist())) == 1000
    # Both models are registered and reusable.
    summary = color_job["result"]["summary"]
    models = {m["id"] for m in service.get("/v1/models").json()["items"]}
    assert {summary["prior_model"], summary["conditional_model"]} <= models


def test_summary_diagnostics(color_job):
    """What a user judges a selection by: did fine-tuning help, how scores spread per source, how
    far the selection is from DSIR's, and how the scoring stage used the cluster."""
    s = color_job["result"]["summary"]
    held = s["target_holdout"]
    assert held["holdout_docs"] == 12  # a tenth of the 120 target documents
    assert held["conditional_loss"] <= held["prior_loss"] and held["best_at_tokens"] > 0
    assert held["loss_reduction"] == pytest.approx(held["prior_loss"] - held["conditional_loss"])
    assert s["models"]["prior"]["train_tokens"] > 0 and s["models"]["prior"]["budget"]["rule"] == "given"
    by_source = s["score_by_source"]
    assert sum(v["docs"] for v in by_source.values()) == 1000
    assert sum(v["selected"] for v in by_source.values()) == 100
    others = max(v["quantiles"]["0.5"] for k, v in by_source.items() if k != "astronomy")
    assert by_source["astronomy"]["quantiles"]["0.5"] > others
    q = by_source["astronomy"]["quantiles"]
    assert q["0.1"] <= q["0.25"] <= q["0.5"] <= q["0.75"] <= q["0.9"]
    dsir = s["compare_with"]
    assert dsir["selected"] == 100 and sum(dsir["dsir_selected_by_source"].values()) == 100
    assert 50 <= dsir["overlap"] <= 100 and dsir["overlap_fraction"] == dsir["overlap"] / 100
    # The session's Ray has 4 CPUs: one single-threaded scorer per CPU, all of them used.
    sc = s["scoring"]
    assert sc["actors"] == 4 and sc["actors_used"] == 4 and sc["threads_per_actor"] == 1
    assert sc["documents"] == 1000 and sc["tokens"] > 0 and sc["models"] == 2


def test_small_pool_is_split_across_scorers(service, data):
    """A one-shard pool is cut into row ranges so every scorer works; the manifest still has one
    part per shard with every document once."""
    pool, target = data
    small = upload(service, corpus(150, seed=24, min_words=15, max_words=40), name="small")
    first = run_ok(service, "train_model", {"corpus": small["id"], **FAST_TRAIN, "tokens": 20_000}, timeout=300)
    job = run_ok(service, "score", {"corpus": small["id"], "model": first["result"]["model_id"]}, timeout=300)
    s = job["result"]["summary"]
    man = job["result"]["manifest_id"]
    assert s["num_rows"] == 150
    assert s["scoring"]["split_shards"] == 1 and s["scoring"]["tasks"] == 2 and s["scoring"]["actors_used"] == 2
    assert service.get(f"/v1/manifests/{man}").json()["num_shards"] == 1
    rows = service.post("/v1/query", json={"sql": "SELECT count(*), count(DISTINCT doc_id), min(row), max(row), "
                                                  "count(DISTINCT row) FROM m", "tables": {"m": man}}).json()["rows"]
    assert rows == [[150, 150, 0, 149, 150]]


def test_score_and_evaluate(service, data, color_job):
    pool, target = data
    prior = color_job["result"]["summary"]["prior_model"]
    job = run_ok(service, "score", {"corpus": target["id"], "model": prior})
    t = pq.read_table(io.BytesIO(service.get(f"/v1/manifests/{job['result']['manifest_id']}/download").content))
    assert t.num_rows == 120 and all(x > 0 for x in t["loss"].to_pylist())
    assert t["selected"].to_pylist() == [False] * 120

    val = upload(service, corpus(60, seed=23, domains=["astronomy"], prefix="v"), name="val")
    ev = run_ok(service, "evaluate", {"selection": color_job["result"]["manifest_id"], "validation": val["id"],
                                      "proxy": {**FAST_TRAIN, "tokens": 60_000}, "repeats": 2}, timeout=600)
    s = ev["result"]["summary"]
    assert s["selection"]["docs"] == s["random"]["docs"] == 100
    assert s["selection"]["validation_loss"] < s["random"]["validation_loss"], s
    # Two pairs of proxies from their own seeds and random subsets: the means, each gain, its error.
    assert s["repeats"] == 2 and len(s["relative_gains"]) == 2 and all(g > 0 for g in s["relative_gains"]), s
    sel, rnd = s["selection"]["validation_losses"], s["random"]["validation_losses"]
    assert sel[0] != sel[1] and rnd[0] != rnd[1]
    assert s["selection"]["validation_loss"] == pytest.approx(sum(sel) / 2)
    assert s["relative_gain_se"] == pytest.approx(abs(s["relative_gains"][0] - s["relative_gains"][1]) / 2)
    assert s["match"] == "documents"
    # Matched in characters: the random subset holds as much text as the selection, give or take
    # its last document, and however many documents that takes.
    ev = run_ok(service, "evaluate", {"selection": color_job["result"]["manifest_id"], "validation": val["id"],
                                      "proxy": {**FAST_TRAIN, "tokens": 20_000}, "match": "characters"}, timeout=600)
    s2 = ev["result"]["summary"]
    assert s2["match"] == "characters" and s2["selection"]["chars"] == s["selection"]["chars"]
    docs = service.get(f"/v1/corpora/{pool['id']}/download?format=jsonl").text.splitlines()
    longest = max(len(json.loads(d)["text"]) for d in docs)
    assert 0 <= s2["random"]["chars"] - s2["selection"]["chars"] < longest, s2


def test_evaluation_summary_by_hand():
    from workers.jobs.lm import EvaluateSpec, evaluation_summary
    run = lambda loss: {"docs": 10, "train_tokens": 1000, "train_loss": 4.0, "validation_loss": loss}
    out = {("selection", 0): run(4.5), ("random", 0): run(5.0), ("selection", 1): run(4.7), ("random", 1): run(5.0)}
    spec = EvaluateSpec(selection="man_x", validation="cor_x", repeats=2)
    s = evaluation_summary(out, spec)
    assert s["selection"]["validation_loss"] == pytest.approx(4.6) and s["random"]["validation_loss"] == 5.0
    assert s["relative_gain"] == pytest.approx(0.08)                 # (5.0 − 4.6) / 5.0
    assert s["relative_gains"] == pytest.approx([0.10, 0.06])        # 0.5 / 5, 0.3 / 5
    assert s["relative_gain_se"] == pytest.approx(0.02)              # sd 0.02·√2, over √2
    one = evaluation_summary({k: v for k, v in out.items() if k[1] == 0}, spec.model_copy(update={"repeats": 1}))
    assert one["relative_gain"] == pytest.approx(0.10) and "relative_gains" not in one


def test_random_subset_by_hand():
    from workers.jobs.lm import random_subset
    texts = ["aaaa", "bb", "c", "dddddd", "ee"]                # 4 + 2 + 1 + 6 + 2 = 15 characters
    order = list(np.random.default_rng(7).permutation(5))
    by_docs = random_subset(texts, 7, 2)
    assert len(by_docs) == 2 and set(by_docs) <= set(texts)
    assert by_docs == random_subset(texts, 7, 2)                 # seeded
    # By characters: the shortest prefix of the seeded order holding at least 7, in stored order.
    got, need, prefix = random_subset(texts, 7, 0, chars=7), 0, []
    for i in order:
        prefix.append(i); need += len(texts[i])
        if need >= 7:
            break
    assert got == [texts[i] for i in sorted(prefix)] and sum(map(len, got)) >= 7
    assert random_subset(texts, 7, 0, chars=100) == texts      # more than the pool holds: all of it
    assert len(random_subset(texts, 7, 0, chars=1)) == 1


def test_empty_documents_are_not_scored(service, color_job):
    prior = color_job["result"]["summary"]["prior_model"]
    c = upload(service, [{"id": "a", "text": "the star and the moon"}, {"id": "b", "text": ""}, {"id": "c", "text": "  "}], name="e")
    job = run_ok(service, "score", {"corpus": c["id"], "model": prior})
    rows = {r[0]: r[1:] for r in service.post("/v1/query", json={
        "sql": "SELECT doc_id, loss, score, rank FROM m", "tables": {"m": job["result"]["manifest_id"]}}).json()["rows"]}
    assert rows["a"][0] > 0 and rows["a"][2] == 1
    assert rows["b"] == [None, None, None] and rows["c"] == [None, None, None]


def test_bad_color_spec(service, data):
    pool, target = data
    r = service.post("/v1/jobs", json={"kind": "color_filter", "spec": {
        "pool": pool["id"], "target": target["id"], "select": {"tau": 8}, "prior": {"model": "mdl_x", "train": {}}}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "spec.prior"
    r = service.post("/v1/jobs", json={"kind": "color_filter", "spec": {
        "pool": pool["id"], "target": target["id"], "select": {"tau": 8}, "prior": {"model": "mdl_nope"}}})
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "spec.prior.model"
    r = service.post("/v1/jobs", json={"kind": "train_model", "spec": {"corpus": pool["id"], "preset": "huge"}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "spec.preset"


def test_restart_mid_scoring_resumes(tmp_path, ray_address):
    """A service stopped while a color_filter job scores finishes it after a restart, reusing the
    trained models and the finished shards, with every document once."""
    settings = make_settings(tmp_path, ray_address, max_inflight=1)
    with TestClient(create_app(settings), headers=ALICE) as c:
        pool = upload(c, corpus(3000, seed=31, min_words=15, max_words=40), name="pool")
        target = upload(c, corpus(100, seed=32, domains=["finance"], prefix="t"), name="target")
        job = submit(c, "color_filter", {"pool": pool["id"], "target": target["id"], "select": {"tau": 10},
                                         "prior": {"train": FAST_TRAIN}, "conditional": {"finetune": FAST_FT}})
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            j = c.get(f"/v1/jobs/{job['id']}").json()
            p = j["progress"]
            if p["stage"] == "score" and 200 <= p["done"] <= p["total"] - 1000:
                break
            assert j["state"] in ("queued", "running"), j
            time.sleep(0.05)
    # The service has stopped (lifespan shutdown) with the job mid-scoring.
    store = tmp_path / "store"
    scores = store / "jobs" / job["id"] / "scores"
    before = {f.name: f.stat().st_mtime_ns for f in scores.glob("part-*")}
    models = {f: f.stat().st_mtime_ns for f in (store / "models").rglob("model.safetensors")}
    assert 1 <= len(before) < 15 and len(models) == 2

    with TestClient(create_app(settings), headers=ALICE) as c:
        assert c.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running")
        done = wait(c, job["id"], timeout=600)
        assert done["state"] == "succeeded", done
        after = {f.name: f.stat().st_mtime_ns for f in scores.glob("part-*")}
        assert len(after) == 15 and all(after[k] == v for k, v in before.items())
        assert {f: f.stat().st_mtime_ns for f in (store / "models").rglob("model.safetensors")} == models
        r = c.post("/v1/query", json={"sql": "SELECT count(*), count(DISTINCT doc_id), count(*) FILTER (WHERE selected) FROM m",
                                      "tables": {"m": done["result"]["manifest_id"]}}).json()
        assert r["rows"] == [[3000, 3000, 300]]


def test_register_hugging_face_checkpoint_and_score(service):
    """Bring your own model: a local HF checkpoint under an allowed root scores a corpus."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from scoring.tokenizer import EOS_TOKEN, PAD_TOKEN, eos_id, train_tokenizer
    texts = [d["text"] for d in corpus(200, seed=51)]
    ckpt = service.allowed_root / "hf-gpt2"
    tok = train_tokenizer(texts, vocab_size=300)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN).save_pretrained(ckpt)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                               bos_token_id=eos_id(tok), eos_token_id=eos_id(tok))).save_pretrained(ckpt)

    r = service.post("/v1/models", json={"name": "my-gpt2", "path": str(ckpt)})
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["source"] == "huggingface" and model["meta"]["context"] == 64
    assert service.get(f"/v1/models/{model['id']}").json()["name"] == "my-gpt2"

    c = upload(service, corpus(50, seed=52), name="byo")
    job = run_ok(service, "score", {"corpus": c["id"], "model": model["id"]}, timeout=300)
    rows = service.post("/v1/query", json={"sql": "SELECT count(*), min(loss), max(n_tokens) FROM m",
                                           "tables": {"m": job["result"]["manifest_id"]}}).json()["rows"]
    assert rows[0][0] == 50 and rows[0][1] > 0 and rows[0][2] > 10

    # Refused: outside the allowed roots, not a checkpoint.
    assert service.post("/v1/models", json={"name": "x", "path": "/etc"}).status_code == 403
    (service.allowed_root / "empty").mkdir()
    r = service.post("/v1/models", json={"name": "x", "path": str(service.allowed_root / "empty")})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "path"
