"""Data in as it is: every extra field kept, typed and queryable; plain text as documents."""
from __future__ import annotations

import json

import pyarrow as pa

from storage.fs import Store
from storage.ingest import ingest
from tests.helpers import run_ok, upload, wait
from thresher.data import SelectionDataset

# Several types, a null, a nested object (with keys that differ), a list, and one field whose
# type disagrees across documents (kept as JSON text, and said so).
DOCS = [{"id": f"d{i:02d}", "text": f"document {i} " + "word " * (i % 5), "source": "web" if i % 2 else "books",
         "url": f"https://example.org/{i}", "year": 2000 + i, "score": i / 4, "open": i % 3 == 0,
         "note": None, "meta": {"licence": "cc-by", "pages": i} if i % 4 else {"licence": "mit"},
         "tags": ["a", "b"][: i % 3], "mixed": i if i % 2 else f"s{i}"} for i in range(40)]
EXTRAS = ("url", "year", "score", "open", "note", "meta", "tags")


def stored(doc: dict) -> dict:
    """A document as it comes back: the nested object with every key the corpus has, `mixed` as JSON."""
    meta = {"licence": doc["meta"]["licence"], "pages": doc["meta"].get("pages")}
    return {**{k: doc[k] for k in EXTRAS}, "meta": meta, "mixed": json.dumps(doc["mixed"])}


def test_extra_fields_reach_sample_query_export_and_dataset(service):
    corpus = upload(service, DOCS, name="with-fields")
    assert corpus["fields"] == {"url": "string", "year": "int64", "score": "double", "open": "bool",
                                "note": "null", "meta": "struct<licence: string, pages: int64>",
                                "tags": "list<element: string>", "mixed": "string"}
    assert corpus["json_fields"] == ["mixed"]
    by_id = {d["id"]: d for d in DOCS}

    sample = service.get(f"/v1/corpora/{corpus['id']}/sample", params={"n": 5}).json()["items"]
    assert len(sample) == 5
    for doc in sample:
        assert {k: doc[k] for k in (*EXTRAS, "mixed")} == stored(by_id[doc["id"]])

    manifest = run_ok(service, "random", {"pool": corpus["id"], "select": {"count": 10}})["result"]["manifest_id"]
    r = service.post("/v1/query", json={
        "sql": "SELECT m.doc_id, c.url, c.year, c.score, c.open, c.meta.licence AS licence, c.tags "
               "FROM m JOIN c ON c.id = m.doc_id WHERE m.selected ORDER BY m.doc_id",
        "tables": {"m": manifest, "c": corpus["id"]}})
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    assert len(rows) == 10
    for doc_id, url, year, score, is_open, licence, tags in rows:
        d = by_id[doc_id]
        assert (url, year, score, is_open, licence, tags) == (d["url"], d["year"], d["score"], d["open"],
                                                             d["meta"]["licence"], d["tags"])
    selected = {row[0] for row in rows}

    r = service.post(f"/v1/manifests/{manifest}/export", json={"selected_only": True})
    assert r.status_code == 202, r.text
    export = wait(service, r.json()["id"])
    assert export["state"] == "succeeded", export
    new = service.get(f"/v1/corpora/{export['result']['corpus_id']}").json()
    assert new["num_docs"] == 10 and new["fields"] == corpus["fields"] and new["json_fields"] == ["mixed"]
    exported = service.get(f"/v1/corpora/{new['id']}/sample", params={"n": 100}).json()["items"]
    assert {d["id"] for d in exported} == selected
    for doc in exported:
        assert {k: doc[k] for k in (*EXTRAS, "mixed")} == stored(by_id[doc["id"]])

    store_root = service.app.state.svc.settings.store_root
    items = list(SelectionDataset(manifest, storage=store_root, shuffle=False))
    assert {x["doc_id"] for x in items} == selected
    for x in items:
        d = by_id[x["doc_id"]]
        assert x["text"] == d["text"] and x["source"] == d["source"]
        assert {k: x[k] for k in (*EXTRAS, "mixed")} == stored(d)
    lean = next(iter(SelectionDataset(manifest, storage=store_root, shuffle=False, fields=["url"])))
    assert set(lean) == {"text", "doc_id", "index", "url"}


def test_fields_whose_blocks_disagree_are_unified(tmp_path):
    """A field null in the first block and typed later, an int widened to a float, a field that
    first appears late: one schema for the corpus, every shard rewritten to it."""
    lines = [{"text": f"t{i}", "a": None if i < 30 else i, "b": i if i < 50 else i + 0.5,
              **({"late": "x"} if i == 70 else {})} for i in range(80)]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    store = Store(str(tmp_path / "store"))
    stats = ingest(str(path), filename="a.jsonl", store=store, dest=("c",), block_size=400, shard_size=25)
    assert stats.fields == {"a": "int64", "b": "double", "late": "string"} and stats.json_fields == []
    shards = [store.read_parquet("c", n) for n in sorted(p.rsplit("/", 1)[-1] for p in store.list("c"))]
    assert len({t.schema for t in shards}) == 1
    rows = pa.concat_tables(shards).to_pylist()
    assert [r["a"] for r in rows] == [x["a"] for x in lines]
    assert [r["b"] for r in rows] == [x["b"] for x in lines] and rows[70]["late"] == "x"


def test_csv_extras_are_strings_and_a_clashing_name_is_kept_aside(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("body,id,text,licence\nhello,1,old text,mit\nworld,2,,cc\n")
    store = Store(str(tmp_path / "store"))
    stats = ingest(str(path), filename="a.csv", store=store, dest=("c",), text_field="body")
    assert stats.fields == {"extra_text": "string", "licence": "string"}
    rows = store.read_parquet("c", "shard-00000.parquet").to_pylist()
    assert [(r["text"], r["extra_text"], r["licence"]) for r in rows] == [("hello", "old text", "mit"),
                                                                          ("world", "", "cc")]


def text_tree(root):
    (root / "manuals").mkdir(parents=True)
    (root / "faq").mkdir()
    (root / "manuals" / "intro.txt").write_text("Intro line one.\nIntro line two.\n")
    (root / "manuals" / "install.md").write_text("# Install\n\nRun it.\n")
    (root / "faq" / "q1.txt").write_text("Why?\r\nBecause.\r\n")
    (root / "top.txt").write_text("At the top.")
    (root / "ignored.bin").write_bytes(b"\x00\x01")


def test_a_directory_of_text_files_registers_and_uploads(service, tmp_path):
    root = service.allowed_root / "textdir"
    text_tree(root)
    (root / "ignored.bin").unlink()        # a registration reads every file it names
    r = service.post("/v1/corpora", json={"name": "texts", "uri": str(root), "format": "text",
                                           "source_from": "dir"})
    assert r.status_code == 202, r.text
    job = wait(service, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    corpus = service.get(f"/v1/corpora/{r.json()['id']}").json()
    assert corpus["num_docs"] == 4 and corpus["sources"] == {"manuals": 2, "faq": 1}
    docs = {d["id"]: d for d in service.get(f"/v1/corpora/{corpus['id']}/sample", params={"n": 10}).json()["items"]}
    assert docs["manuals/intro.txt"]["text"] == "Intro line one.\nIntro line two.\n"
    assert docs["manuals/intro.txt"]["source"] == "manuals" and docs["top.txt"]["source"] is None
    assert set(docs) == {"faq/q1.txt", "manuals/install.md", "manuals/intro.txt", "top.txt"}

    r = service.post("/v1/corpora", json={"name": "lines", "uri": str(root / "manuals"), "split": "paragraph"})
    job = wait(service, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    docs = service.get(f"/v1/corpora/{r.json()['id']}/sample", params={"n": 10}).json()["items"]
    assert [(d["id"], d["text"]) for d in docs] == [("install.md#1", "# Install"), ("install.md#3", "Run it."),
                                                    ("intro.txt#1", "Intro line one.\nIntro line two.")]

    # A single uploaded .txt: a document per paragraph unless told otherwise.
    r = service.post("/v1/corpora", params={"name": "one", "filename": "notes.txt"},
                     content=b"first para\nstill first\n\n\nsecond\n")
    assert r.status_code == 201, r.text
    docs = service.get(f"/v1/corpora/{r.json()['id']}/sample").json()["items"]
    assert [(d["id"], d["text"]) for d in docs] == [("notes.txt#1", "first para\nstill first"), ("notes.txt#5", "second")]


def test_client_upload_dir_packs_a_directory(live_service, tmp_path):
    from thresher import Client
    text_tree(tmp_path / "docs")
    client = Client(live_service.url, api_key=live_service.key)
    corpus = client.corpora.upload_dir(tmp_path / "docs", "packed", split="line", source_from="dir")
    docs = {d["id"]: d for d in client.corpora.sample(corpus.id, n=20)}
    assert docs == {
        "faq/q1.txt#1": {"id": "faq/q1.txt#1", "text": "Why?", "source": "faq"},
        "faq/q1.txt#2": {"id": "faq/q1.txt#2", "text": "Because.", "source": "faq"},
        "manuals/install.md#1": {"id": "manuals/install.md#1", "text": "# Install", "source": "manuals"},
        "manuals/install.md#3": {"id": "manuals/install.md#3", "text": "Run it.", "source": "manuals"},
        "manuals/intro.txt#1": {"id": "manuals/intro.txt#1", "text": "Intro line one.", "source": "manuals"},
        "manuals/intro.txt#2": {"id": "manuals/intro.txt#2", "text": "Intro line two.", "source": "manuals"},
        "top.txt#1": {"id": "top.txt#1", "text": "At the top.", "source": None}}


def read_text(tmp_path, data: bytes, split: str, **kw):
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    store = Store(str(tmp_path / f"store-{split}-{len(list(tmp_path.iterdir()))}"))
    ingest(str(path), filename="dir/in.txt", store=store, dest=("c",), split=split, **kw)
    return [(r["id"], r["text"], r["source"]) for r in store.read_parquet("c", "shard-00000.parquet").to_pylist()]


def test_text_splits_on_hand_made_input(tmp_path):
    from storage.ingest import IngestError
    data = b"\xef\xbb\xbfone\r\n\r\n  \ntwo a\ntwo b\r\n\n\nthree"     # BOM, CRLF, a blank line of spaces, no final newline
    assert read_text(tmp_path, data, "line") == [("dir/in.txt#1", "one", None), ("dir/in.txt#4", "two a", None),
                                                ("dir/in.txt#5", "two b", None), ("dir/in.txt#8", "three", None)]
    assert read_text(tmp_path, data, "paragraph") == [("dir/in.txt#1", "one", None),
                                                     ("dir/in.txt#4", "two a\ntwo b", None),
                                                     ("dir/in.txt#8", "three", None)]
    assert read_text(tmp_path, data, "file", source_from="dir") == [("dir/in.txt", data[3:].decode(), "dir")]
    assert read_text(tmp_path, b"a\n\nb\n", "line") == [("dir/in.txt#1", "a", None), ("dir/in.txt#3", "b", None)]
    for split in ("line", "paragraph", "file"):
        try:
            read_text(tmp_path, b"fine\nfine\nbad \xff here\n", split)
            raise AssertionError("invalid UTF-8 accepted")
        except IngestError as e:
            assert e.code == "invalid_utf8" and e.details["line"] == 3 and "line 3" in e.message
    try:
        read_text(tmp_path, b"short\n" + b"x" * 50 + b"\n", "line", max_doc_bytes=20)
        raise AssertionError("a long line accepted")
    except IngestError as e:
        assert e.code == "document_too_large" and e.details["line"] == 2
