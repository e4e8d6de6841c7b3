"""The `compare` kind (issue 30, item 4): every selector on one within-domain pool, each evaluated
against the same random arm; the table, the overlaps, the costs and the winner, through the HTTP
API; a killed service resumes a compare without redoing finished selectors; bad input is a 4xx."""
from __future__ import annotations

import re
import signal
import time

import httpx
import pytest
from rich.console import Console

from service import cli

from tests.conftest import ALICE
from tests.corpus_gen import corpus
from tests.helpers import submit, upload, wait
from tests.net import free_port, start_service_process
from workers.driver.engine import derived_id
from workers.jobs.compare import SELECTORS, paired_winner

# The smallest proxies and models that train: the test is about the bake-off, not the selectors' quality.
FAST_TRAIN = {"preset": "tiny", "tokens": 1_000, "vocab_size": 256, "batch_size": 4, "seq_len": 16, "max_docs": 100}
OPTIONS = {"classifier": {"buckets": 2**14, "dim": 16, "epochs": [5], "lr": [0.5]},
           "embedding": {"actors": 1},
           "color_filter": {"prior": {"train": FAST_TRAIN},
                            "conditional": {"finetune": {"epochs": 1, "max_tokens": 1_000, "warmup_steps": 5,
                                                         "batch_size": 4}}}}
COUNT = 30


def bench(client, name: str) -> dict:
    """A within-domain bench: a mixed pool, an astronomy target and an astronomy validation set."""
    pool = upload(client, corpus(200, seed=21, min_words=10, max_words=20), name=f"{name}-pool")
    target = upload(client, corpus(40, seed=22, domains=["astronomy"], min_words=10, max_words=20, prefix="t"),
                    name=f"{name}-target")
    val = upload(client, corpus(20, seed=23, domains=["astronomy"], min_words=10, max_words=20, prefix="v"),
                 name=f"{name}-val")
    return {"pool": pool["id"], "target": target["id"], "validation": val["id"], "select": {"count": COUNT},
            "proxy": FAST_TRAIN, "repeats": 2}


def query(client, sql: str, **tables) -> list:
    r = client.post("/v1/query", json={"sql": sql, "tables": tables})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


@pytest.fixture(scope="module")
def spec(service):
    return bench(service, "cmp")


def test_compare_reports_every_selector_against_one_random_arm(service, spec):
    job = wait(service, submit(service, "compare", {**spec, "options": OPTIONS})["id"], timeout=600)
    assert job["state"] == "succeeded", job
    s = job["result"]["summary"]
    rows = {r["selector"]: r for r in s["table"]}
    assert list(rows) == list(SELECTORS)
    evals = {}
    for name, r in rows.items():
        assert isinstance(r["gain"], float) and isinstance(r["gain_se"], float) and len(r["gains"]) == 2, r
        assert r["selected"] == COUNT and r["cpu_s"] > 0 and r["wall_s"] > 0 and r["evaluate_cpu_s"] > 0, r
        assert service.get(f"/v1/manifests/{r['manifest_id']}").json()["num_selected"] == COUNT
        part = service.get(f"/v1/jobs/{r['job_id']}").json()
        assert (part["kind"], part["state"], part["result"]["manifest_id"]) == (name, "succeeded", r["manifest_id"])
        assert part["result"]["summary"]["part_of"] == job["id"]
        evals[name] = service.get(f"/v1/jobs/{r['evaluate_job_id']}").json()
        assert evals[name]["spec"]["selection"] == r["manifest_id"]
    # One random arm for all: trained by the first evaluation, read back by the others, so each
    # repeat's random loss is the same number for every selector (the gains are paired).
    first = rows["random"]["evaluate_job_id"]
    assert rows["random"]["random_arm"] == "trained"
    assert all(rows[n]["random_arm"] == f"reused from job {first}" for n in SELECTORS[1:])
    losses = {tuple(e["result"]["summary"]["random"]["validation_losses"]) for e in evals.values()}
    assert len(losses) == 1 and list(losses)[0] == tuple(s["random"]["validation_losses"])
    # The overlap matrix is |A ∩ B| / k, as a query over two of the manifests says.
    m = s["overlap"]
    assert set(m) == set(SELECTORS) and all(m[a][a] == 1.0 and m[a][b] == m[b][a] for a in m for b in m)
    both = query(service, "SELECT count(*) FROM a JOIN b USING (doc_id) WHERE a.selected AND b.selected",
                 a=rows["dsir"]["manifest_id"], b=rows["classifier"]["manifest_id"])[0][0]
    assert m["dsir"]["classifier"] == both / COUNT
    w = s["winner"]
    assert w["best"] == max(rows, key=lambda n: rows[n]["gain"]) and w["repeats"] == 2 and w["statement"]
    assert (w["selector"] is None) == (w["p_value"] >= 0.05)


def test_the_cli_prints_gains_with_their_errors_costs_and_overlaps():
    summary = {"table": [
        {"selector": "random", "gain": 0.001, "gain_se": 0.004, "selected": 40, "cpu_s": 1.25, "wall_s": 2.5,
         "manifest_id": "man_" + "a" * 20},
        {"selector": "dsir", "gain": 0.0312, "gain_se": 0.0051, "selected": 40, "cpu_s": 3.0, "wall_s": 4.0,
         "manifest_id": "man_" + "b" * 20}],
        "overlap": {"random": {"random": 1.0, "dsir": 0.1}, "dsir": {"random": 0.1, "dsir": 1.0}}}
    console = Console(record=True, width=200)
    for table in cli.compare_tables(summary):
        console.print(table)
    lines = console.export_text().splitlines()
    dsir = next(line for line in lines if "dsir" in line and "man_" in line)
    assert re.search(r"dsir\s+│\s+0\.0312\s+│\s+0\.0051\s+│\s+40\s+│\s+3\.0\s+│\s+4\.0\s+│\s+man_b{20}", dsir), dsir
    assert any(re.search(r"random\s+│\s+1\s+│\s+0\.1\b", line) for line in lines), lines


def test_the_winner_is_named_only_when_the_paired_test_says_so():
    clear = paired_winner({"dsir": [0.10, 0.12, 0.11], "random": [0.0, 0.01, -0.01]})
    assert clear["selector"] == "dsir" and clear["p_value"] < 0.01 and clear["statement"].startswith("dsir wins")
    # Ahead on the mean, but one repeat of two goes the other way: not significant.
    close = paired_winner({"dsir": [0.10, 0.00], "classifier": [0.04, 0.05]})
    assert close["selector"] is None and close["best"] == "dsir" and close["statement"].startswith("no clear winner")
    # The same lead in every repeat: no spread, a certain winner.
    assert paired_winner({"a": [0.2, 0.3], "b": [0.1, 0.2]})["selector"] == "a"


@pytest.mark.parametrize("change, field, words", [
    ({"selectors": []}, "spec.selectors", "at least 1"),
    ({"selectors": ["dsir", "random", "dsir"]}, "spec.selectors", "'dsir' twice"),
    ({"selectors": ["random", "dsri"]}, "spec.selectors.1", "'dsir'"),
    ({"selectors": ["random"], "options": {"dsir": {"buckets": 4096}}}, "spec", "dsir is not among selectors"),
    ({"options": {"dsir": {"pool": "x"}}}, "spec.options.dsir.pool", "unknown field 'pool'"),
    ({"repeats": 1}, "spec.repeats", "greater than or equal to 2"),
    ({"proxy": {**FAST_TRAIN, "tokens": 10**10}}, "spec.proxy.tokens", "THRESHER_MAX_TRAIN_TOKENS"),
    ({"options": {"color_filter": {"prior": {"train": {"tokens": 10**10}}}}},
     "spec.options.color_filter.prior.train.tokens", "THRESHER_MAX_TRAIN_TOKENS"),
])
def test_bad_compare_specs_are_refused_naming_the_field(service, spec, change, field, words):
    before = len(service.get("/v1/jobs", params={"kind": "compare", "limit": 1000}).json()["items"])
    r = service.post("/v1/jobs", json={"kind": "compare", "spec": {**spec, **change}})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["details"]["field"] == field and words in err["message"], err
    assert len(service.get("/v1/jobs", params={"kind": "compare", "limit": 1000}).json()["items"]) == before


def test_a_killed_service_resumes_a_compare_without_redoing_finished_selectors(tmp_path, ray_address):
    port = free_port()
    proc = start_service_process(tmp_path, port, ray_address, THRESHER_SHARD_SIZE="100")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ALICE, timeout=30)
    try:
        spec = {**bench(client, "resume"), "selectors": ["random", "dsir"]}
        job = submit(client, "compare", spec)
        part = derived_id("job", job["id"], "random")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and client.get(f"/v1/jobs/{part}").status_code == 404:
            time.sleep(0.05)
        finished = client.get(f"/v1/jobs/{part}").json()
        assert finished["state"] == "succeeded", finished
        scores = tmp_path / "store" / "jobs" / part / "scores"
        before = {f.name: f.stat().st_mtime_ns for f in scores.iterdir()}
        assert len(before) == 2
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait()

        proc = start_service_process(tmp_path, port, ray_address, THRESHER_SHARD_SIZE="100")
        done = wait(client, job["id"], timeout=300)
        assert done["state"] == "succeeded", done
        # The finished selector was read back, not run again: same record, same score parts.
        assert client.get(f"/v1/jobs/{part}").json()["finished_at"] == finished["finished_at"]
        assert {f.name: f.stat().st_mtime_ns for f in scores.iterdir()} == before
        rows = done["result"]["summary"]["table"]
        assert [r["selector"] for r in rows] == ["random", "dsir"] and rows[0]["job_id"] == part
        assert all(r["gain_se"] is not None and r["selected"] == COUNT for r in rows)
    finally:
        proc.kill()
        proc.wait()
        client.close()
