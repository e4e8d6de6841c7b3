"""Composition (issue 29, items 4 and 5): dedup, decontaminate and quality manifests restrict a
selection, an export, an evaluation and a projection's sources; evaluate reports the overlap of what
its proxies trained on with the validation corpus and flags a gain a leak inflates. Through the
HTTP API, on a generated pool with planted duplicates, validation documents and low-quality ones."""
from __future__ import annotations

import random

import pytest

from scoring.ngrams import overlap
from tests.corpus_gen import DOMAINS, corpus
from tests.helpers import run_ok, submit, upload, wait

FAST_TRAIN = {"preset": "tiny", "tokens": 4_000, "vocab_size": 256, "batch_size": 8, "seq_len": 32}
FAST_FT = {"epochs": 1, "warmup_steps": 5, "batch_size": 8}
COUNT = 100


def query(service, sql: str, **tables) -> list:
    r = service.post("/v1/query", json={"sql": sql, "tables": tables, "limit": 10_000})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def sloppy(rng: random.Random, words: int) -> str:
    """Astronomy text that Gopher's quality rules reject: an ellipsis every third word."""
    vocab = DOMAINS["astronomy"]
    return " ".join(rng.choice(vocab) + (" ..." if i % 3 == 2 else "") for i in range(words))


@pytest.fixture(scope="module")
def world(service):
    """A pool whose astronomy documents a targeted selector wants, with exact and near copies of
    some, the validation corpus's documents planted, and low-quality astronomy text; each cleaning
    manifest over it."""
    base = corpus(400, seed=41, min_words=60, max_words=90)
    validation = corpus(40, seed=42, domains=["astronomy"], min_words=60, max_words=90, prefix="v")
    target = corpus(100, seed=44, domains=["astronomy"], prefix="t")
    rng = random.Random(43)
    # Copies of target-like text, which a targeted selector wants most: 25 originals, 15 exact and
    # 10 near copies of them.
    planted = [{"id": f"orig{i}", "text": target[i]["text"], "source": "astronomy"} for i in range(25)]
    planted += [{"id": f"copy{i}", "text": target[i]["text"], "source": "astronomy"} for i in range(15)]
    planted += [{"id": f"near{i}", "text": target[i]["text"] + " and then more", "source": "astronomy"}
                for i in range(15, 25)]
    planted += [{"id": f"leak{i}", "text": validation[i]["text"], "source": "astronomy"} for i in range(20)]
    planted += [{"id": f"lq{i}", "text": sloppy(rng, 80), "source": "astronomy"} for i in range(15)]
    pool = upload(service, base + planted, name="compose-pool")
    val = upload(service, validation, name="compose-validation")
    target = upload(service, target, name="compose-target")
    dedup = run_ok(service, "dedup", {"pool": pool["id"]})["result"]["manifest_id"]
    decon = run_ok(service, "decontaminate", {"pool": pool["id"], "against": [val["id"]]})["result"]["manifest_id"]
    quality = run_ok(service, "quality", {"pool": pool["id"], "presets": ["gopher_quality"]})["result"]["manifest_id"]
    return {"pool": pool, "val": val, "target": target, "dedup": dedup, "decon": decon, "quality": quality,
            "size": len(base) + len(planted)}


def assert_clean_selection(service, world, man: str, count: int = COUNT) -> None:
    """Exactly `count` selected, every pool document once, none that a cleaning manifest rejects, at
    most one of each duplicate cluster; the excluded ones unscored and naming the first manifest
    that excludes them."""
    d, c, q = world["dedup"], world["decon"], world["quality"]
    assert query(service, "SELECT count(*), count(DISTINCT doc_id), count(*) FILTER (WHERE selected) FROM s",
                 s=man) == [[world["size"], world["size"], count]]
    assert query(service, """SELECT count(*) FROM s JOIN d USING (doc_id) JOIN c USING (doc_id) JOIN q USING (doc_id)
                             WHERE s.selected AND NOT (d.selected AND c.selected AND q.selected)""",
                 s=man, d=d, c=c, q=q) == [[0]]
    assert query(service, """SELECT d.cluster_id FROM s JOIN d USING (doc_id) WHERE s.selected
                             GROUP BY 1 HAVING count(*) > 1""", s=man, d=d) == []
    assert query(service, "SELECT count(*) FROM s JOIN c USING (doc_id) WHERE s.selected AND c.contaminated",
                 s=man, c=c) == [[0]]
    wrong = query(service, f"""
        SELECT count(*) FROM s JOIN d USING (doc_id) JOIN c USING (doc_id) JOIN q USING (doc_id)
        WHERE s.excluded_by IS DISTINCT FROM CASE WHEN NOT d.selected THEN '{d}' WHEN NOT c.selected THEN '{c}'
                                                  WHEN NOT q.selected THEN '{q}' END
           OR (s.excluded_by IS NOT NULL AND (s.score IS NOT NULL OR s.rank IS NOT NULL OR s.selected))""",
                  s=man, d=d, c=c, q=q)
    assert wrong == [[0]]


def dsir_spec(world) -> dict:
    return {"pool": world["pool"]["id"], "target": world["target"]["id"], "select": {"count": COUNT},
            "sampling": "topk"}


@pytest.fixture(scope="module")
def plain_dsir(service, world) -> str:
    """DSIR's selection from the pool as it is, leaks, copies and all."""
    return run_ok(service, "dsir", dsir_spec(world))["result"]["manifest_id"]


def test_a_dsir_selection_restricted_by_every_cleaning_manifest(service, world, plain_dsir):
    spec, plain = dsir_spec(world), plain_dsir
    # Without the restriction the selector takes copies, leaks and low-quality text: the test is not vacuous.
    assert query(service, "SELECT count(*) FROM s JOIN c USING (doc_id) WHERE s.selected AND c.contaminated",
                 s=plain, c=world["decon"])[0][0] >= 1
    assert query(service, "SELECT count(*) FROM s JOIN d USING (doc_id) WHERE s.selected AND NOT d.kept",
                 s=plain, d=world["dedup"])[0][0] >= 5
    ids = [world["dedup"], world["decon"], world["quality"]]
    job = run_ok(service, "dsir", {**spec, "restrict": ids})
    man = job["result"]["manifest_id"]
    assert_clean_selection(service, world, man)
    # Excluded documents are not scored: DSIR's resampling key (computed only when scored) is NULL too.
    assert query(service, "SELECT count(*) FROM s WHERE excluded_by IS NOT NULL AND resample_key IS NOT NULL",
                 s=man) == [[0]]
    summary = job["result"]["summary"]
    assert summary["built_on"] == ids and summary["num_selected"] == COUNT
    excluded = query(service, "SELECT excluded_by, count(*) FROM s WHERE excluded_by IS NOT NULL GROUP BY 1", s=man)
    assert summary["excluded"] == {m: dict(excluded).get(m, 0) for m in ids}
    assert summary["excluded"][world["dedup"]] == 25 and summary["excluded"][world["decon"]] == 20
    assert summary["excluded_total"] == sum(summary["excluded"].values()) >= 60
    assert service.get(f"/v1/manifests/{man}").json()["num_selected"] == COUNT
    random_job = run_ok(service, "random", {"pool": world["pool"]["id"], "select": {"count": COUNT}, "restrict": ids,
                                            "mode": "per_shard"})
    assert_clean_selection(service, world, random_job["result"]["manifest_id"])


def test_a_color_filter_selection_restricted_by_every_cleaning_manifest(service, world):
    ids = [world["dedup"], world["decon"], world["quality"]]
    job = run_ok(service, "color_filter", {
        "pool": world["pool"]["id"], "target": world["target"]["id"], "select": {"count": COUNT}, "restrict": ids,
        "prior": {"train": FAST_TRAIN}, "conditional": {"finetune": FAST_FT}}, timeout=300)
    man = job["result"]["manifest_id"]
    assert_clean_selection(service, world, man)
    # Not scored: no model loss for an excluded document.
    assert query(service, """SELECT count(*) FILTER (WHERE prior_loss IS NOT NULL OR cond_loss IS NOT NULL),
                                    count(*) FROM s WHERE excluded_by IS NOT NULL""", s=man)[0][0] == 0
    assert job["result"]["summary"]["built_on"] == ids
    assert job["result"]["summary"]["scoring"]["documents"] == world["size"]


def test_restrict_must_be_over_the_pool(service, world):
    other = run_ok(service, "random", {"pool": world["val"]["id"], "select": {"count": 1}})["result"]["manifest_id"]
    spec = {"pool": world["pool"]["id"], "target": world["target"]["id"], "select": {"count": 5}}
    for body, field, words in (
            ({"kind": "dsir", "spec": {**spec, "restrict": [world["dedup"], other]}}, "spec.restrict.1",
             f"is over corpus {world['val']['id']}, not {world['pool']['id']}"),
            ({"kind": "random", "spec": {"pool": world["pool"]["id"], "select": {"count": 5}, "restrict": [other]}},
             "spec.restrict.0", "is over corpus"),
            ({"kind": "evaluate", "spec": {"selection": world["dedup"], "validation": world["val"]["id"],
                                           "restrict": [other]}}, "spec.restrict.0", "is over corpus"),
            ({"kind": "projection", "spec": {
                "sources": [{"corpus": world["pool"]["id"], "price_per_doc": 1, "available_docs": 10,
                             "restrict": [world["decon"]]},
                            {"corpus": world["target"]["id"], "price_per_doc": 1, "available_docs": 10,
                             "restrict": [other]}],
                "validation": world["val"]["id"], "pilot_sizes": [10, 20], "target_sizes": [100]}},
             "spec.sources.1.restrict.0", "is over corpus"),
            ({"kind": "dsir", "spec": {**spec, "restrict": [world["dedup"], world["dedup"]]}}, "spec.restrict",
             "twice")):
        r = service.post("/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["details"]["field"] == field and words in err["message"], err
    r = service.post("/v1/jobs", json={"kind": "dsir", "spec": {**spec, "restrict": ["man_missing"]}})
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "spec.restrict.0", r.text
    # Every id in a list is the caller's and resolves (a job id for its manifest), as single ids do.
    r = service.post("/v1/jobs", json={"kind": "dedup", "spec": {"pool": world["pool"]["id"], "against": ["cor_nope"]}})
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "spec.against.0", r.text
    dedup_job = service.get(f"/v1/manifests/{world['dedup']}").json()["job_id"]
    job = submit(service, "random", {"pool": world["pool"]["id"], "select": {"count": 5}, "restrict": [dedup_job]})
    assert job["spec"]["restrict"] == [world["dedup"]]
    r = service.post(f"/v1/manifests/{world['dedup']}/export", json={"restrict": [other]})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "restrict.0", r.text


def test_export_of_a_restricted_pool(service, world):
    """The dedup manifest's kept documents, less the contaminated ones, as a corpus."""
    r = service.post(f"/v1/manifests/{world['dedup']}/export", json={"restrict": [world["decon"]], "name": "clean"})
    assert r.status_code == 202, r.text
    job = wait(service, r.json()["id"])
    assert job["state"] == "succeeded", job
    expected = query(service, "SELECT count(*) FROM d JOIN c USING (doc_id) WHERE d.selected AND c.selected",
                     d=world["dedup"], c=world["decon"])[0][0]
    corpus_rec = service.get(f"/v1/corpora/{job['result']['corpus_id']}").json()
    assert corpus_rec["num_docs"] == expected == world["size"] - 25 - 20
    assert job["result"]["summary"]["built_on"] == [world["decon"]]


def test_evaluate_flags_a_gain_inflated_by_validation_leaks(service, world, plain_dsir):
    spec, leaky = dsir_spec(world), plain_dsir
    leaked = query(service, "SELECT count(*) FROM s WHERE selected AND doc_id LIKE 'leak%'", s=leaky)[0][0]
    ev = run_ok(service, "evaluate", {"selection": leaky, "validation": world["val"]["id"],
                                      "proxy": FAST_TRAIN}, timeout=300)["result"]["summary"]
    c = ev["contamination"]
    assert c["n"] == 13 and c["selection"]["docs"] == COUNT
    assert c["selection"]["exact_docs"] == leaked >= 1 and c["selection"]["ngram_docs"] == leaked
    assert c["selection"]["contaminated_docs"] == leaked and c["selection"]["fraction"] == pytest.approx(leaked / COUNT)
    assert c["random"]["docs"] == COUNT and c["random"]["contaminated_docs"] == c["random"]["exact_docs"]
    assert ev["relative_gain_flagged"] is True
    assert any("overlaps the validation corpus" in w and "inflated" in w for w in ev["warnings"]), ev["warnings"]
    # The same selector on the decontaminated pool: nothing leaks, in either arm (the random arm is
    # drawn from the pool the selection was built on), and the gain stands.
    clean = run_ok(service, "dsir", {**spec, "restrict": [world["decon"]]})["result"]["manifest_id"]
    ev = run_ok(service, "evaluate", {"selection": clean, "validation": world["val"]["id"],
                                      "proxy": FAST_TRAIN}, timeout=300)["result"]["summary"]
    assert ev["contamination"]["selection"]["contaminated_docs"] == 0
    assert ev["contamination"]["random"]["contaminated_docs"] == 0
    assert ev["relative_gain_flagged"] is False and ev["warnings"] == []
    assert ev["built_on"] == [world["decon"]]


def test_overlap_counts_exact_copies_and_shared_ngrams():
    """Hand-counted: a 17-word reference document has 5 13-grams; a copy that differs only in case
    and punctuation shares all 5 and is exact; one sharing a 15-word run shares 3; a 2-word copy
    is exact with no 13-gram."""
    ref = ["The quick brown fox jumps over the lazy dog again and again until the end of time.", "short one"]
    texts = ["the QUICK brown fox, jumps over the lazy dog again and again until the end of time",
             "Short   one!", "something else entirely with many words that go on and on and on and on", "",
             "x the quick brown fox jumps over the lazy dog again and again until the end y"]
    exact, matching = overlap(texts, ref, 13)
    assert exact.tolist() == [True, True, False, False, False]
    assert matching.tolist() == [5, 0, 0, 0, 3]
