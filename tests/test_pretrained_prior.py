"""A pretrained prior for CoLoR-Filter (issue 30 item 3): a registered Hugging Face model is the
prior and its fine-tune on the target the conditional.

Everything runs on the live service (real HTTP)."""
from __future__ import annotations

import httpx
import pytest

from tests.corpus_gen import corpus
from tests.helpers import run_ok, upload
from tests.test_cli_live import hf_checkpoint


def alice(live_service) -> httpx.Client:
    return httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {live_service.key}"},
                        timeout=60)


@pytest.fixture(scope="module")
def api(live_service):
    with alice(live_service) as c:
        yield c


def rows(api, sql: str, manifest_id: str) -> list:
    r = api.post("/v1/query", json={"sql": sql, "tables": {"m": manifest_id}})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_registered_hugging_face_model_is_fine_tuned_as_the_conditional(api, live_service):
    """It was refused ("fine-tuning needs a model trained by Thresher"): a registered model could be
    the prior only with a given conditional. Now its fine-tune is stored and scores like any model."""
    texts = [d["text"] for d in corpus(120, seed=61)]
    r = api.post("/v1/models", json={"name": "tiny-hf", "path": str(hf_checkpoint(live_service.allowed_root / "tiny-hf",
                                                                                   texts))})
    assert r.status_code == 201, r.text
    prior = r.json()["id"]
    pool = upload(api, corpus(60, seed=62), name="hf-pool")
    target = upload(api, corpus(20, seed=63, domains=["cooking"]), name="hf-target")
    job = run_ok(api, "color_filter", {"pool": pool["id"], "target": target["id"], "select": {"count": 10},
                                       "prior": {"model": prior},
                                       "conditional": {"finetune": {"epochs": 2, "holdout_fraction": 0.2}}}, timeout=300)
    s = job["result"]["summary"]
    assert s["num_selected"] == 10 and "loss_reduction" in s["target_holdout"]
    cond = api.get(f"/v1/models/{job['result']['model_id']}").json()
    assert cond["source"] == "trained" and cond["meta"]["format"] == "huggingface"
    assert cond["meta"]["init_model"] == prior and cond["meta"]["context"] == 64
    # The stored fine-tune loads again (as a Hugging Face model, without an eos prepended) and scores.
    scored = run_ok(api, "score", {"corpus": target["id"], "model": cond["id"]}, timeout=300)
    assert rows(api, "SELECT count(*), count(loss) FROM m", scored["result"]["manifest_id"]) == [[20, 20]]
