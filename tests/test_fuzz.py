"""Hostile uploads: a few hundred mutated JSONL, CSV and Parquet bodies, plain and compressed. Each
answers 201 or a 4xx, the service stays up, and nothing of a rejected body is stored."""
from __future__ import annotations

import random

from tests.corpus_gen import compress, corpus, csv_bytes, jsonl, parquet_bytes

import pyarrow as pa

SEEDS = range(240)
SPECIAL = [b"null\n", b"[]\n", b"[1, 2]\n", b"1e999999\n", b'"text"\n', b"true\n", b"{}\n",
           b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", b'{"text": ' + b"9" * 5000 + b"}\n",
           b'{"id": 1e400, "text": "x"}\n', b'{"text": "\\ud800"}\n', b"\xff\xfe{\x00}\x00\n",
           b'{"text": "a"}{"text": "b"}\n', b"\x00" * 64, b"\n\n\n", b"{" * 3000 + b"\n"]


def mutate(rng: random.Random, body: bytes) -> bytes:
    kind = rng.choice(["truncate", "flip", "insert", "special", "splice"])
    data = bytearray(body)
    if kind == "truncate" and data:
        return bytes(data[:rng.randrange(len(data))])
    if kind == "flip" and data:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "insert":
        i = rng.randrange(len(data) + 1)
        return bytes(data[:i] + rng.choice(SPECIAL) + data[i:])
    if kind == "special":
        return b"".join(rng.choice(SPECIAL) for _ in range(rng.randint(1, 3)))
    cut = rng.randrange(len(data) + 1)
    return bytes(data[:cut]) + rng.choice(SPECIAL) + bytes(data[cut:])


def body_for(seed: int) -> tuple[bytes, str]:
    rng = random.Random(seed)
    rows = corpus(rng.randint(1, 12), seed=seed, min_words=2, max_words=8)
    fmt = rng.choice(["jsonl", "jsonl", "csv", "parquet"])
    data = {"jsonl": jsonl, "csv": csv_bytes}.get(fmt, lambda r: parquet_bytes(pa.Table.from_pylist(r)))(rows)
    compression = rng.choice(["", "", "gz", "zst"])
    if rng.random() < 0.5:           # mutate the plain bytes, then compress
        data = compress(mutate(rng, data), compression)
    else:                            # or mutate the compressed stream itself
        data = mutate(rng, compress(data, compression))
    name = f"f.{fmt}" + (f".{compression}" if compression else "")
    return data, name


def stored_corpora(service) -> set[str]:
    store = service.app.state.svc.store
    return set(store.list_dirs("corpora")) | set(store.list("uploads"))


def test_mutated_uploads_answer_4xx_or_201_and_store_nothing_when_refused(service):
    outcomes = {}
    for seed in SEEDS:
        data, name = body_for(seed)
        before_ids = {c["id"] for c in service.get("/v1/corpora", params={"limit": 1000}).json()["items"]}
        before_files = stored_corpora(service)
        r = service.post("/v1/corpora", params={"name": f"fuzz{seed}", "filename": name}, content=data)
        assert r.status_code == 201 or 400 <= r.status_code < 500, (seed, name, r.status_code, r.text)
        outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
        after_ids = {c["id"] for c in service.get("/v1/corpora", params={"limit": 1000}).json()["items"]}
        if r.status_code == 201:
            assert after_ids == before_ids | {r.json()["id"]}
            assert stored_corpora(service) == before_files | {r.json()["id"]}
        else:
            body = r.json()["error"]
            assert body["code"] and body["message"], (seed, r.text)
            assert after_ids == before_ids and stored_corpora(service) == before_files, (seed, name, r.text)
    assert service.get("/healthz").status_code == 200
    # The mutations must really exercise both answers.
    assert outcomes.get(201, 0) > 10 and sum(n for s, n in outcomes.items() if s != 201) > 100, outcomes


def test_decompression_bomb_and_endless_line_answer_413_and_store_nothing(service):
    import gzip
    settings = service.app.state.svc.settings
    saved = settings.max_decompressed_bytes, settings.max_doc_bytes
    settings.max_decompressed_bytes, settings.max_doc_bytes = 2_000_000, 500_000
    try:
        before = stored_corpora(service)
        bomb = gzip.compress(b"0" * 50_000_000)          # ~50 KB that inflate to 50 MB
        r = service.post("/v1/corpora", params={"name": "bomb", "filename": "b.jsonl.gz"}, content=bomb)
        assert r.status_code == 413 and r.json()["error"]["code"] == "decompressed_too_large", r.text
        endless = b'{"id": "a", "text": "' + b"x" * 1_000_000 + b'"}'   # one line, no newline
        r = service.post("/v1/corpora", params={"name": "long", "format": "jsonl"}, content=endless)
        assert r.status_code == 413 and r.json()["error"]["code"] == "document_too_large", r.text
        long_doc = jsonl([{"id": "a", "text": "ok"}, {"id": "b", "text": "y" * 600_000}])
        r = service.post("/v1/corpora", params={"name": "long", "format": "jsonl"}, content=long_doc)
        assert r.status_code == 413 and r.json()["error"]["details"]["line"] == 2, r.text
        assert stored_corpora(service) == before
    finally:
        settings.max_decompressed_bytes, settings.max_doc_bytes = saved


def test_a_line_that_is_no_object_is_refused_in_any_block(tmp_path):
    """pyarrow's JSON reader crashed on `null` lines, also at the start of a later parse block."""
    import pytest

    from storage.fs import Store
    from storage.ingest import IngestError, ingest
    rows = corpus(200, seed=5)
    data = jsonl(rows[:150]) + b"null\n" + jsonl(rows[150:])
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    with pytest.raises(IngestError) as info:
        ingest(str(path), filename="d.jsonl", store=Store(str(tmp_path / "s")), dest=("c",), block_size=512)
    assert info.value.code == "malformed_json" and info.value.details["line"] == 151


def test_unclosed_csv_quote_names_its_line(service):
    data = b'id,text\n1,fine\n2,"never closed\n3,more\n'
    r = service.post("/v1/corpora", params={"name": "q", "format": "csv"}, content=data)
    assert r.status_code == 400 and r.json()["error"]["details"]["line"] == 3, r.text
