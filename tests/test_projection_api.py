"""Projektor over HTTP: measured and automatic pilots, predictions, plan, plot, bad specs."""
from __future__ import annotations

import itertools

import pytest

from tests.corpus_gen import corpus
from tests.helpers import run_ok, upload


@pytest.fixture(scope="module")
def sources(service):
    ids = [upload(service, corpus(120, seed=60 + i, domains=[d], prefix=f"{d[0]}"), name=d)["id"]
           for i, d in enumerate(["cooking", "finance", "astronomy"])]
    val = upload(service, corpus(80, seed=70, domains=["astronomy"], prefix="v"), name="validation")["id"]
    return ids, val


def true_metric(size: int, p) -> float:
    """Loss falling with size and with the astronomy share (the validation domain)."""
    return 4.0 - 0.25 * (size / 1000) - 1.2 * p[2] - 0.3 * p[1] + 0.4 * p[2] ** 2


def grid(step=0.25):
    k = round(1 / step)
    return [[a / k, b / k, c / k] for a, b, c in itertools.product(range(k + 1), repeat=3) if a + b + c == k]


def spec(ids, val, **over):
    pilots = [{"size": n, "mixture": p, "metric": true_metric(n, p)} for n in (1000, 2000) for p in grid()]
    base = {"sources": [{"corpus": c, "price_per_doc": price, "available_docs": 100_000}
                        for c, price in zip(ids, [1.0, 1.0, 2.0])],
            "validation": val, "pilot_sizes": [1000, 2000], "target_sizes": [4000, 8000],
            "pilots": pilots, "metric": "loss", "budget": 10_000.0}
    return {**base, **over}


def test_projection_with_measured_pilots(service, sources):
    ids, val = sources
    job = run_ok(service, "projection", spec(ids, val), timeout=300)
    s = job["result"]["summary"]
    assert set(s["fit"]) == {"1000", "2000"}
    for fit in s["fit"].values():
        assert fit["num_pilots"] == 15 and fit["r2"] > 0.99 and fit["loo_mae"] < 0.05
    opt = s["optimum"]
    assert opt["cost"] <= 10_000 + 1e-6
    assert all(d <= 100_000 for d in opt["docs_per_source"])
    assert opt["mixture"][2] == max(opt["mixture"])  # astronomy matters most
    assert opt["predicted"] <= s["baselines"]["uniform"]["predicted"] + 1e-9
    assert opt["predicted"] <= s["baselines"]["best_single_source"]["predicted"] + 1e-9

    # The manifest of predictions is queryable like any other.
    man = job["result"]["manifest_id"]
    q = service.post("/v1/query", json={"sql": "SELECT count(*), count(measured) FROM m WHERE label = 'pilot'",
                                        "tables": {"m": man}}).json()
    assert q["rows"] == [[30, 30]]
    q = service.post("/v1/query", json={"sql": "SELECT max(abs(predicted - measured)) FROM m WHERE label = 'pilot'",
                                        "tables": {"m": man}}).json()
    assert q["rows"][0][0] < 0.05

    r = service.post(f"/v1/projections/{job['id']}/predict", json={"mixtures": [[0, 0, 1], [1, 0, 0]], "sizes": [1000, 2000]})
    assert r.status_code == 200, r.text
    preds = {(tuple(p["mixture"]), p["size"]): p["predicted"] for p in r.json()["predictions"]}
    assert preds[((0, 0, 1), 1000)] == pytest.approx(true_metric(1000, [0, 0, 1]), abs=0.05)
    assert preds[((0, 0, 1), 2000)] < preds[((1, 0, 0), 2000)]
    assert service.post(f"/v1/projections/{job['id']}/predict",
                        json={"mixtures": [[0.5, 0.6, 0]], "sizes": [10]}).status_code == 422
    for bad, field in (({"mixtures": [[0, 0, 1]], "sizes": [1e30]}, "sizes.0"),   # issue 32: it answered 500
                       ({"mixtures": [[0, 0, 1]], "sizes": [10**30]}, "sizes.0"),
                       ({"mixtures": [[0, 0, 1]] * 257, "sizes": [10]}, "mixtures")):
        r = service.post(f"/v1/projections/{job['id']}/predict", json=bad)
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == field, r.text

    png = service.get(f"/v1/jobs/{job['id']}/plot")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_projection_with_automatic_pilots(service, sources):
    ids, val = sources
    job = run_ok(service, "projection", spec(
        ids, val, pilots="auto", pilot_sizes=[40, 80], target_sizes=[160], budget=None,
        auto={"grid_step": 0.5, "tokens": 2048, "validation_docs": 40,
              "early_stopping": {"every_tokens": 1024, "patience": 1},
              "proxy": {"preset": "tiny", "vocab_size": 300, "batch_size": 8, "seq_len": 32}}), timeout=600)
    s = job["result"]["summary"]
    assert s["fit"]["40"]["num_pilots"] == 6 and s["fit"]["80"]["num_pilots"] == 6
    # Eight steps from random weights: every proxy is still improving when its budget runs out,
    # and the summary says so.
    assert {n: r["still_improving"] for n, r in s["proxies"].items()} == {"40": 6, "80": 6}
    assert s["proxies"]["80"]["best_tokens_max"] == 2048
    budget = [w for w in s["warnings"] if "still improving" in w]
    assert len(budget) == 2 and "6 of 6 proxies at N = 40" in budget[0]
    # Six pilots for 13 coefficients: said too (tests/test_corpus_ops.py), with a finer grid to use.
    fit = [w for w in s["warnings"] if "13 coefficients but only 6 pilots" in w]
    assert len(fit) == 2 and "auto.grid_step 0.25 (15 mixtures over 3 sources)" in fit[0], fit
    man = job["result"]["manifest_id"]
    rows = service.post("/v1/query", json={"sql": "SELECT size, measured FROM m WHERE label = 'pilot'",
                                           "tables": {"m": man}}).json()["rows"]
    assert len(rows) == 12 and all(m > 0 for _, m in rows)


@pytest.mark.parametrize("change, status, field", [
    ({"pilots": [{"size": 1000, "mixture": [0.5, 0.4, 0.0], "metric": 1.0}]}, 422, "spec.pilots.0.mixture"),
    ({"sources": [{"corpus": "X", "price_per_doc": -1, "available_docs": 10}] * 2}, 422, "spec.sources.0.price_per_doc"),
    ({"pilot_sizes": [1000]}, 422, "spec.pilot_sizes"),
    ({"validation": "cor_missing"}, 404, "spec.validation"),
    ({"pilots": "auto", "metric": "accuracy"}, 422, "spec"),
    ({"pilots": "auto", "auto": {"early_stopping": {"patience": 0}}}, 422, "spec.auto.early_stopping.patience"),
])
def test_bad_projection_specs(service, sources, change, status, field):
    ids, val = sources
    r = service.post("/v1/jobs", json={"kind": "projection", "spec": {**spec(ids, val), **change}})
    assert r.status_code == status, r.text
    assert r.json()["error"]["details"]["field"] == field


def test_unknown_source_corpus_is_404(service, sources):
    ids, val = sources
    body = spec(ids, val)
    body["sources"][1]["corpus"] = "cor_nope"
    r = service.post("/v1/jobs", json={"kind": "projection", "spec": body})
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "spec.sources.1.corpus"


def test_proxy_budget_fixed_in_tokens_or_in_passes(service, sources):
    """`auto.tokens` trains every proxy for the same budget whatever its size; by default the
    budget is `epochs` passes over the proxy's own documents; early stopping ends a proxy sooner."""
    import ray

    from workers.jobs.projection import pilot_task, shared_tokenizer_task
    ids, val = sources
    store = service.app.state.svc.store
    parts = [[("corpora", i, n) for n in store.list("corpora", i, suffix=".parquet")] for i in ids]
    val_parts = [("corpora", val, n) for n in store.list("corpora", val, suffix=".parquet")]
    tok = ("tmp-test-proxy-budget", "tokenizer.json")
    parts = [{"parts": p, "source": None} for p in parts]
    ray.get(shared_tokenizer_task.remote(store.root, parts, tok, 300, 0))
    proxy = {"preset": "tiny", "vocab_size": 300, "batch_size": 4, "seq_len": 16}

    def seen(size, **budget):
        opts = {"validation_docs": 10, "proxy": proxy, **budget}
        out = ("tmp-test-proxy-budget", f"{size}-{sorted(budget.items())}.json")
        return ray.get(pilot_task.remote(store.root, parts, val_parts, tok, size, [0.5, 0.5, 0.0], opts, out, 0))

    fixed = [seen(n, tokens=4096) for n in (20, 60)]
    assert fixed[0]["seen_tokens"] == fixed[1]["seen_tokens"] == 4096
    assert fixed[1]["train_tokens"] > 2 * fixed[0]["train_tokens"]
    passes = [seen(n, epochs=1) for n in (20, 60)]
    assert passes[1]["seen_tokens"] > 2 * passes[0]["seen_tokens"]
    # Early stopping: the budget is a maximum, the metric the best validation loss reached on the way.
    stopped = seen(60, tokens=8192, early_stopping={"every_tokens": 1024, "patience": 1})
    assert stopped["best_tokens"] <= stopped["seen_tokens"] <= 8192 and stopped["seen_tokens"] % 1024 == 0


def test_proxy_report_counts_proxies_cut_short_by_their_budget():
    from workers.jobs.projection import budget_warnings, proxy_report
    runs = [{"size": 100, "best_tokens": 300, "seen_tokens": 500},   # stopped by patience
            {"size": 100, "best_tokens": 500, "seen_tokens": 500},   # best at the end: cut short
            {"size": 100, "best_tokens": 200, "seen_tokens": 400},
            {"size": 200, "best_tokens": 800, "seen_tokens": 1000}]
    report = proxy_report(runs)
    assert report == {"100": {"proxies": 3, "best_tokens_median": 300, "best_tokens_max": 500, "still_improving": 1},
                      "200": {"proxies": 1, "best_tokens_median": 800, "best_tokens_max": 800, "still_improving": 0}}
    warnings = budget_warnings(report)
    assert len(warnings) == 1 and warnings[0].startswith("1 of 3 proxies at N = 100 were still improving")


def test_pilot_draws_are_nested_across_sizes():
    """The same draw seed at N0 and N1: the smaller pilot's documents are among the larger's; another
    seed draws others; a share larger than the revealed sample takes all of it, then repeats."""
    from workers.jobs.projection import pilot_documents
    pools = [[f"a{i}" for i in range(50)], [f"b{i}" for i in range(30)], [f"c{i}" for i in range(10)]]
    small = pilot_documents(pools, [5, 10, 0], seed=3)
    large = pilot_documents(pools, [10, 20, 0], seed=3)
    assert len(small) == 15 and len(large) == 30 and set(small) <= set(large)
    assert set(pilot_documents(pools, [10, 20, 0], seed=4)) != set(large)
    over = pilot_documents(pools, [0, 0, 14], seed=3)
    assert len(over) == 14 and set(over) == set(pools[2])
