"""Every spec field that sizes work is bounded before the job is queued (issue 32: a projection grid
that crash-looped the service, a regularisation that ran 26 minutes, budgets of centuries, models
too large to hold): 422 naming the field and the limit (and the setting, where one sets it), and
nothing queued."""
from __future__ import annotations

import time

import pytest

from tests.corpus_gen import corpus
from tests.helpers import upload


@pytest.fixture(scope="module")
def ids(service):
    pool = upload(service, corpus(60, seed=91), name="bounds-pool")["id"]
    val = upload(service, corpus(30, seed=92, prefix="v"), name="bounds-val")["id"]
    return pool, val


def projection(pool, val, m=3, **over):
    return {"sources": [{"corpus": pool, "price_per_doc": 1.0, "available_docs": 1000}] * m, "validation": val,
            "pilot_sizes": [40, 80], "target_sizes": [160], **over}


def job_count(service) -> int:
    return len(service.get("/v1/jobs", params={"limit": 1000}).json()["items"])


def refused(service, kind, spec) -> dict:
    """The 422 a spec gets; it must leave no job behind."""
    before = job_count(service)
    r = service.post("/v1/jobs", json={"kind": kind, "spec": spec})
    assert r.status_code == 422, r.text
    assert job_count(service) == before, "a refused spec queued a job"
    return r.json()["error"]


# -- limits set by the server (422 limit_exceeded, naming the setting) ----------------------------

def settings_cases(pool, val):
    huge = {"preset": "tiny", "tokens": 10**15}
    return [
        # A 1e-6 grid over 3 sources is 5e11 mixtures (the old code enumerated (k+1)^m in the service).
        ("projection", projection(pool, val, auto={"grid_step": 1e-3}), "spec.auto.grid_step",
         "THRESHER_MAX_PROJECTION_MIXTURES"),
        ("projection", projection(pool, val, m=12), "spec.auto.grid_step", "THRESHER_MAX_PROJECTION_MIXTURES"),
        ("train_model", {"corpus": pool, "tokens": 10**15}, "spec.tokens", "THRESHER_MAX_TRAIN_TOKENS"),
        ("projection", projection(pool, val, auto={"tokens": 10**15}), "spec.auto.tokens", "THRESHER_MAX_TRAIN_TOKENS"),
        ("projection", projection(pool, val, auto={"proxy": huge}), "spec.auto.proxy.tokens",
         "THRESHER_MAX_TRAIN_TOKENS"),
        ("color_filter", {"pool": pool, "target": val, "select": {"fraction": 0.5}, "prior": {"train": huge}},
         "spec.prior.train.tokens", "THRESHER_MAX_TRAIN_TOKENS"),
        ("color_filter", {"pool": pool, "target": val, "select": {"fraction": 0.5},
                          "conditional": {"finetune": {"max_tokens": 10**15}}},
         "spec.conditional.finetune.max_tokens", "THRESHER_MAX_TRAIN_TOKENS"),
        # 4096 wide: 420M parameters at the tiny preset's two layers; 48 × 8192: 39B.
        ("train_model", {"corpus": pool, "architecture": {"n_embd": 4096}}, "spec.architecture",
         "THRESHER_MAX_MODEL_PARAMS"),
        ("train_model", {"corpus": pool, "architecture": {"n_embd": 8192, "n_layer": 48, "n_head": 64}},
         "spec.architecture", "THRESHER_MAX_MODEL_PARAMS"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_specs_over_a_server_limit_are_refused_at_submit(service, ids, case):
    kind, spec, field, setting = settings_cases(*ids)[case]
    err = refused(service, kind, spec)
    assert err["code"] == "limit_exceeded", err
    assert err["details"]["field"] == field and err["details"]["setting"] == setting, err
    assert setting in err["message"] and f"{err['details']['limit']:,}" in err["message"], err


def test_a_projection_at_the_limit_is_accepted(service, ids):
    """1/22 over 3 sources is C(24, 2) = 276 mixtures (refused), 1/21 is 253 (accepted)."""
    from workers.jobs.projection import grid_size
    pool, val = ids
    assert grid_size(3, 1 / 22) == 276 and grid_size(3, 1 / 21) == 253
    refused(service, "projection", projection(pool, val, auto={"grid_step": 1 / 22}))
    r = service.post("/v1/jobs", json={"kind": "projection", "spec": projection(pool, val, auto={"grid_step": 1 / 21})})
    assert r.status_code == 202, r.text
    assert service.post(f"/v1/jobs/{r.json()['id']}/cancel").json()["state"] == "cancelled"


def test_measured_pilots_are_bounded_per_size():
    from workers.jobs.projection import ProjectionSpec
    from workers.specs import SpecLimits, check_limits
    pilots = [{"size": n, "mixture": [i / 10, 1 - i / 10], "metric": 1.0} for n in (40, 80) for i in range(11)]
    spec = ProjectionSpec.model_validate({**projection("a", "b", m=2), "pilots": pilots})
    check_limits(spec, SpecLimits(max_projection_mixtures=11))
    with pytest.raises(Exception, match=r"spec.pilots: 11 measured pilots at size 40; the limit is 10"):
        check_limits(spec, SpecLimits(max_projection_mixtures=10))


def test_the_grid_is_counted_in_closed_form_and_made_in_time_of_its_size():
    import itertools

    from workers.jobs.projection import grid_size, simplex_grid
    for m in (2, 3, 5):
        for step in (1, 0.5, 0.25, 1 / 6):
            k = round(1 / step)
            slow = [[c / k for c in combo] for combo in itertools.product(range(k + 1), repeat=m) if sum(combo) == k]
            assert simplex_grid(m, step) == slow and grid_size(m, step) == len(slow)
    started = time.monotonic()
    assert grid_size(3, 1e-6) == 500_001_500_001 and grid_size(12, 0.25) == 1365
    assert len(simplex_grid(12, 0.5)) == 78  # (k+1)^m = 531,441 candidates were filtered before
    assert time.monotonic() - started < 1


# -- limits of the methods themselves (422 naming the field) --------------------------------------

def static_cases(pool, val):
    return [
        # Sinkhorn does not converge in float64 below 5e-3 (1e-300 ran for 26 minutes).
        ("projection", projection(pool, val, reg=1e-300), "spec.reg"),
        ("projection", projection(pool, val, reg=1e-3), "spec.reg"),
        ("projection", projection(pool, val, reg=1e6), "spec.reg"),
        ("projection", projection(pool, val, auto={"grid_step": 1e-9}), "spec.auto.grid_step"),
        ("projection", projection(pool, val, target_sizes=[10**30]), "spec.target_sizes.0"),
        ("projection", projection(pool, val, pilot_sizes=[40, 10**30]), "spec.pilot_sizes.1"),
        ("projection", projection(pool, val, target_sizes=list(range(100, 4000, 100))), "spec.target_sizes"),
        ("projection", projection(pool, val, pilot_sizes=[40, 10**8]), "spec"),  # a proxy on 1e8 documents
        ("projection", {**projection(pool, val), "sources": [
            {"corpus": pool, "price_per_doc": 1.0, "available_docs": 10**30}] * 2}, "spec.sources.0.available_docs"),
        ("projection", projection(pool, val, m=65), "spec.sources"),
        ("projection", projection(pool, val, m=30), "spec"),  # 30 × 400 revealed points in one OT
        ("projection", projection(pool, val, budget=1e300), "spec.budget"),
        ("train_model", {"corpus": pool, "batch_size": 4096, "seq_len": 8192}, "spec"),
        ("train_model", {"corpus": pool, "architecture": {"n_embd": 100, "n_head": 3}}, "spec"),
        ("train_model", {"corpus": pool, "seed": 10**30}, "spec.seed"),
        ("train_model", {"corpus": pool, "max_docs": 10**9}, "spec.max_docs"),
        ("score", {"corpus": pool, "model": "mdl_x", "options": {"batch_tokens": 10**9}}, "spec.options.batch_tokens"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_specs_beyond_what_the_method_can_use_are_refused(service, ids, case):
    kind, spec, field = static_cases(*ids)[case]
    err = refused(service, kind, spec)
    assert err["code"] == "validation_error" and err["details"]["field"] == field, err


def test_a_huge_hugging_face_config_is_refused_before_loading(service):
    """A config.json declaring 8192 wide (no weights at all): refused by what it declares."""
    from transformers import GPT2Config
    ckpt = service.allowed_root / "huge-config"
    GPT2Config(n_embd=8192, n_layer=48, n_head=64).save_pretrained(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\0" * 16)  # would fail to load, if it were loaded
    r = service.post("/v1/models", json={"name": "huge", "path": str(ckpt)})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "limit_exceeded" and err["details"]["setting"] == "THRESHER_MAX_MODEL_PARAMS", err
    assert "8,192 wide" in err["message"], err
