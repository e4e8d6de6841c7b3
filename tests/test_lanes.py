"""Light jobs never wait behind training; a waiting job says why; progress is a whole-job plan."""
from __future__ import annotations

import time

import pytest

from tests.corpus_gen import corpus
from tests.helpers import run_ok, submit, upload, wait
from workers.driver.engine import job_plan, pending_eta, running_eta

LIGHT_WITHIN_S = 15.0


def until(client, job_id, check, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if check(job):
            return job
        assert job["state"] not in ("succeeded", "failed", "cancelled"), job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: no {what} after {timeout}s: {job}")


@pytest.fixture(scope="module")
def busy(service):
    """A default color_filter whose prior trains for far longer than this module runs: every CPU
    of the session's Ray is reserved by its training task (cancelled at the end)."""
    pool = upload(service, corpus(300, seed=1), name="lanes-pool")
    target = upload(service, corpus(60, seed=2, domains=["astronomy"]), name="lanes-target")
    picked = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 250}})
    cf = submit(service, "color_filter", {"pool": pool["id"], "target": target["id"], "select": {"fraction": 0.1},
                                          "prior": {"train": {"tokens": 50_000_000}}})
    try:
        # The prior's task posts its budget once it runs: from then on it holds every CPU.
        until(service, cf["id"], lambda j: j["progress"].get("stage") == "train_prior" and j["progress"]["total"],
              "training running", timeout=120)
        yield {"pool": pool, "target": target, "manifest": picked["result"]["manifest_id"], "cf": cf["id"]}
    finally:
        service.post(f"/v1/jobs/{cf['id']}/cancel")


def timed(client, job_id):
    t0 = time.monotonic()
    job = wait(client, job_id, timeout=120)
    return job, time.monotonic() - t0


def test_an_export_finishes_at_once_while_a_training_holds_every_cpu(service, busy):
    r = service.post(f"/v1/manifests/{busy['manifest']}/export", json={"name": "lanes-export"})
    assert r.status_code == 202, r.text
    job, seconds = timed(service, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert service.get(f"/v1/corpora/{job['result']['corpus_id']}").json()["num_docs"] == 250
    assert seconds < LIGHT_WITHIN_S, f"the export took {seconds:.1f}s beside the training"
    assert service.get(f"/v1/jobs/{busy['cf']}").json()["state"] == "running"


def test_a_small_dsir_finishes_at_once_while_a_training_holds_every_cpu(service, busy):
    job, seconds = timed(service, submit(service, "dsir", {"pool": busy["pool"]["id"], "target": busy["target"]["id"],
                                                           "select": {"count": 30}})["id"])
    assert job["state"] == "succeeded" and job["result"]["summary"]["num_selected"] == 30, job
    assert seconds < LIGHT_WITHIN_S, f"the dsir took {seconds:.1f}s beside the training"
    # Its progress is a plan whose every stage is done.
    assert [(p["stage"], p["state"]) for p in job["progress"]["plan"]] == [
        ("fit", "done"), ("score", "done"), ("select", "done")]
    assert job["progress"]["eta_s"] == 0


def test_a_corpus_filter_finishes_at_once_while_a_training_holds_every_cpu(service, busy):
    job, seconds = timed(service, submit(service, "filter", {"manifest": busy["manifest"], "where": "selected"})["id"])
    assert job["state"] == "succeeded", job
    assert service.get(f"/v1/corpora/{job['result']['corpus_id']}").json()["num_docs"] == 250
    assert seconds < LIGHT_WITHIN_S, f"the filter took {seconds:.1f}s beside the training"
    assert [p["stage"] for p in job["progress"]["plan"]] == ["where", "export"]


def test_jobs_that_wait_say_why(service, busy):
    """A heavy job beside the training waits for its CPUs and names the job holding them; with
    both heavy slots taken, the next heavy job waits in `queued` and names the jobs running."""
    small = {"corpus": busy["target"]["id"], "preset": "tiny", "tokens": 20_000, "vocab_size": 512}
    second = submit(service, "train_model", small)
    third = submit(service, "train_model", small, name="third")
    try:
        job = until(service, second["id"], lambda j: j["progress"].get("waiting"), "reason to wait")
        assert job["state"] == "running"
        assert f"waiting for CPUs held by job {busy['cf']} (train_prior, color_filter)" in job["progress"]["waiting"]
        job = until(service, third["id"], lambda j: j["progress"].get("waiting"), "reason to wait")
        assert job["state"] == "queued"
        assert job["progress"]["waiting"].startswith(
            f"waiting for a job slot: 2 jobs running ({busy['cf']}, {second['id']}; THRESHER_MAX_CONCURRENT_JOBS=2)")
        # The training's own progress: the whole plan, its stage counted up to a budget.
        cf = service.get(f"/v1/jobs/{busy['cf']}").json()["progress"]
        assert [(p["stage"], p["state"]) for p in cf["plan"]] == [
            ("train_prior", "running"), ("finetune", "pending"), ("score", "pending"), ("select", "pending")]
        assert "waiting" not in cf or cf["waiting"] is None
    finally:
        for j in (third, second):
            service.post(f"/v1/jobs/{j['id']}/cancel")
    assert wait(service, second["id"], timeout=60)["state"] == "cancelled"


# -- the plan and its ETA (pure arithmetic) ---------------------------------------------------------

STAGES = [{"stage": "train_prior", "done": 1000, "total": 1000, "unit": "tokens", "seconds": 10.0},
          {"stage": "finetune", "done": 300, "total": 3000, "unit": "tokens", "seconds": 3.0, "up_to": 3000}]
PLAN = ["train_prior", "finetune", "score", "select"]


def test_the_plan_lists_done_running_and_pending_stages_with_a_whole_job_eta():
    history = {"score": {"jobs": 3, "seconds": 40.0, "per_doc": 0.01, "stop_fraction": None},
               "select": {"jobs": 3, "seconds": 2.0, "per_doc": None, "stop_fraction": None}}
    plan = job_plan(STAGES, PLAN, rate=100.0, history=history, input_docs=2000, up_to=frozenset({"finetune"}))
    assert [(p["stage"], p["state"]) for p in plan] == [
        ("train_prior", "done"), ("finetune", "running"), ("score", "pending"), ("select", "pending")]
    running = plan[1]
    # No earlier fine-tune stopped early: the ETA runs to the ceiling, and says so.
    assert running["eta_s"] == 27.0 and running["up_to"] == 3000 and "ceiling" in running["basis"]
    assert plan[2]["eta_s"] == 20.0 and "10 s per 1,000 input documents" in plan[2]["basis"]
    assert plan[3]["eta_s"] == 2.0  # no sizes recorded: the median seconds
    assert sum(p["eta_s"] for p in plan) == 49.0


def test_a_training_that_may_stop_early_is_timed_to_where_earlier_runs_stopped():
    history = {"finetune": {"jobs": 4, "seconds": 30.0, "per_doc": None, "stop_fraction": 1 / 3}}
    plan = job_plan(STAGES, PLAN[:2], rate=100.0, history=history, input_docs=0, up_to=frozenset({"finetune"}))
    assert plan[1]["expected_total"] == 1000 and plan[1]["eta_s"] == 7.0
    # Past where earlier runs stopped, the ceiling is all that is known.
    assert running_eta(2000, 3000, 100.0, history["finetune"], True)["eta_s"] == 10.0


def test_unknown_is_said_not_invented():
    assert pending_eta(None, 100) == {"eta_s": None, "basis": "unknown: no earlier job of this kind ran this stage"}
    assert running_eta(0, 10, None, None, False)["eta_s"] is None
    plan = job_plan([], PLAN, None, {}, 10)
    assert all(p["state"] == "pending" and p["eta_s"] is None for p in plan)


def test_a_planned_stage_a_resumed_job_skipped_is_not_left_pending():
    """A resumed color_filter whose prior was trained already starts at its fine-tune."""
    plan = job_plan(STAGES[1:], PLAN, 100.0, {}, 0)
    assert [p["stage"] for p in plan] == ["finetune", "score", "select"]
