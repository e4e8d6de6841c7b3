"""What a registration names (files, directories, globs) and how it is cut into ingestion units."""
from __future__ import annotations

from storage.inputs import Access, InputFile, fixed_prefix, glob_regex, list_inputs
from workers.jobs.ingest import plan_units


def test_globs_follow_the_shell():
    assert glob_regex("/d/*.jsonl").fullmatch("/d/a.jsonl")
    assert not glob_regex("/d/*.jsonl").fullmatch("/d/sub/a.jsonl")       # * stays in its segment
    assert glob_regex("/d/**/*.jsonl").fullmatch("/d/sub/deeper/a.jsonl")
    assert glob_regex("/d/**/*.jsonl").fullmatch("/d/a.jsonl")             # ** may be empty
    assert glob_regex("/d/part-?[0-4].csv").fullmatch("/d/part-13.csv")
    assert not glob_regex("/d/part-?[0-4].csv").fullmatch("/d/part-19.csv")
    assert fixed_prefix("bucket/cc/2024-*/x.zst") == "bucket/cc"
    assert fixed_prefix("/d/a.jsonl") == "/d/a.jsonl"


def test_a_directory_skips_hidden_and_underscore_names(tmp_path):
    for name in ("a.jsonl", "sub/b.jsonl", "_SUCCESS", ".tmp-x", "_meta/c.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    access = Access((str(tmp_path),))
    assert [f.name for f in list_inputs(str(tmp_path), access)] == ["a.jsonl", "b.jsonl"]
    assert [f.name for f in list_inputs(str(tmp_path / "**" / "*.jsonl"), access)] == ["c.jsonl", "a.jsonl", "b.jsonl"]
    assert list_inputs(str(tmp_path / "nothing-*.csv"), access) == []


def test_large_uncompressed_jsonl_files_are_cut_into_byte_ranges():
    files = [InputFile("file:///d/big.jsonl", "/d/big.jsonl", 100), InputFile("file:///d/big.jsonl.gz", "/d/big.jsonl.gz", 100),
             InputFile("file:///d/big.csv", "/d/big.csv", 100), InputFile("file:///d/small.jsonl", "/d/small.jsonl", 10),
             InputFile("file:///d/noext", "/d/noext", 100)]
    units = [(unit, rng) for unit, _, rng in plan_units(files, 40, "jsonl")]
    assert units == [((0, 0), [0, 40]), ((0, 1), [40, 80]), ((0, 2), [80, 100]), ((1, 0), None),
                     ((2, 0), [0, 40]), ((2, 1), [40, 80]), ((2, 2), [80, 100]), ((3, 0), None),
                     ((4, 0), [0, 40]), ((4, 1), [40, 80]), ((4, 2), [80, 100])]
    # Without a format given, only names that say JSONL are cut.
    assert [(u, r) for u, _, r in plan_units(files[:4], 40)][3:] == [((1, 0), None), ((2, 0), None), ((3, 0), None)]
