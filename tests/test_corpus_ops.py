"""Cheap corpus operations and honest comparisons (issue 28, items 8 and 9), through the HTTP API:
a projection that says when its fit is underdetermined and projects over a pool's own sources;
`filter` by source and by a sandboxed predicate over a manifest; `evaluate` head to head, and
reusing a random arm it trained before."""
from __future__ import annotations

import io
import itertools
import json
import time

import pyarrow.parquet as pq
import pytest

from tests.corpus_gen import corpus
from tests.helpers import run_ok, submit, upload, wait

DOMAINS = ["cooking", "finance", "astronomy"]
# Proxies that train in a second or two (as the dashboard's evaluate test).
TINY_PROXY = {"preset": "tiny", "tokens": 1000, "vocab_size": 256, "batch_size": 4, "seq_len": 16, "max_docs": 100}


@pytest.fixture(scope="module")
def pool(service):
    """300 documents of three sources in two shards (the tests' shard size is 200)."""
    return upload(service, corpus(300, seed=81, prefix="p"), name="pool")


@pytest.fixture(scope="module")
def validation(service):
    return upload(service, corpus(40, seed=82, domains=["astronomy"], prefix="v"), name="val")


def ids_of(service, corpus_id: str) -> list[str]:
    rows = service.get(f"/v1/corpora/{corpus_id}/download?format=jsonl").text.splitlines()
    return [json.loads(r)["id"] for r in rows]


def query(service, sql: str, **tables) -> list:
    r = service.post("/v1/query", json={"sql": sql, "tables": tables, "limit": 10_000})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


# -- projection ------------------------------------------------------------------------------------

def loss(size: int, p) -> float:
    return 4.0 - 0.25 * (size / 1000) - 1.2 * p[2] - 0.3 * p[1] + 0.4 * p[2] ** 2


def pilots(step: float) -> list[dict]:
    k = round(1 / step)
    grid = [[a / k, b / k, c / k] for a, b, c in itertools.product(range(k + 1), repeat=3) if a + b + c == k]
    return [{"size": n, "mixture": p, "metric": loss(n, p)} for n in (1000, 2000) for p in grid]


def projection(sources: list[dict], validation_id: str, step: float) -> dict:
    return {"sources": [{**s, "price_per_doc": 1.0, "available_docs": 100_000} for s in sources],
            "validation": validation_id, "pilot_sizes": [1000, 2000], "target_sizes": [4000],
            "pilots": pilots(step), "budget": 10_000.0}


def test_projection_warns_when_pilots_are_fewer_than_coefficients(service, pool, validation):
    """6 pilots a size for 3 sources (13 coefficients): the fit passes through every pilot, so R²
    (it read 1.0) is not reported, and a warning says why and what to change. With 15 pilots the
    fit is determined: R² is reported and nothing is said."""
    sources = [{"corpus": pool["id"], "source": d} for d in DOMAINS]
    s = run_ok(service, "projection", projection(sources, validation["id"], 0.5), timeout=120)["result"]["summary"]
    for n in ("1000", "2000"):
        fit = s["fit"][n]
        assert fit["num_pilots"] == 6 and fit["num_coefficients"] == 13 and fit["underdetermined"] is True, fit
        assert fit["r2"] is None and fit["loo_mae"] is not None and fit["loo_mae"] >= 0
        assert fit["no_ot"]["num_coefficients"] == 7 and fit["no_ot"]["underdetermined"] is True
    assert len(s["warnings"]) == 2, s["warnings"]
    assert s["warnings"][0].startswith("At N = 1000 the fit has 13 coefficients but only 6 pilots")
    assert "R² says nothing" in s["warnings"][0] and "measure at least 13 pilots" in s["warnings"][0]

    s = run_ok(service, "projection", projection(sources, validation["id"], 0.25), timeout=120)["result"]["summary"]
    assert s["warnings"] == []
    assert all(f["underdetermined"] is False and f["r2"] > 0.99 for f in s["fit"].values()), s["fit"]


def test_projection_over_a_pool_s_sources_without_reupload(service, pool, validation):
    """Sources named as (pool, source value) project exactly as the same documents uploaded as a
    corpus each; a source value the pool lacks is a 422 naming the field, with a suggestion."""
    docs = corpus(300, seed=81, prefix="p")
    apart = [{"corpus": upload(service, [d for d in docs if d["source"] == name], name=name)["id"]} for name in DOMAINS]
    within = [{"corpus": pool["id"], "source": name} for name in DOMAINS]
    a = run_ok(service, "projection", projection(within, validation["id"], 0.25), timeout=120)
    b = run_ok(service, "projection", projection(apart, validation["id"], 0.25), timeout=120)
    sa, sb = a["result"]["summary"], b["result"]["summary"]
    # (The same points in another order: equal up to rounding.)
    assert sa["optimum"]["mixture"] == pytest.approx(sb["optimum"]["mixture"], abs=1e-6)
    assert sa["optimum"]["predicted"] == pytest.approx(sb["optimum"]["predicted"], abs=1e-6)
    assert [p["uniform"] for p in sa["predictions"]] == pytest.approx([p["uniform"] for p in sb["predictions"]])
    labels = {r[0] for r in query(service, "SELECT DISTINCT label FROM m", m=a["result"]["manifest_id"])}
    assert {f"single:pool:{name}" for name in DOMAINS} <= labels, labels

    before = len(service.get("/v1/jobs?limit=1000").json()["items"])
    bad = projection([*within[:2], {"corpus": pool["id"], "source": "astronomi"}], validation["id"], 0.25)
    r = service.post("/v1/jobs", json={"kind": "projection", "spec": bad})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["details"]["field"] == "spec.sources.2.source"
    assert "did you mean 'astronomy'" in err["message"] and "'cooking'" in err["message"], err
    assert len(service.get("/v1/jobs?limit=1000").json()["items"]) == before  # nothing queued


# -- filter ----------------------------------------------------------------------------------------

def test_filter_by_source(service, pool):
    job = run_ok(service, "filter", {"corpus": pool["id"], "sources": ["cooking", "finance"],
                                     "corpus_name": "two sources"}, timeout=60)
    new = service.get(f"/v1/corpora/{job['result']['corpus_id']}").json()
    assert new["state"] == "ready" and new["name"] == "two sources"
    docs = corpus(300, seed=81, prefix="p")
    want = [d["id"] for d in docs if d["source"] in ("cooking", "finance")]
    assert ids_of(service, new["id"]) == want                       # in stored order
    assert new["num_docs"] == len(want) and set(new["sources"]) == {"cooking", "finance"}
    assert job["result"]["summary"]["from_docs"] == 300

    r = service.post("/v1/jobs", json={"kind": "filter", "spec": {"corpus": pool["id"], "sources": ["cooking", "Finance"]}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "spec.sources.1", r.text
    assert "did you mean 'finance'" in r.json()["error"]["message"]
    r = service.post("/v1/jobs", json={"kind": "filter", "spec": {"corpus": pool["id"]}})
    assert r.status_code == 422 and "what to keep" in r.json()["error"]["message"], r.text


def test_filter_by_a_predicate_over_a_manifest(service, pool):
    """The predicate runs over the whole manifest (a subquery sees all of it), and the new corpus
    holds exactly the documents /v1/query finds with it."""
    man = run_ok(service, "random", {"pool": pool["id"], "select": {"fraction": 0.5}, "seed": 3})["result"]["manifest_id"]
    where = "selected AND score > (SELECT avg(score) FROM m) AND source <> 'finance'"
    want = [r[0] for r in query(service, f"SELECT doc_id FROM m WHERE {where} ORDER BY shard, row", m=man)]
    assert 10 < len(want) < 150
    done = run_ok(service, "filter", {"manifest": man, "where": where}, timeout=60)
    assert ids_of(service, done["result"]["corpus_id"]) == want
    # sources and a predicate together: both apply.
    both = run_ok(service, "filter", {"manifest": man, "where": "selected", "sources": ["astronomy"]}, timeout=60)
    want = [r[0] for r in query(service, "SELECT doc_id FROM m WHERE selected AND source = 'astronomy' "
                                         "ORDER BY shard, row", m=man)]
    assert ids_of(service, both["result"]["corpus_id"]) == want


def test_filter_and_head_to_head_from_the_python_client(live_service):
    """Client.filter and Client.evaluate(against=...) send what the service expects."""
    from thresher.client import Client
    with Client(live_service.url, live_service.key) as client:
        pool = client.corpora.upload(corpus(60, seed=90, prefix="c"), name="client-pool")
        job = client.filter(pool, sources=["astronomy"], corpus_name="stars").wait(timeout=60)
        stars = client.corpora.get(job.corpus_id)
        assert stars.name == "stars" and set(stars.sources) == {"astronomy"}
        a = client.random(pool, count=20, seed=1).wait(timeout=60)
        b = client.random(pool, count=20, seed=2).wait(timeout=60)
        job = client.filter(manifest=a.manifest_id, where="selected AND source = 'cooking'").wait(timeout=60)
        assert client.corpora.get(job.corpus_id).sources.keys() == {"cooking"}
        ev = client.evaluate(a.manifest_id, stars, against=b.manifest_id, proxy=TINY_PROXY)
        assert ev.spec["against"] == b.manifest_id  # (it runs in the HTTP tests above)
        ev.cancel()


@pytest.mark.parametrize("where, status, code, fragment", [
    ("score > (SELECT count(*) FROM read_csv('/etc/passwd'))", 403, "forbidden", "read_csv() is not available"),
    ("current_setting('temp_directory') IS NOT NULL", 403, "forbidden", "current_setting is not available"),
    ("true) UNION ALL (SELECT 0, 0 FROM duckdb_settings()", 403, "forbidden", "duckdb_settings() is not available"),
    ("true; DROP TABLE m", 400, "invalid_sql", "syntax error"),
    ("scor > 0.5", 400, "invalid_sql", '"scor" not found'),
])
def test_forbidden_or_broken_predicate_is_refused_before_queueing(service, pool, where, status, code, fragment):
    man = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 10}, "seed": 1})["result"]["manifest_id"]
    before = len(service.get("/v1/jobs?limit=1000").json()["items"])
    r = service.post("/v1/jobs", json={"kind": "filter", "spec": {"manifest": man, "where": where}})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["details"]["field"] == "spec.where" and fragment in err["message"], err
    assert err["message"].startswith("spec.where: ")
    assert len(service.get("/v1/jobs?limit=1000").json()["items"]) == before


def test_filter_checks_the_predicate_again_where_it_runs(service, pool):
    """The job does not trust the submit-time check: a spec the engine runs without it (a job
    stored before, or resumed) is held to the same allow-list by the task that runs it."""
    from workers.driver.lifecycle import submit_job
    man = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 10}, "seed": 1})["result"]["manifest_id"]
    engine = service.app.state.svc.engine
    job, _ = submit_job(engine, "alice", "filter", "sneaky", {"manifest": man, "where": "score > (SELECT count(*) FROM "
                                                                                          "read_text('/etc/hostname'))"})
    done = wait(service, job["id"], timeout=60)
    assert done["state"] == "failed" and done["error"]["code"] == "forbidden", done
    assert "read_text() is not available" in done["error"]["message"]
    failed = [c for c in service.get("/v1/corpora?limit=1000").json()["items"] if c.get("job_id") == job["id"]]
    assert [c["state"] for c in failed] == ["failed"]  # the corpus it started is failed, with no shard


# -- evaluate ----------------------------------------------------------------------------------------

def evaluate(service, **spec) -> dict:
    return run_ok(service, "evaluate", {"proxy": TINY_PROXY, **spec}, timeout=240)


def test_head_to_head_reports_the_gain_with_its_error_and_the_overlap(service, pool, validation):
    a = run_ok(service, "random", {"pool": pool["id"], "select": {"fraction": 0.4}, "seed": 5})["result"]["manifest_id"]
    b = run_ok(service, "random", {"pool": pool["id"], "select": {"fraction": 0.3}, "seed": 6})["result"]["manifest_id"]
    s = evaluate(service, selection=a, validation=validation["id"], against=b, repeats=2)["result"]["summary"]
    assert s["compared_with"] == b and "random" not in s and "random_arm" not in s
    assert s["selection"]["docs"] == 120 and s["against"]["docs"] == 90, s
    gains = [(x - y) / x for y, x in zip(s["selection"]["validation_losses"], s["against"]["validation_losses"])]
    assert s["relative_gains"] == pytest.approx(gains)
    assert s["relative_gain_se"] == pytest.approx(abs(gains[0] - gains[1]) / 2)
    assert s["proxies_trained"] == 4
    both = query(service, "SELECT count(*) FROM a JOIN b USING (doc_id) WHERE a.selected AND b.selected", a=a, b=b)[0][0]
    o = s["overlap"]
    assert (o["selection"], o["against"], o["both"]) == (120, 90, both)
    assert o["jaccard"] == pytest.approx(both / (120 + 90 - both))
    assert sum(x["both"] for x in o["by_source"].values()) == both and set(o["by_source"]) == set(DOMAINS)

    r = service.post("/v1/jobs", json={"kind": "evaluate", "spec": {"selection": a, "validation": validation["id"],
                                                                    "against": "man_nope"}})
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "spec.against", r.text


def test_a_second_evaluate_reuses_the_random_arm(service, pool, validation):
    """Two selections of the same size from one pool: the second evaluation finds the random arm
    the first trained (same pool, size, seed, proxy, validation set) and trains one proxy, not two.
    (Another seed, size, proxy or validation set is another key: test_random_arm_key_covers_….)"""
    a = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 80}, "seed": 7})["result"]["manifest_id"]
    b = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 80}, "seed": 8})["result"]["manifest_id"]
    first = evaluate(service, selection=a, validation=validation["id"], seed=11)
    s1 = first["result"]["summary"]
    assert s1["random_arm"] == "trained" and s1["proxies_trained"] == 2
    started = time.monotonic()
    s2 = evaluate(service, selection=b, validation=validation["id"], seed=11)["result"]["summary"]
    assert s2["random_arm"] == f"reused from job {first['id']}" and s2["proxies_trained"] == 1, s2
    assert s2["random"] == s1["random"]
    assert s2["selection"] != s1["selection"]
    assert time.monotonic() - started < 120


def test_random_arm_key_covers_what_the_arm_depends_on():
    from workers.jobs.lm import random_arm_key
    base = dict(pool="cor_a", validation="cor_v", match="documents", size=80, sample_seed=0,
                proxy={"preset": "tiny", "seed": 0, "tokens": 1000})
    key = random_arm_key(**base)
    assert random_arm_key(**base) == key
    for change in ({"pool": "cor_b"}, {"validation": "cor_w"}, {"match": "characters"}, {"size": 81},
                   {"sample_seed": 1}, {"proxy": {**base["proxy"], "seed": 1}},
                   {"proxy": {**base["proxy"], "tokens": 2000}}):
        assert random_arm_key(**{**base, **change}) != key, change


def test_overlap_by_hand(tmp_path):
    import pyarrow as pa
    from storage.fs import Store
    from storage.manifests import selection_overlap
    store = Store(str(tmp_path))

    def part(name, ids, selected):
        t = pa.table({"doc_id": ids, "corpus_id": ["c"] * len(ids), "source": ["x", "x", "y", None][:len(ids)],
                      "selected": selected})
        store.write_parquet(t, name, "part-00000.parquet")
        return [(name, "part-00000.parquet")]
    a = part("a", ["1", "2", "3", "4"], [True, True, True, False])
    b = part("b", ["1", "2", "3", "4"], [False, True, True, True])
    o = selection_overlap(store, a, b)
    assert (o["selection"], o["against"], o["both"], o["jaccard"]) == (3, 3, 2, 0.5)
    assert o["by_source"] == {"x": {"selection": 2, "against": 1, "both": 1, "jaccard": 0.5},
                              "y": {"selection": 1, "against": 1, "both": 1, "jaccard": 1.0},
                              "": {"selection": 0, "against": 1, "both": 0, "jaccard": 0.0}}


def test_export_manifest_still_writes_the_selected_documents(service, pool):
    """The export kind now shares its writer with filter: a selection's export is unchanged."""
    man = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 25}, "seed": 2})["result"]["manifest_id"]
    r = service.post(f"/v1/manifests/{man}/export", json={"selected_only": True})
    assert r.status_code == 202, r.text
    done = wait(service, r.json()["id"], timeout=60)
    assert done["state"] == "succeeded", done
    want = [row[0] for row in query(service, "SELECT doc_id FROM m WHERE selected ORDER BY shard, row", m=man)]
    assert ids_of(service, done["result"]["corpus_id"]) == want
    t = pq.read_table(io.BytesIO(service.get(f"/v1/corpora/{done['result']['corpus_id']}/download").content))
    assert t.column_names[:3] == ["id", "text", "source"]
