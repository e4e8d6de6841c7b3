"""The `classifier` (fastText) and `embedding` (all-MiniLM-L6-v2) selectors: their compute on tiny
inputs, and both kinds end to end through the HTTP API on small generated corpora."""
from __future__ import annotations

import numpy as np
import pytest

from scoring import fasttext_classifier as ftc
from scoring.encoder import Encoder, centroid_similarity, knn_similarity
from tests.corpus_gen import corpus
from tests.helpers import run_ok, submit, upload, wait

TARGET = "astronomy"


def texts(n, seed, domains, **kw):
    return [d["text"] for d in corpus(n, seed=seed, domains=domains, **kw)]


# -- fastText classifier ---------------------------------------------------------------------------

def test_normalise_is_dclms_one_lowercase_line():
    assert ftc.normalise("  The  Moon\n\nand\tSTARS \r\n") == "the moon and stars"
    assert ftc.normalise(None) == ""


def test_auc_counts_ties_half():
    y = np.array([True, True, False, False])
    assert ftc.auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 1.0
    assert ftc.auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 0.0
    assert ftc.auc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    assert ftc.auc(np.array([0.9, 0.3, 0.5, 0.2]), y) == 0.75
    assert ftc.auc(np.array([0.1, 0.2]), np.array([True, True])) is None


def test_holdout_split_is_stratified_and_seeded():
    y = np.r_[np.ones(50, bool), np.zeros(150, bool)]
    held = ftc.holdout_split(y, 0.2, seed=3)
    assert (held & y).sum() == 10 and (held & ~y).sum() == 30
    assert (ftc.holdout_split(y, 0.2, seed=3) == held).all()
    assert ftc.holdout_split(np.array([True, False, False]), 0.5, 0)[0] == False  # noqa: E712 - one positive: kept


def test_a_small_target_gets_a_usable_classifier_with_its_held_out_check(tmp_path):
    pos = texts(150, 1, [TARGET])
    neg = texts(150, 2, ["cooking", "finance"])
    labels = np.r_[np.ones(150, bool), np.zeros(150, bool)]
    data, report = ftc.fit_with_holdout(pos + neg, labels, ftc.FastTextParams(buckets=2**14, dim=16, workers=2),
                                        epochs_grid=(5, 20), lr_grid=(0.1, 0.5))
    held = report["holdout"]
    assert (held["positives"], held["negatives"]) == (30, 30)
    assert held["auc"] > 0.95 and held["accuracy"] > 0.9
    assert len(held["grid"]) == 4 and (report["epochs"], report["lr"]) in {(e, r) for e in (5, 20) for r in (0.1, 0.5)}
    (tmp_path / "m.bin").write_bytes(data)
    model = ftc.load(str(tmp_path / "m.bin"))
    fresh = ftc.p_target(model, texts(40, 9, [TARGET]) + texts(40, 10, ["cooking", "finance"]) + ["  \n "])
    assert fresh[:40].min() > fresh[40:80].max() and np.isnan(fresh[80])
    assert ((0 <= fresh[:80]) & (fresh[:80] <= 1)).all()


def test_fits_are_reproducible_however_many_ran_before():
    """fastText leaves most of its input matrix uninitialised: fitted in one process, each fit
    started from the previous one's freed weights (its P drifted from the 3rd fit on, and lr 1.0
    diverged). Each fit now runs in a fresh process."""
    docs = corpus(150, seed=11, min_words=8, max_words=16)
    labels = np.array([d["source"] == TARGET for d in docs])
    params = ftc.FastTextParams(buckets=2**14, dim=32)
    runs = [ftc.p_target(ftc.fit([d["text"] for d in docs], labels, 20, 1.0, params), [d["text"] for d in docs[:5]])
            for _ in range(5)]
    assert all(np.array_equal(r, runs[0]) for r in runs), runs


def test_too_few_documents_to_hold_out_says_so():
    _, report = ftc.fit_with_holdout(["moon star", "bread oven", "flour sugar"], [True, False, False],
                                     ftc.FastTextParams(buckets=2**14, dim=8))
    assert report["holdout"] is None and "no held-out check" in report["note"]
    assert (report["epochs"], report["lr"]) == (ftc.EPOCHS_GRID[0], ftc.LR_GRID[0])


# -- the encoder -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    return Encoder()


def test_encoder_reproduces_all_minilm_l6_v2(encoder):
    """The sentence-transformers embeddings of this model (mean pooling, L2 norm), whose values
    these are: a wrong pooling, missing normalisation or wrong weights would change them."""
    emb = encoder.encode(["The cat sits on the mat.", "A kitten is lying on a rug.", "Stocks fell as bond yields rose."])
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.allclose(emb[0, :4], [0.13418, -0.03290, -0.02480, 0.04144], atol=1e-3)
    sims = emb @ emb.T
    assert sims[0, 1] == pytest.approx(0.5587, abs=2e-3) and sims[0, 2] == pytest.approx(0.0396, abs=2e-3)


def test_encoder_reads_only_a_documents_first_256_tokens(encoder):
    head = " ".join(["moon"] * 300)
    a, b, c = encoder.encode([head, head + " bread butter oven flour" * 50, " ".join(["moon"] * 100)])
    assert np.allclose(a, b, atol=1e-6) and not np.allclose(a, c, atol=1e-3)
    assert encoder.max_tokens == 256


def test_centroid_and_knn_similarity():
    target = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    docs = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.array([2.0, 1.0]) / np.sqrt(5)
    assert np.allclose(centroid_similarity(docs, target), docs @ c)
    assert np.allclose(knn_similarity(docs, target, k=1), [1.0, 1.0])
    assert np.allclose(knn_similarity(docs, target, k=2), [1.0, 0.5])
    assert np.allclose(knn_similarity(docs, target, k=99, block=1), [2 / 3, 1 / 3])  # k > target: all of it


# -- through the HTTP API --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool_and_target(service):
    """A three-domain pool of short documents in 3 shards (shard_size 200) and an astronomy target."""
    pool = upload(service, corpus(420, seed=11, min_words=8, max_words=16), name="sel-pool")
    target = upload(service, corpus(40, seed=12, domains=[TARGET], min_words=8, max_words=16, prefix="t"),
                    name="sel-target")
    assert pool["num_shards"] == 3
    return pool, target


@pytest.fixture(scope="module")
def one_shard_pool(service):
    """200 documents: one shard, which the embedding kind cuts into row ranges for its actors."""
    pool = upload(service, corpus(200, seed=13, min_words=8, max_words=16), name="sel-small-pool")
    assert pool["num_shards"] == 1
    return pool


def precision(summary: dict, n: int) -> float:
    assert summary["num_selected"] == n == sum(summary["selected_by_source"].values())
    return summary["selected_by_source"].get(TARGET, 0) / n


def test_classifier_selects_the_target_domain_and_reports_its_held_out_check(service, pool_and_target):
    pool, target = pool_and_target
    chance = pool["sources"][TARGET] / pool["num_docs"]
    job = run_ok(service, "classifier", {"pool": pool["id"], "target": target["id"], "select": {"count": 60},
                                         "buckets": 2**14, "dim": 32, "epochs": [5, 20], "lr": [0.1, 0.5]})
    s = job["result"]["summary"]
    assert precision(s, 60) > max(0.9, 2 * chance)
    c = s["classifier"]
    assert (c["positives"], c["negatives"]) == (40, 40) and c["word_ngrams"] == 2
    assert c["holdout"]["positives"] == 8 and c["holdout"]["auc"] > 0.6 and c["epochs"] in (5, 20)
    assert s["scoring"]["tasks"] == 3 and s["scoring"]["documents"] == 420


def test_embedding_loads_the_encoder_once_per_actor_and_ranks_the_target_first(service, pool_and_target,
                                                                               one_shard_pool):
    _, target = pool_and_target
    pool = one_shard_pool
    chance = pool["sources"][TARGET] / pool["num_docs"]
    job = run_ok(service, "embedding", {"pool": pool["id"], "target": target["id"], "select": {"count": 30},
                                        "actors": 2}, timeout=300)
    s = job["result"]["summary"]
    assert precision(s, 30) > max(0.9, 2 * chance) and s["num_rows"] == 200
    emb = s["scoring"]["embedding"]
    # One shard for two actors: it is cut into row ranges, more of them than actors; an actor that
    # loaded the encoder per range would report more loads than one.
    assert emb["cut_shards"] == 1 and emb["tasks"] > emb["actors"] == emb["actors_used"] == 2
    assert emb["encoder_loads"] == emb["actors"]
    assert s["path"] == "full" and s["target"]["docs"] == 40 and s["max_tokens"] == 256
    man_id = job["result"]["manifest_id"]
    assert {"centroid", "knn"} <= {c["name"] for c in service.get(f"/v1/manifests/{man_id}").json()["columns"]}
    # The joined ranges keep each row's number: pool document d<i> is row i.
    r = service.post("/v1/query", json={"sql": "SELECT doc_id, row FROM m", "tables": {"m": man_id}})
    rows = r.json()["rows"]
    assert len(rows) == 200 and all(d == f"d{row}" for d, row in rows), rows[:5]


def test_embedding_betr_scores_the_pool_with_a_classifier_fitted_on_a_sample(service, pool_and_target,
                                                                            one_shard_pool):
    _, target = pool_and_target
    pool = one_shard_pool
    job = run_ok(service, "embedding", {"pool": pool["id"], "target": target["id"], "select": {"count": 30},
                                        "similarity": "centroid", "actors": 1,
                                        "betr": {"sample": 120, "positive_fraction": 0.3, "buckets": 2**14,
                                                 "dim": 32, "epochs": [20], "lr": [0.5]}}, timeout=300)
    s = job["result"]["summary"]
    assert s["path"] == "betr" and precision(s, 30) > 0.8
    sc = s["scoring"]
    assert sc["sample"]["sampled"] == 120 and sc["sample"]["positives"] == 36
    assert sc["sample"]["embedding"]["documents"] == 120 and sc["classify"]["documents"] == 200
    assert sc["classifier"]["epochs"] == 20 and sc["classifier"]["holdout"]["auc"] > 0.8


@pytest.mark.parametrize("kind, extra, field", [
    ("classifier", {"epochs": [0]}, "epochs"),
    ("classifier", {"negatives_per_positive": 0}, "negatives_per_positive"),
    ("embedding", {"similarity": "max"}, "similarity"),
    ("embedding", {"betr": {"sample": 5}}, "sample"),
    ("embedding", {"betr": {"positive_fraction": 0.1}}, "sample"),
])
def test_bad_selector_specs_are_refused_naming_the_field(service, pool_and_target, kind, extra, field):
    pool, target = pool_and_target
    r = service.post("/v1/jobs", json={"kind": kind, "spec": {"pool": pool["id"], "target": target["id"],
                                                              "select": {"count": 5}, **extra}})
    assert r.status_code == 422 and field in r.text, r.text


def test_a_target_without_text_fails_the_classifier_in_plain_words(service, pool_and_target):
    pool, _ = pool_and_target
    empty = upload(service, [{"id": "e1", "text": "   "}, {"id": "e2", "text": "\n"}], name="sel-empty")
    job = wait(service, submit(service, "classifier", {"pool": pool["id"], "target": empty["id"],
                                                       "select": {"count": 5}})["id"])
    assert job["state"] == "failed" and "positive" in job["error"]["message"], job


# -- restrict --------------------------------------------------------------------------------------

def query(service, sql: str, **tables) -> list:
    r = service.post("/v1/query", json={"sql": sql, "tables": tables, "limit": 10_000})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


@pytest.mark.parametrize("kind, extra", [
    ("classifier", {"buckets": 2**14, "dim": 32, "epochs": [20], "lr": [0.5]}),
    ("embedding", {"actors": 2}),
    ("embedding", {"similarity": "centroid", "actors": 1,
                   "betr": {"sample": 120, "positive_fraction": 0.3, "buckets": 2**14, "dim": 32, "epochs": [20],
                            "lr": [0.5]}}),
], ids=["classifier", "embedding", "embedding-betr"])
def test_restricted_documents_are_neither_scored_nor_selected(service, pool_and_target, kind, extra):
    pool, target = pool_and_target
    # The restricting manifest: a random half of the pool. Its left-out half holds about half of the
    # astronomy documents, which a selector that ignored the restriction would select.
    keep = run_ok(service, "random", {"pool": pool["id"], "select": {"fraction": 0.5}, "seed": 5})
    restrict = keep["result"]["manifest_id"]
    job = run_ok(service, kind, {"pool": pool["id"], "target": target["id"], "select": {"count": 40},
                                 "restrict": [restrict], **extra}, timeout=300)
    s, man = job["result"]["summary"], job["result"]["manifest_id"]
    assert s["num_selected"] == 40 and s["built_on"] == [restrict] and s["excluded_total"] == 210
    assert query(service, "SELECT count(*), count(*) FILTER (WHERE selected) FROM s", s=man) == [[420, 40]]
    # Exactly k survivors, none of them excluded; the excluded have no score and name the manifest.
    assert query(service, "SELECT count(*) FROM s JOIN r USING (doc_id) WHERE s.selected AND NOT r.selected",
                 s=man, r=restrict) == [[0]]
    assert query(service, f"""SELECT count(*) FILTER (WHERE s.score IS NULL AND s.rank IS NULL
                                                       AND s.excluded_by = '{restrict}'), count(*)
                              FROM s JOIN r USING (doc_id) WHERE NOT r.selected""", s=man, r=restrict) == [[210, 210]]
    if kind == "embedding" and "betr" not in extra:  # the encoder never saw them: no similarity at all
        assert query(service, "SELECT count(*) FROM s WHERE excluded_by IS NOT NULL AND (knn IS NOT NULL "
                              "OR centroid IS NOT NULL)", s=man) == [[0]]
    assert s["selected_by_source"].get(TARGET, 0) / 40 > 0.8
