"""Training-time curation over HTTP: reweight jobs and curriculum runs driven by a training loop."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import ALICE, make_settings
from tests.corpus_gen import corpus
from tests.helpers import run_ok, upload

TINY = {"preset": "tiny", "tokens": 40_000, "vocab_size": 300, "batch_size": 8, "seq_len": 32}


def loss_of(doc_id: str) -> float:
    """A deterministic stand-in for a training loop's per-sample loss."""
    return 1.0 + (int(doc_id[1:]) * 7919 % 100) / 25.0


def test_curriculum_run_over_http_survives_restart(tmp_path, ray_address):
    settings = make_settings(tmp_path, ray_address)
    with TestClient(create_app(settings), headers=ALICE) as c:
        pool = upload(c, corpus(200, seed=41), name="train")
        job = run_ok(c, "curriculum", {"corpus": pool["id"], "method": "seta", "epochs": 4, "prune_ratio": 0.3,
                                       "num_groups": 4, "window_scale": 0.5, "delta": 0.75, "seed": 1})
        run = job["result"]["curriculum_id"]
        info = c.get(f"/v1/curricula/{run}").json()
        assert info["method"] == "seta" and info["epoch"] == 0 and info["num_samples"] == 200

        e0 = c.get(f"/v1/curricula/{run}/epochs/0").json()
        assert len(e0["doc_ids"]) == 140 and len(set(e0["doc_ids"])) == 140 and e0["weights"] is None
        assert c.get(f"/v1/curricula/{run}/epochs/1").status_code == 409  # no losses yet
        posted = c.post(f"/v1/curricula/{run}/losses", json={"epoch": 0, "losses": [
            {"doc_id": d, "loss": loss_of(d)} for d in e0["doc_ids"]]})
        assert posted.status_code == 200, posted.text
        assert posted.json()["losses_posted"] == 140

        # Bad posts answer 4xx and change nothing.
        before = c.get(f"/v1/curricula/{run}").json()
        for body, status in [
            ({"epoch": 0, "losses": [{"doc_id": e0["doc_ids"][0], "loss": 1.0}, {"doc_id": "nope", "loss": 1.0}]}, 422),
            ({"epoch": 0, "losses": [{"doc_id": e0["doc_ids"][0], "loss": math.inf}]}, 422),
            ({"epoch": 1, "losses": [{"doc_id": e0["doc_ids"][0], "loss": 1.0}]}, 409),
            ({"epoch": 0, "losses": []}, 422),
        ]:
            r = c.post(f"/v1/curricula/{run}/losses", content=json.dumps(body),  # allows NaN/Infinity
                       headers={"content-type": "application/json"})
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["message"]
        assert c.get(f"/v1/curricula/{run}").json() == before
        assert c.get(f"/v1/curricula/{run}/epochs/3").status_code == 409

        e1 = c.get(f"/v1/curricula/{run}/epochs/1").json()
        # SeTa's first windowed epoch: clusters [1, 2] of 4 on the 140 kept → about half of them.
        assert 40 <= len(e1["doc_ids"]) <= 100
        assert c.get(f"/v1/curricula/{run}").json()["epoch"] == 1

    # Restart the service between epochs: the run continues where it was.
    with TestClient(create_app(settings), headers=ALICE) as c:
        assert c.get(f"/v1/curricula/{run}").json()["epoch"] == 1
        assert c.get(f"/v1/curricula/{run}/epochs/1").json() == e1
        for epoch in (1, 2):
            plan = c.get(f"/v1/curricula/{run}/epochs/{epoch}").json()
            table = pa.table({"doc_id": plan["doc_ids"], "loss": [loss_of(d) for d in plan["doc_ids"]]})
            sink = io.BytesIO()
            pq.write_table(table, sink)
            r = c.post(f"/v1/curricula/{run}/losses", params={"epoch": epoch}, content=sink.getvalue(),
                       headers={"content-type": "application/vnd.apache.parquet"})
            assert r.status_code == 200, r.text
            c.get(f"/v1/curricula/{run}/epochs/{epoch + 1}")
        final = c.get(f"/v1/curricula/{run}").json()
        assert final["epoch"] == 3
        # Epoch 3 anneals on a random 70% subset.
        last = pq.read_table(io.BytesIO(c.get(f"/v1/curricula/{run}/epochs/3", params={"format": "parquet"}).content))
        assert last.num_rows == 140
        assert 0.3 < final["saved_fraction"] < 0.7


def test_infobatch_weights(service):
    pool = upload(service, corpus(100, seed=42), name="ib")
    run = run_ok(service, "curriculum", {"corpus": pool["id"], "method": "infobatch", "epochs": 3,
                                         "prune_ratio": 0.5, "delta": 0.67})["result"]["curriculum_id"]
    e0 = service.get(f"/v1/curricula/{run}/epochs/0").json()
    assert len(e0["doc_ids"]) == 100 and set(e0["weights"]) == {1.0}  # all scores equal: none below the mean
    service.post(f"/v1/curricula/{run}/losses", json={"epoch": 0, "losses": [
        {"doc_id": d, "loss": loss_of(d)} for d in e0["doc_ids"]]})
    e1 = service.get(f"/v1/curricula/{run}/epochs/1").json()
    losses = np.array([loss_of(f"d{i}") for i in range(100)])
    below = int((losses < losses.mean()).sum())
    assert len(e1["doc_ids"]) == 100 - (below - round(below * 0.5))
    for d, w in zip(e1["doc_ids"], e1["weights"]):
        assert w == (2.0 if loss_of(d) < losses.mean() else 1.0)


@pytest.fixture(scope="module")
def tiny_model(service):
    pool = upload(service, corpus(300, seed=43), name="lm")
    job = run_ok(service, "train_model", {"corpus": pool["id"], **TINY}, timeout=300)
    model = service.get(f"/v1/models/{job['result']['model_id']}").json()
    assert model["source"] == "trained" and model["meta"]["train_tokens"] > 0
    return pool, model


def test_reweight_job(service, tiny_model):
    pool, model = tiny_model
    job = run_ok(service, "reweight", {"corpus": pool["id"], "model": model["id"], "strategy": "quadratic",
                                       "r": 0.4, "batch_size": 32, "seed": 0}, timeout=300)
    t = pq.read_table(io.BytesIO(service.get(f"/v1/manifests/{job['result']['manifest_id']}/download").content))
    assert {"doc_id", "batch", "position", "loss", "weight"} <= set(t.column_names)
    assert t.num_rows == 300 and len(set(t["doc_id"].to_pylist())) == 300
    batch, weight = t["batch"].to_numpy(), t["weight"].to_numpy()
    for b in np.unique(batch):
        w = weight[batch == b]
        assert w.mean() == pytest.approx(1.0) and w.max() / w.min() <= math.exp(1 / 0.4) + 1e-9

    # From a score manifest instead of a model: the same losses.
    scored = run_ok(service, "score", {"corpus": pool["id"], "model": model["id"]})
    again = run_ok(service, "reweight", {"corpus": pool["id"], "losses": scored["result"]["manifest_id"],
                                         "strategy": "quadratic", "r": 0.4, "batch_size": 32, "seed": 0})
    t2 = pq.read_table(io.BytesIO(service.get(f"/v1/manifests/{again['result']['manifest_id']}/download").content))
    assert t2["doc_id"].to_pylist() == t["doc_id"].to_pylist()
    assert np.allclose(t2["weight"].to_numpy(), weight)


def test_curriculum_with_initial_losses(service, tiny_model):
    pool, model = tiny_model
    run = run_ok(service, "curriculum", {"corpus": pool["id"], "method": "seta", "epochs": 2, "num_groups": 3,
                                         "model": model["id"]}, timeout=300)["result"]["curriculum_id"]
    assert service.get(f"/v1/curricula/{run}").json()["num_samples"] == 300
    assert len(service.get(f"/v1/curricula/{run}/epochs/0").json()["doc_ids"]) == 270
