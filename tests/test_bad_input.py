"""Bad input answers a clear 4xx naming the problem, and changes nothing."""
from __future__ import annotations

import gzip
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.corpus_gen import corpus, jsonl
from tests.helpers import upload


def corpus_state(service):
    """What a failed request must not change: the catalog's corpora and the stored corpus folders."""
    root = os.path.join(service.app.state.svc.store.base, "corpora")
    return ([c["id"] for c in service.get("/v1/corpora", params={"limit": 1000}).json()["items"]],
            sorted(os.listdir(root)) if os.path.isdir(root) else [])


def post(service, body: bytes, **params):
    return service.post("/v1/corpora", params={"name": "bad", "format": "jsonl", **params}, content=body)


GOOD = jsonl(corpus(10, seed=1))


@pytest.mark.parametrize("body, status, code, line", [
    (GOOD + b'{"id": "x", "text": "unterminated\n' + GOOD.replace(b'"d', b'"e'), 400, None, 11),
    (b'{"id": "a", "text": "ok"}\n{"id": "b", "txt": "no text"}\n', 422, None, 2),
    (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": 42}\n', 422, None, 2),
    (b'{"id": "a", "text": "ok"}\n{"id": "a", "text": "again"}\n', 422, "duplicate_id", None),
    (b"", 400, "empty_file", None),
    (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "bad \xff\xfe bytes"}\n', 400, None, 2),
])
def test_bad_uploads_change_nothing(service, body, status, code, line):
    before = corpus_state(service)
    r = post(service, body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert r.status_code == status, (r.status_code, err)
    if code:
        assert err["code"] == code
    if line:
        assert err["details"]["line"] == line and str(line) in err["message"], err
    assert corpus_state(service) == before


def test_duplicate_ids_are_named(service):
    r = post(service, b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n')
    assert r.status_code == 422
    assert "a" in r.json()["error"]["message"]


def test_upload_over_limit_is_413(service):
    before = corpus_state(service)
    big = jsonl(corpus(40_000, seed=2))
    assert len(big) > 5_000_000
    r = post(service, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert corpus_state(service) == before


def test_multipart_upload(service):
    data = jsonl(corpus(20, seed=4))
    r = service.post("/v1/corpora", data={"name": "mp"}, files={"file": ("docs.jsonl", data, "application/octet-stream")})
    assert r.status_code == 201, r.text
    assert r.json()["num_docs"] == 20


def test_empty_documents_are_reported(service):
    rows = corpus(5, seed=3) + [{"id": "empty1", "text": ""}, {"id": "empty2", "text": "   "}]
    c = upload(service, rows, name="with-empty")
    assert c["num_empty"] == 2 and c["empty_doc_ids"] == ["empty1", "empty2"]


def test_missing_name_and_unknown_format(service):
    r = service.post("/v1/corpora", params={"format": "jsonl"}, content=GOOD)
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "name"
    r = service.post("/v1/corpora", params={"name": "x"}, content=b"id,text\n1,a\n")   # CSV is never guessed
    assert r.status_code == 415 and r.json()["error"]["details"]["field"] == "format"
    for body in (GOOD, gzip.compress(GOOD), zstandard.ZstdCompressor().compress(GOOD)):   # sniffed: JSONL
        r = service.post("/v1/corpora", params={"name": "sniffed"}, content=body,
                         headers={"content-type": "application/octet-stream"})
        assert r.status_code == 201 and r.json()["num_docs"] == GOOD.count(b"\n"), r.text
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["a", "b"]}), sink)
    r = service.post("/v1/corpora", params={"name": "sniffed-parquet"}, content=sink.getvalue().to_pybytes())
    assert r.status_code == 201 and r.json()["num_docs"] == 2 and r.json()["ids_generated"] is True


@pytest.mark.parametrize("spec, field", [
    ({"pool": "cor_x", "select": {"fraction": 1.5}}, "spec.select.fraction"),
    ({"pool": "cor_x", "select": {"fraction": 0.1, "count": 3}}, "spec.select"),
    ({"pool": "cor_x", "select": {"count": 3}, "mode": "sideways"}, "spec.mode"),
    ({"pool": "cor_x", "select": {"count": 3}, "bogus": 1}, "spec.bogus"),
    ({"select": {"count": 3}}, "spec.pool"),
])
def test_bad_spec_field_is_named(service, spec, field):
    n_jobs = len(service.get("/v1/jobs", params={"limit": 1000}).json()["items"])
    r = service.post("/v1/jobs", json={"kind": "random", "spec": spec})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["field"] == field, r.json()
    assert len(service.get("/v1/jobs", params={"limit": 1000}).json()["items"]) == n_jobs


def test_unknown_kind_and_ids(service):
    r = service.post("/v1/jobs", json={"kind": "telepathy", "spec": {}})
    assert r.status_code == 422 and "kind" in r.json()["error"]["details"]["field"]
    r = service.post("/v1/jobs", json={"kind": "random", "spec": {"pool": "cor_nope", "select": {"count": 1}}})
    assert r.status_code == 404 and r.json()["error"]["details"]["field"] == "spec.pool"
    for url in ("/v1/corpora/cor_nope", "/v1/jobs/job_nope", "/v1/manifests/man_nope",
                "/v1/manifests/man_nope/shards", "/v1/corpora/cor_nope/sample"):
        r = service.get(url)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", url
    assert service.post("/v1/jobs/job_nope/cancel").status_code == 404
    r = service.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "body"


def _kinds_listed() -> str:
    from workers.registry import KINDS
    return "kind is one of " + ", ".join(k.name for k in KINDS.values() if not k.internal)


KINDS_LISTED = _kinds_listed()


@pytest.mark.parametrize("path, body, field, message", [
    ("/v1/jobs", {"kind": "dsir", "spec": {"pool": "p", "target": "t", "selection": {"fraction": 0.1}}},
     "spec.selection", "unknown field 'selection' in spec; did you mean 'select'?"),
    ("/v1/jobs", {"kind": "random", "spec": {"pool": "p", "select": {"fracton": 0.1}}},
     "spec.select.fracton", "unknown field 'fracton' in spec.select; did you mean 'fraction'?"),
    ("/v1/jobs", {"kind": "color_filter", "spec": {"pool": "p", "target": "t", "select": {"count": 1},
                                                   "prior": {"modle": "m"}}},
     "spec.prior.modle", "unknown field 'modle' in spec.prior; did you mean 'model'?"),
    ("/v1/jobs", {"kind": "random", "sepc": {"pool": "p", "select": {"count": 1}}},
     "sepc", "unknown field 'sepc' in the body; did you mean 'spec'?"),
    ("/v1/jobs", {"type": "dsir", "spec": {}},
     "kind", f"missing field 'kind' in the body, which has 'type', 'spec' ({KINDS_LISTED})"),
    ("/v1/jobs", {"kind": "dsri", "spec": {}},
     "kind", f"unknown kind 'dsri' in the body; did you mean 'dsir'? ({KINDS_LISTED})"),
    ("/v1/query", {"sql": "SELECT 1", "table": {}},
     "table", "unknown field 'table' in the body; did you mean 'tables'?"),
    ("/v1/corpora", {"name": "x", "url": "/data/x.jsonl"},
     "url", "unknown field 'url' in the body; did you mean 'uri'?"),
    ("/v1/jobs", {"kind": "random", "spec": {"select": {"count": 1}}},
     "spec.pool", "spec.pool: required field missing"),
])
def test_mistakes_are_named_in_plain_words(service, path, body, field, message):
    n_jobs = len(service.get("/v1/jobs", params={"limit": 1000}).json()["items"])
    r = service.post(path, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["details"]["field"], err["message"]) == (field, message)
    assert len(service.get("/v1/jobs", params={"limit": 1000}).json()["items"]) == n_jobs


def test_a_name_where_an_id_is_expected(service):
    """A unique name of the caller's resolves (paths and specs, saying so in a submission's
    answer); an ambiguous one, or another tenant's, is a 404 that says what it found."""
    one = upload(service, corpus(10, seed=3), name="only-one")
    assert service.get("/v1/corpora/only-one").json()["id"] == one["id"]
    assert service.get("/v1/corpora/only-one/shards").status_code == 200
    r = service.post("/v1/jobs", json={"kind": "random", "spec": {"pool": "only-one", "select": {"count": 2}}})
    assert r.status_code == 202 and r.json()["spec"]["pool"] == one["id"], r.text
    assert r.json()["resolved"] == [{"field": "spec.pool", "given": "only-one", "id": one["id"]}]
    assert service.get(f"/v1/jobs/{r.json()['id']}").json()["spec"]["pool"] == one["id"]
    ids = [upload(service, corpus(5, seed=i), name="two-of-them")["id"] for i in (4, 5)]
    ambiguous = {"kind": "random", "spec": {"pool": "two-of-them", "select": {"count": 1}}}
    for r in (service.get("/v1/corpora/two-of-them"), service.post("/v1/jobs", json=ambiguous)):
        err = r.json()["error"]
        assert r.status_code == 404 and err["code"] == "ambiguous_name" and set(err["details"]["matches"]) == set(ids)
    r = service.get("/v1/corpora/only-one", headers={"Authorization": "Bearer key-bob"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "no corpus has the id or the name 'only-one'"
    r = service.post("/v1/jobs", json={"kind": "random", "spec": {"pool": "nothing-such", "select": {"count": 1}}})
    assert r.status_code == 404 and r.json()["error"]["message"] == \
        "spec.pool: no corpus has the id or the name 'nothing-such'"
