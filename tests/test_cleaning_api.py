"""dedup, decontaminate and quality through the HTTP API, on generated corpora with planted
duplicates, leaks and low-quality documents whose answers are known."""
from __future__ import annotations


import pytest

from tests.corpus_gen import corpus
from tests.helpers import kill_tasks_of, run_ok, submit, upload, wait
from tests.test_quality import GOOD


def query(service, sql: str, **tables) -> list:
    r = service.post("/v1/query", json={"sql": sql, "tables": tables, "limit": 10_000})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def rows_by_id(service, manifest_id: str) -> dict[str, dict]:
    r = service.post("/v1/query", json={"sql": "SELECT * FROM m", "tables": {"m": manifest_id}, "limit": 10_000})
    body = r.json()
    names = [c["name"] for c in body["columns"]]
    return {row[0]: dict(zip(names, row)) for row in body["rows"]}


# -- dedup -----------------------------------------------------------------------------------------

def near_copy(text: str) -> str:
    """One word changed in the middle and three appended: Jaccard ≈ 0.85 on word 5-grams, and longer."""
    words = text.split()
    words[len(words) // 2] = "zebra"
    return " ".join(words) + " and then more"


@pytest.fixture(scope="module")
def dedup_data(service):
    base = corpus(300, seed=21, min_words=80, max_words=120)
    exact = [{"id": f"e{i}", "text": base[i]["text"].upper().replace(" ", ",  "), "source": "copies"}
             for i in range(10)]
    near = [{"id": f"n{i}", "text": near_copy(base[i]["text"]), "source": "copies"} for i in range(10, 20)]
    pool = upload(service, base + exact + near, name="dedup-pool")
    seen = upload(service, [{"id": f"s{k}", "text": base[20 + k]["text"], "source": "old"} for k in range(5)]
                  + corpus(20, seed=22, prefix="o"), name="dedup-seen")
    return pool, seen


def test_dedup_finds_planted_exact_and_near_duplicates(service, dedup_data):
    pool, seen = dedup_data
    job = run_ok(service, "dedup", {"pool": pool["id"], "against": [seen["id"]]})
    summary = job["result"]["summary"]
    rows = rows_by_id(service, job["result"]["manifest_id"])
    assert len(rows) == 320
    for i in range(10):
        for copy in (f"e{i}", f"n{i + 10}"):
            orig = f"d{i}" if copy[0] == "e" else f"d{i + 10}"
            a, b = rows[orig], rows[copy]
            assert a["cluster_id"] == b["cluster_id"] and a["cluster_size"] == b["cluster_size"] == 2, (a, b)
            assert a["kept"] and a["selected"] and not b["kept"] and not b["selected"]   # keep: first
            assert b["duplicate_of"] == orig and b["matched_corpus"] is None
    for k in range(5):   # the pool's copies of documents of an ingested corpus are dropped and name them
        r = rows[f"d{20 + k}"]
        assert not r["kept"] and r["matched_corpus"] == seen["id"] and r["matched_doc"] == f"s{k}"
        assert r["duplicate_of"] is None
    others = [r for d, r in rows.items() if d[0] == "d" and int(d[1:]) >= 25]
    assert all(r["kept"] and r["cluster_size"] == 1 and r["matched_doc"] is None for r in others)
    assert summary["num_selected"] == 320 - 10 - 10 - 5
    assert summary["clusters"] == 20 and summary["exact_duplicates"] == 10
    assert summary["matched_against"] == {seen["id"]: 5}
    assert summary["lsh"]["bands"] == 14 and summary["lsh"]["implied_threshold"] == pytest.approx(0.719, abs=1e-3)
    man = service.get(f"/v1/manifests/{job['result']['manifest_id']}").json()
    assert man["kind"] == "dedup" and man["num_selected"] == 295 and man["num_shards"] == 2


def test_dedup_threshold_verifies_pairs_and_keep_longest(service, dedup_data):
    pool, _ = dedup_data
    job = run_ok(service, "dedup", {"pool": pool["id"], "threshold": 0.99, "keep": "longest"})
    rows = rows_by_id(service, job["result"]["manifest_id"])
    for i in range(10):
        assert rows[f"e{i}"]["kept"] and not rows[f"d{i}"]["kept"]      # the upper-cased copy is longer
        assert rows[f"n{i + 10}"]["cluster_size"] == 1                   # Jaccard ≈ 0.85 < 0.99: not a pair
    summary = job["result"]["summary"]
    assert summary["verified_pairs"] < summary["candidate_pairs"]
    assert summary["num_selected"] == 310


def test_dedup_keeps_the_highest_score_of_another_manifest(service, dedup_data):
    pool, seen = dedup_data
    scores = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 5}, "seed": 3})
    scores_id = scores["result"]["manifest_id"]
    job = run_ok(service, "dedup", {"pool": pool["id"], "method": "exact",
                                    "keep": {"by": "score", "manifest": scores_id, "column": "score"}})
    wrong = query(service, """
        SELECT d.doc_id FROM d JOIN s USING (doc_id)
        WHERE d.cluster_size > 1 AND d.kept <> (s.score = (SELECT max(s2.score) FROM d d2 JOIN s s2 USING (doc_id)
                                                          WHERE d2.cluster_id = d.cluster_id))""",
                  d=job["result"]["manifest_id"], s=scores_id)
    assert wrong == []
    assert query(service, "SELECT count(*) FROM d WHERE cluster_size = 2 AND kept", d=job["result"]["manifest_id"]) == [[10]]


def test_a_bad_keep_manifest_is_refused_at_submit(service, dedup_data):
    """keep by the score of a manifest over another corpus, or without the column: a 422 naming
    keep.manifest or keep.column (with the manifest's corpus or columns), and no job is created."""
    pool, seen = dedup_data
    other = run_ok(service, "random", {"pool": seen["id"], "select": {"count": 1}})["result"]["manifest_id"]
    scores = run_ok(service, "random", {"pool": pool["id"], "select": {"count": 1}})["result"]["manifest_id"]
    before = service.get("/v1/jobs", params={"limit": 1000}).json()["items"]
    cases = (({"manifest": other}, "spec.keep.manifest", f"is over corpus {seen['id']}, not the pool {pool['id']}"),
             ({"manifest": scores, "column": "nope"}, "spec.keep.column", "has no column 'nope'; its columns are doc_id"))
    for keep, field, words in cases:
        r = service.post("/v1/jobs", json={"kind": "dedup", "spec": {"pool": pool["id"], "keep": {"by": "score", **keep}}})
        err = r.json()["error"]
        assert r.status_code == 422 and err["code"] == "bad_keep" and err["details"]["field"] == field, r.text
        assert err["message"].startswith(f"{field}: manifest {keep['manifest']} ") and words in err["message"], err
    assert err["details"]["columns"][:2] == ["doc_id", "corpus_id"] and "score" in err["details"]["columns"]
    assert service.get("/v1/jobs", params={"limit": 1000}).json()["items"] == before


def test_dedup_rejects_bad_specs(service, dedup_data):
    pool, seen = dedup_data
    for spec, field in (({"pool": pool["id"], "against": [pool["id"]]}, "spec"),
                        ({"pool": pool["id"], "against": [seen["id"], seen["id"]]}, "spec"),
                        ({"pool": pool["id"], "bands": 0}, "spec.bands"),
                        ({"pool": pool["id"], "threshold": 1.5}, "spec.threshold"),
                        ({"pool": pool["id"], "keep": "shortest"}, "spec.keep")):
        r = service.post("/v1/jobs", json={"kind": "dedup", "spec": spec})
        assert r.status_code == 422 and r.json()["error"]["details"]["field"].startswith(field), r.text
    r = service.post("/v1/jobs", json={"kind": "dedup", "spec": {"pool": pool["id"], "keep": {
        "by": "score", "manifest": "man_missing"}}})
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "spec.keep.manifest"


def test_killed_worker_mid_dedup_loses_nothing(service):
    base = corpus(3000, seed=23, min_words=150, max_words=250)
    copies = [{"id": f"c{i}", "text": near_copy(base[i]["text"])} for i in range(50)]
    pool = upload(service, base + copies, name="dedup-big")
    job = submit(service, "dedup", {"pool": pool["id"], "threshold": 0.6})
    assert kill_tasks_of(service, job["id"], "signature_task", "band_task", "cluster_task"), \
        "never caught a dedup task to kill"
    done = wait(service, job["id"], timeout=180)
    assert done["state"] == "succeeded", done
    man = done["result"]["manifest_id"]
    assert query(service, "SELECT count(*), count(DISTINCT doc_id), count(*) FILTER (WHERE kept) FROM m", m=man) \
        == [[3050, 3050, 3000]]
    assert query(service, """SELECT count(*) FROM m a JOIN m b ON b.doc_id = 'c' || substr(a.doc_id, 2)
                             WHERE a.cluster_id = b.cluster_id AND a.kept AND NOT b.kept""", m=man) == [[50]]


# -- decontaminate ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def leaks(service):
    validation = corpus(20, seed=32, min_words=60, max_words=80, prefix="v")
    base = corpus(200, seed=31, min_words=40, max_words=60, prefix="p")
    vwords = [v["text"].split() for v in validation]
    planted = [{"id": f"copy{k}", "text": validation[k]["text"]} for k in range(3)]
    planted += [{"id": f"embed{k}", "text": f"{base[k]['text']} {' '.join(vwords[k][10:30])} {base[k + 1]['text']}"}
                for k in range(3, 7)]
    planted.append({"id": "short", "text": f"{base[9]['text']} {' '.join(vwords[7][10:20])} {base[10]['text']}"})
    pool = upload(service, base + planted, name="leaky-pool")
    val = upload(service, validation, name="validation")
    return pool, val


def test_decontaminate_flags_planted_validation_text(service, leaks):
    pool, val = leaks
    job = run_ok(service, "decontaminate", {"pool": pool["id"], "against": [val["id"]]})
    rows = rows_by_id(service, job["result"]["manifest_id"])
    flagged = {d for d, r in rows.items() if r["contaminated"]}
    assert flagged == {"copy0", "copy1", "copy2", "embed3", "embed4", "embed5", "embed6"}
    for k in range(3):
        r = rows[f"copy{k}"]
        assert r["matched_doc"] == f"v{k}" and r["matched_corpus"] == val["id"]
        assert r["matching_ngrams"] == r["ngrams"] and r["match_fraction"] == 1.0 and not r["selected"]
    for k in range(3, 7):
        r = rows[f"embed{k}"]
        assert r["matched_doc"] == f"v{k}" and 8 <= r["matching_ngrams"] < 13   # 20 shared words: 8 13-grams
    assert rows["short"]["matching_ngrams"] == 0 and rows["short"]["selected"]   # 10 shared words: no 13-gram
    summary = job["result"]["summary"]
    assert summary["contaminated"] == 7 and summary["num_selected"] == len(rows) - 7
    assert summary["contaminated_by_corpus"] == {val["id"]: 7}
    strict = run_ok(service, "decontaminate", {"pool": pool["id"], "against": [val["id"]], "min_fraction": 0.5})
    assert strict["result"]["summary"]["contaminated"] == 3            # the whole copies only
    r = service.post("/v1/jobs", json={"kind": "decontaminate", "spec": {"pool": pool["id"], "against": []}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "spec.against"


# -- quality ---------------------------------------------------------------------------------------

def test_quality_statistics_presets_and_retuning(service):
    docs = [{"id": f"good{i}", "text": GOOD, "source": "books"} for i in range(5)]
    docs += [{"id": f"hash{i}", "text": GOOD.replace(" the ", " #the "), "source": "web"} for i in range(4)]
    docs += [{"id": f"short{i}", "text": "Too short to count.", "source": "web"} for i in range(3)]
    docs += [{"id": "empty", "text": " ", "source": "web"}]
    pool = upload(service, docs, name="quality-pool")
    job = run_ok(service, "quality", {"pool": pool["id"]})
    man = job["result"]["manifest_id"]
    rows = rows_by_id(service, man)
    assert {d for d, r in rows.items() if r["selected"]} == {f"good{i}" for i in range(5)}
    assert all(r["passes_all"] == r["selected"] for r in rows.values())
    assert rows["hash0"]["hash_word_ratio"] > 0.1 and not rows["hash0"]["gopher_quality"]
    assert rows["hash0"]["gopher_repetition"] and rows["hash0"]["fineweb"]
    summary = job["result"]["summary"]
    assert summary["rejected_by_rule"]["gopher_hash_ratio"] == 4
    assert summary["rejected_by_rule"]["gopher_min_words"] == 4           # the short ones and the empty one
    assert summary["rejected_by_preset"]["gopher_quality"] == 8
    assert summary["by_source"]["web"] == {"docs": 8, "selected": 0, "rejected_by_preset": {
        "gopher_quality": 8, "gopher_repetition": 0, "c4": 4, "fineweb": 4}}
    assert summary["presets"]["gopher_quality"].startswith("(n_words >= 50)")
    # retune without measuring again: allow up to 0.3 '#' per word
    retuned = summary["presets"]["gopher_quality"].replace("hash_word_ratio <= 0.1", "hash_word_ratio <= 0.3")
    assert query(service, f"SELECT count(*) FROM m WHERE {retuned}", m=man) == [[9]]
    only = run_ok(service, "quality", {"pool": pool["id"], "presets": ["fineweb"]})
    assert only["result"]["summary"]["num_selected"] == 9                  # good and hash docs pass FineWeb
    r = service.post("/v1/jobs", json={"kind": "quality", "spec": {"pool": pool["id"], "presets": ["nope"]}})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"].startswith("spec.presets")
