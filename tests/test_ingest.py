"""Streaming corpus ingestion: formats, compression, ids, validation with line numbers, cleanup."""
import gzip

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from storage.fs import Store
from service.errors import from_domain
from storage import layout
from storage.ingest import CorpusStats, IngestError, detect_format, ingest, iter_corpus
from tests.corpus_gen import compress, csv_bytes, encode, jsonl, parquet_bytes

DEST = layout.corpus("c1")


def corpus_shards(store, dest):
    return [path[-1] for _, path in layout.shards_in(store, dest)]


DOCS = [
    {"id": "a", "text": "The quick brown fox.", "source": "web"},
    {"id": "b", "text": "Ünïcödé — 日本語 text, with \"quotes\",\nand a newline.", "source": "books"},
    {"id": "c", "text": "   ", "source": "web"},
    {"id": "d", "text": "", "source": None},
    {"id": "e", "text": "last, one", "source": "web"},
]


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"))


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def stored(store) -> list[dict]:
    return [row for batch in iter_corpus(store, DEST) for row in batch.to_pylist()]


def failing(store, tmp_path, name, data, code, **kwargs) -> IngestError:
    """Ingest bad input: it must raise `code` and leave nothing under dest."""
    with pytest.raises(IngestError) as info:
        ingest(write(tmp_path, name, data), filename=name, store=store, dest=DEST, **kwargs)
    assert info.value.code == code, info.value.to_dict()
    assert not store.exists(*DEST)
    return info.value


# -- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["", "gz", "zst"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_round_trip(store, tmp_path, fmt, compression):
    name = f"docs.{fmt}" + (f".{compression}" if compression else "")
    path = write(tmp_path, name, compress(encode(DOCS, fmt), compression))
    stats = ingest(path, filename=name, store=store, dest=DEST, shard_size=2)
    expected = [dict(d) for d in DOCS]
    if fmt == "csv":
        expected[3]["source"] = None     # an empty CSV cell means no source
    assert stored(store) == expected
    assert corpus_shards(store, DEST) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert isinstance(stats, CorpusStats)
    assert stats.to_dict() == {
        "num_docs": 5, "num_shards": 3,
        "num_bytes": sum(len(d["text"].encode()) for d in DOCS),
        "num_empty": 2, "empty_ids": ["c", "d"],
        "sources": {"web": 3, "books": 1}, "ids_generated": False, "fields": {}, "json_fields": [],
    }
    assert store.read_parquet(*DEST, "shard-00000.parquet").schema.field("id").type == pa.string()


def test_compression_is_detected_from_magic_bytes(store, tmp_path):
    # a gzip file whose name does not say so
    path = write(tmp_path, "upload.jsonl", gzip.compress(jsonl(DOCS)))
    assert ingest(path, filename="upload.jsonl", store=store, dest=DEST).num_docs == 5


def test_filesystem_and_path_source(store, tmp_path):
    path = write(tmp_path, "docs.jsonl", jsonl(DOCS))
    stats = ingest((pafs.LocalFileSystem(), path), filename="docs.jsonl", store=store, dest=DEST)
    assert stats.num_docs == 5


def test_format_from_name_and_unknown_format(store, tmp_path):
    assert detect_format("x.ndjson.zst") == "jsonl"
    assert detect_format("x.JSON.gz") == "jsonl"
    assert detect_format("x.csv") == "csv"
    assert detect_format("x.bin", "parquet") == "parquet"
    assert detect_format("notes/a.txt") == detect_format("b.md.gz") == "text"   # plain text reads as it is
    with pytest.raises(IngestError) as info:
        detect_format("x.docx")
    assert info.value.code == "unknown_format" and from_domain(info.value).status == 415
    failing(store, tmp_path, "x.jsonl", jsonl(DOCS), "unknown_format", format="xml")


def test_stable_order_across_shards_and_blocks(store, tmp_path):
    docs = [{"id": f"d{i}", "text": f"document number {i} " + "x" * (i % 7)} for i in range(103)]
    path = write(tmp_path, "many.jsonl", jsonl(docs))
    progress = []
    stats = ingest(path, filename="many.jsonl", store=store, dest=DEST, shard_size=10, block_size=64,
                   progress=progress.append)
    assert stats.num_shards == 11
    assert progress == sorted(progress) and progress[-1] == 103 and len(progress) > 10
    assert [r["id"] for r in stored(store)] == [d["id"] for d in docs]
    assert [store.parquet_file(*DEST, s).metadata.num_rows for s in corpus_shards(store, DEST)] == [10] * 10 + [3]


@pytest.mark.parametrize("codec", ["zstd", "lz4", "snappy", "none"])
def test_shard_codec_and_encodings(store, tmp_path, codec):
    path = write(tmp_path, "docs.jsonl", jsonl(DOCS))
    ingest(path, filename="docs.jsonl", store=store, dest=DEST, compression=codec)
    assert stored(store) == DOCS
    group = store.parquet_file(*DEST, "shard-00000.parquet").metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert {c.compression for c in columns.values()} == {{"none": "UNCOMPRESSED"}.get(codec, codec.upper())}
    # a dictionary only where values repeat; no statistics of whole documents
    assert [name for name, c in columns.items() if "RLE_DICTIONARY" in c.encodings] == ["source"]
    assert not columns["text"].is_stats_set and columns["id"].is_stats_set


def test_unknown_shard_codec(store, tmp_path):
    with pytest.raises(ValueError, match="brotli"):
        ingest(write(tmp_path, "docs.jsonl", jsonl(DOCS)), filename="docs.jsonl", store=store, dest=DEST,
               compression="brotli")


@pytest.mark.parametrize("block_size", [7, 64, 1000, 1 << 20])
def test_bom_lines_longer_than_a_block_and_no_final_newline(store, tmp_path, block_size):
    docs = [{"id": f"d{i}", "text": "x" * (i * 37 % 500) + " é"} for i in range(60)]
    data = b"\xef\xbb\xbf" + jsonl(docs).rstrip(b"\n")
    ingest(write(tmp_path, "d.jsonl", data), filename="d.jsonl", store=store, dest=DEST, block_size=block_size)
    assert [{"id": r["id"], "text": r["text"]} for r in stored(store)] == docs


# -- ids -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_ids_are_generated_when_absent(store, tmp_path, fmt):
    docs = [{"text": f"t{i}", "source": "s"} for i in range(12)]
    data = csv_bytes(docs, ("text", "source")) if fmt == "csv" else encode(docs, fmt)
    ingest(write(tmp_path, f"d.{fmt}", data), filename=f"d.{fmt}", store=store, dest=DEST, shard_size=5)
    assert [r["id"] for r in stored(store)] == [f"{i:010d}" for i in range(12)]


def test_int_ids_become_strings(store, tmp_path):
    docs = [{"id": i * 7, "text": f"t{i}"} for i in range(4)]
    ingest(write(tmp_path, "d.jsonl", jsonl(docs)), filename="d.jsonl", store=store, dest=DEST)
    assert [r["id"] for r in stored(store)] == ["0", "7", "14", "21"]
    store.delete(*DEST)
    ingest(write(tmp_path, "d.parquet", encode(docs, "parquet")), filename="d.parquet", store=store, dest=DEST)
    assert [r["id"] for r in stored(store)] == ["0", "7", "14", "21"]
    store.delete(*DEST)
    # CSV ids stay text: leading zeros survive
    data = b"id,text\n007,a\n8,b\n"
    ingest(write(tmp_path, "d.csv", data), filename="d.csv", store=store, dest=DEST)
    assert [r["id"] for r in stored(store)] == ["007", "8"]


def test_mixed_int_and_string_ids_in_one_block(store, tmp_path):
    docs = [{"id": 1, "text": "a"}, {"id": "x", "text": "b"}, {"id": 2, "text": "c"}]
    ingest(write(tmp_path, "d.jsonl", jsonl(docs)), filename="d.jsonl", store=store, dest=DEST)
    assert [r["id"] for r in stored(store)] == ["1", "x", "2"]


def test_ids_on_some_documents_only(store, tmp_path):
    err = failing(store, tmp_path, "d.jsonl", jsonl([{"id": "a", "text": "x"}, {"text": "y"}]), "missing_field")
    assert err.details == {"line": 2, "field": "id"}
    err = failing(store, tmp_path, "d.jsonl", jsonl([{"text": "x"}, {"text": "y"}, {"id": 3, "text": "z"}]),
                  "inconsistent_ids")
    assert err.details["line"] == 3


def test_first_document_line_counts_leading_blank_lines(store, tmp_path):
    data = b"\n  \n\t" + jsonl([{"text": f"doc {i}"} for i in range(40)]) + jsonl([{"id": "x", "text": "late"}])
    err = failing(store, tmp_path, "d.jsonl", data, "inconsistent_ids", block_size=256)
    assert err.details["line"] == 43 and "first document (line 3)" in err.message


def test_source_counts_and_custom_fields(store, tmp_path):
    docs = [{"doc": f"k{i}", "body": "w" * i, "origin": ["a", "b", None][i % 3]} for i in range(9)]
    stats = ingest(write(tmp_path, "d.jsonl", jsonl(docs)), filename="d.jsonl", store=store, dest=DEST,
                   text_field="body", id_field="doc", source_field="origin")
    assert stats.sources == {"a": 3, "b": 3}
    assert stats.num_bytes == sum(range(9)) and stats.num_empty == 1 and stats.empty_ids == ["k0"]
    assert stored(store)[1] == {"id": "k1", "text": "w", "source": "b"}


# -- validation -------------------------------------------------------------------------------

def test_malformed_json_names_the_line(store, tmp_path):
    data = jsonl(DOCS[:3]) + b'{"id": "z", "text": "oops",}\n' + jsonl(DOCS[3:])
    err = failing(store, tmp_path, "d.jsonl", data, "malformed_json")
    assert err.details["line"] == 4 and "line 4" in err.message


def test_malformed_json_in_a_later_block(store, tmp_path):
    good = [{"id": f"d{i}", "text": f"document {i}"} for i in range(40)]
    data = jsonl(good[:29]) + b'{"id": "bad", "text": "unterminated}\n' + jsonl(good[29:])
    # 100-byte blocks: line 30 lies well past the first block; shards were already written
    err = failing(store, tmp_path, "d.jsonl", data, "malformed_json", block_size=100, shard_size=5)
    assert err.details["line"] == 30


def test_blank_lines_count_in_line_numbers(store, tmp_path):
    data = jsonl(DOCS[:1]) + b"\n  \n" + jsonl(DOCS[1:2]) + b"[1, 2]\n"
    err = failing(store, tmp_path, "d.jsonl", data, "malformed_json")
    assert err.details["line"] == 5 and "JSON object" in err.message
    ingest(write(tmp_path, "ok.jsonl", data[: -len(b"[1, 2]\n")] + b"\n\n"), filename="ok.jsonl",
           store=store, dest=DEST)
    assert [r["id"] for r in stored(store)] == ["a", "b"]


def test_two_objects_on_one_line_is_malformed(store, tmp_path):
    data = jsonl(DOCS[:2]) + b'{"id": "x", "text": "x"} {"id": "y", "text": "y"}\n'
    assert failing(store, tmp_path, "d.jsonl", data, "malformed_json").details["line"] == 3


def test_missing_text_field(store, tmp_path):
    data = jsonl(DOCS[:2] + [{"id": "z", "body": "no text"}] + DOCS[2:])
    err = failing(store, tmp_path, "d.jsonl", data, "missing_field")
    assert err.details == {"line": 3, "field": "text"} and from_domain(err).status == 422
    err = failing(store, tmp_path, "d.csv", b"id,body\n1,x\n", "missing_field")
    assert err.details == {"line": 1, "field": "text"} and "header" in err.message
    err = failing(store, tmp_path, "d.parquet", encode([{"id": "1", "body": "x"}], "parquet"), "missing_field")
    assert err.details["field"] == "text"


@pytest.mark.parametrize("value, found", [(5, "a number"), (None, "null"), (["a"], "an array")])
def test_text_not_a_string(store, tmp_path, value, found):
    data = jsonl(DOCS[:3] + [{"id": "z", "text": value}])
    err = failing(store, tmp_path, "d.jsonl", data, "wrong_type")
    assert err.details == {"line": 4, "field": "text"} and found in err.message


def test_wrong_column_types_in_parquet(store, tmp_path):
    failing(store, tmp_path, "d.parquet", parquet_bytes(pa.table({"text": [1, 2]})), "wrong_type")
    table = pa.table({"id": ["a", "b", "c"], "text": ["x", None, "z"]})
    err = failing(store, tmp_path, "d.parquet", parquet_bytes(table), "missing_field")
    assert err.details["row"] == 2


@pytest.mark.parametrize("in_memory", [True, False], ids=["ids-in-memory", "ids-by-duckdb"])
def test_duplicate_ids_name_both_lines(store, tmp_path, monkeypatch, in_memory):
    # A file of up to IDS_CHECKED_IN_MEMORY documents is checked in memory, a larger one by DuckDB
    # over the written shards: both find the same first repeat.
    import storage.ingest as ingest_module
    monkeypatch.setattr(ingest_module, "IDS_CHECKED_IN_MEMORY", 1_000_000 if in_memory else 5)
    docs = [{"id": f"d{i}", "text": f"t{i}"} for i in range(30)]
    docs[17]["id"] = "d4"
    docs[25]["id"] = "d2"       # a later duplicate: d4 repeats first
    data = jsonl(docs[:10]) + b"\n" + jsonl(docs[10:])     # the blank line 11 shifts later lines
    err = failing(store, tmp_path, "d.jsonl", data, "duplicate_id", shard_size=7, block_size=128)
    assert err.details == {"id": "d4", "line": 19, "first_line": 5, "lines": [5, 19]}
    assert from_domain(err).status == 422
    err = failing(store, tmp_path, "d.csv", csv_bytes(docs, ("id", "text")), "duplicate_id")
    assert err.details["lines"] == [6, 19] and "header" in err.message
    err = failing(store, tmp_path, "d.parquet", encode(docs, "parquet"), "duplicate_id")
    assert err.details["rows"] == [5, 18]


@pytest.mark.parametrize("name, data", [
    ("e.jsonl", b""), ("e.jsonl", b"\n \n"), ("e.jsonl.gz", gzip.compress(b"")),
    ("e.csv", b""), ("e.csv", b"id,text\n"),
    ("e.parquet", b""), ("e.parquet", parquet_bytes(pa.table({"text": pa.array([], pa.string())}))),
])
def test_empty_file(store, tmp_path, name, data):
    failing(store, tmp_path, name, data, "empty_file")


def test_invalid_utf8_names_the_line(store, tmp_path):
    data = jsonl(DOCS[:2]) + b'{"id": "z", "text": "caf\xe9"}\n' + jsonl(DOCS[2:])
    err = failing(store, tmp_path, "d.jsonl", data, "invalid_utf8")
    assert err.details["line"] == 3
    data = jsonl(DOCS[:1]) + b'{"id": "z", "text": "half a pair \\ud800"}\n'
    assert failing(store, tmp_path, "d.jsonl", data, "invalid_utf8").details["line"] == 2
    data = b"id,text\n1,fine\n2,\"two\nlines\"\n3,caf\xe9\n"
    err = failing(store, tmp_path, "d.csv", data, "invalid_utf8")
    assert err.details == {"line": 5, "field": "text"} and "header" in err.message
    table = pa.table({"text": pa.array([b"ok", b"\xff\xfe"], pa.binary()).cast(pa.string(), safe=False)})
    err = failing(store, tmp_path, "d.parquet", parquet_bytes(table), "invalid_utf8")
    assert err.details["row"] == 2


def test_malformed_csv_row(store, tmp_path):
    err = failing(store, tmp_path, "d.csv", b"id,text\n1,a\n2,b,extra\n", "malformed_csv")
    assert err.details["line"] == 3


def test_csv_lines_count_crlf_and_quoted_newlines(store, tmp_path):
    data = b'id,text\r\n1,"two\r\nlines"\r\n2,b\r\n\r\n1,again\r\n'
    err = failing(store, tmp_path, "d.csv", data, "duplicate_id")
    assert err.details["lines"] == [2, 6]


def test_corrupt_inputs(store, tmp_path):
    failing(store, tmp_path, "d.parquet", b"PAR1 this is not parquet", "malformed_parquet")
    failing(store, tmp_path, "d.jsonl.gz", gzip.compress(jsonl(DOCS * 50))[:-40], "corrupt_compression")
    failing(store, tmp_path, "d.csv.gz", gzip.compress(csv_bytes(DOCS * 50))[:-40], "corrupt_compression")


def test_refuses_a_non_empty_dest(store, tmp_path):
    store.write_bytes(b"x", *DEST, "shard-00000.parquet")
    with pytest.raises(IngestError) as info:
        ingest(write(tmp_path, "d.jsonl", jsonl(DOCS)), filename="d.jsonl", store=store, dest=DEST)
    assert info.value.code == "dest_not_empty"
    assert store.read_bytes(*DEST, "shard-00000.parquet") == b"x"


def test_long_document_longer_than_a_block(store, tmp_path):
    docs = [{"id": "short", "text": "s"}, {"id": "long", "text": "y" * 1_500_000}, {"id": "end", "text": "e"}]
    ingest(write(tmp_path, "d.jsonl", jsonl(docs)), filename="d.jsonl", store=store, dest=DEST,
           block_size=4096)
    assert [len(r["text"]) for r in stored(store)] == [1, 1_500_000, 1]


def test_empty_rule_is_no_text_or_only_unicode_whitespace():
    """The one rule ingest counts by and jobs leave unscored (storage.ingest.common.empty_mask)."""
    from storage.ingest.common import empty_mask
    texts = ["", " ", "\n\t", "\u3000", "\xa0", None, "a", " a ", "\u200b"]
    assert empty_mask(texts).tolist() == [True, True, True, True, True, True, False, False, False]
    assert empty_mask(pa.chunked_array([["", "x"], ["  "]])).tolist() == [True, False, True]
