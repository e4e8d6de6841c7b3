"""A new job kind is its module and its test. tests/kind_example.py (`word_count`) is registered
into a service at its start, and nothing else changes: GET /v1/kinds lists it, POST /v1/jobs
validates its spec, the engine runs it one task per shard (JobContext.map_shards) and selects with
workers.jobs.common, and the Python client drives it through the method it makes from the listing."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALICE
from tests.corpus_gen import corpus
from tests.helpers import upload
from tests.net import free_port, start_service_process

ROOT = Path(__file__).resolve().parent.parent
REGISTER = "import tests.kind_example as k, workers.registry as r; r.KINDS[k.KIND.name] = k.KIND"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_address):
    """A service whose registry holds `word_count`; shards of 20 documents. Its Ray workers import
    the kind's module from the repository (PYTHONPATH reaches them through the driver's path)."""
    port = free_port()
    proc = start_service_process(tmp_path_factory.mktemp("kind-home"), port, ray_address, preload=REGISTER,
                                 THRESHER_SHARD_SIZE="20",
                                 PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ALICE, timeout=60) as client:
            yield client
    finally:
        proc.kill()
        proc.wait()


def test_a_kind_registered_in_its_module_runs_per_shard_over_http_and_through_the_client(served):
    from thresher import Client
    kinds = {k["name"]: k for k in served.get("/v1/kinds").json()["items"]}
    assert kinds["word_count"]["refs"] == {"pool": "corpora"}
    assert "min_words" in kinds["word_count"]["spec_schema"]["properties"]

    blanks = [{"id": "blank0", "text": ""}, {"id": "blank1", "text": "  \n\t "}]
    short = [{"id": f"short{i}", "text": "two words"} for i in range(3)]
    pool = upload(served, corpus(95, seed=31, min_words=5, max_words=80) + blanks + short, name="wc")
    assert pool["num_shards"] == 5

    # Its spec is checked like any kind's: a bad field is a 422 naming it, and no job is made.
    before = len(served.get("/v1/jobs").json()["items"])
    r = served.post("/v1/jobs", json={"kind": "word_count", "spec": {"pool": pool["id"], "select": {"count": 5},
                                                                      "min_words": 0}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "spec.min_words", r.text
    assert len(served.get("/v1/jobs").json()["items"]) == before

    client = Client(str(served.base_url), "key-alice", retries=0)
    job = client.word_count("wc", count=10, min_words=3).wait(timeout=180)
    assert job.summary["num_rows"] == 100 and job.summary["num_selected"] == 10

    rec = served.get(f"/v1/jobs/{job.id}").json()
    count = next(s for s in rec["progress"]["stages"] if s["stage"] == "count")
    assert (count["done"], count["total"], count["unit"]) == (5, 5, "shards")
    assert sum(rec["result"]["nodes"]["count"].values()) == 5   # one task per shard, each reporting its node

    rows = served.post("/v1/query", json={"tables": {"m": job.manifest_id}, "sql": """
        SELECT count(*) FILTER (WHERE score IS NOT NULL AND (n_tokens < 3 OR doc_id LIKE 'blank%')),
               min(n_tokens) FILTER (WHERE selected) >= max(n_tokens) FILTER (WHERE NOT selected AND score IS NOT NULL)
        FROM m"""}).json()["rows"]
    assert rows == [[0, True]]


def test_plans_list_the_stages_a_spec_runs():
    """The plan is what the dashboard and `jobs watch` show as still to come: a selecting kind ends
    with its select stage, and evaluate measures the selection's characters only when it matches them."""
    from workers.registry import KINDS
    ev = KINDS["evaluate"].spec.model_validate({"selection": "man_1", "validation": "cor_1"})
    assert KINDS["evaluate"].plan(ev) == ["train_proxies", "check_overlap"]
    assert KINDS["evaluate"].plan(ev.model_copy(update={"match": "characters"}))[0] == "measure"
    for kind in ("classifier", "embedding", "random", "dsir", "color_filter"):
        spec = KINDS[kind].spec.model_validate({"pool": "cor_1", "target": "cor_2", "select": {"fraction": 0.1}}
                                               if kind != "random" else {"pool": "cor_1", "select": {"count": 1}})
        assert "select" in KINDS[kind].plan(spec), kind
