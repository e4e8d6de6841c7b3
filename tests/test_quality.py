"""Every heuristic statistic against values computed by hand on tiny texts, and the presets as SQL."""
from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from scoring.quality import COLUMNS, NAMES, PRESETS, preset_sql, stats, stats_columns


def test_words_symbols_and_alphabetic_tokens():
    s = stats("Hello, world! ... #tag #x")
    # tokens: "Hello," "world!" "..." "#tag" "#x"; words (edge punctuation stripped): Hello world tag x
    assert s["n_chars"] == 25
    assert s["n_words"] == 4
    assert s["mean_word_length"] == pytest.approx((5 + 5 + 3 + 1) / 4)
    assert s["hash_word_ratio"] == pytest.approx(2 / 4)
    assert s["ellipsis_word_ratio"] == pytest.approx(1 / 4)
    assert s["alpha_word_frac"] == pytest.approx(4 / 5)      # "..." is the one token without a letter
    assert s["stop_words"] == 0
    assert s["n_lines"] == 1 and s["bullet_line_frac"] == 0 and s["ellipsis_line_frac"] == 0


def test_bullets_ellipsis_lines_and_newlines():
    s = stats("- one\n• two\nthree...\nfour…")
    assert s["bullet_line_frac"] == pytest.approx(2 / 4)
    assert s["ellipsis_line_frac"] == pytest.approx(2 / 4)
    assert s["n_words"] == 4                                # "-" and "•" are not words
    assert s["ellipsis_word_ratio"] == pytest.approx(2 / 4)
    assert s["newline_word_ratio"] == pytest.approx(3 / 4)
    assert s["n_lines"] == 4


def test_stop_words_count_occurrences_in_any_case():
    assert stats("The cat and the dog. To be or not")["stop_words"] == 5   # The and the To be


def test_duplicate_paragraphs_and_lines():
    text = "aa bb\n\ncc\n\naa bb\n\naa bb"                    # 23 characters, 6 of them newlines
    s = stats(text)
    assert s["dup_para_frac"] == pytest.approx(2 / 4)
    assert s["dup_para_char_frac"] == pytest.approx(10 / 23)
    assert s["dup_line_frac"] == pytest.approx(2 / 4)
    assert s["dup_line_char_frac"] == pytest.approx(10 / 23)
    assert s["dup_line_char_frac_nl"] == pytest.approx(10 / 17)
    assert s["short_line_frac"] == 1.0 and s["line_punct_frac"] == 0.0


def test_top_ngram_character_fractions():
    s = stats("a b a b a b c")                                # 13 characters
    assert s["top_2gram_char_frac"] == pytest.approx(3 * 3 / 13)   # "a b" three times
    assert s["top_3gram_char_frac"] == pytest.approx(2 * 5 / 13)   # "a b a" twice (first of the ties)
    assert stats("one two three four")["top_2gram_char_frac"] == 0  # nothing repeats


def test_duplicated_ngram_character_fractions():
    s = stats("a b c d e a b c d e f")                      # 21 characters
    assert s["dup_5gram_char_frac"] == pytest.approx(5 / 21)  # the second "a b c d e", letters only
    assert s["dup_6gram_char_frac"] == 0


C4_TEXT = ("This is a fine sentence. And another one here.\n"
           "Too short.\n"
           "This line has no end punct\n"
           "Please enable javascript in your browser now.\n"
           "Read our privacy policy today please.\n"
           "A good line that ends well!\n"
           "Yet another good line, yes.\n"
           "Citation here is fine[1].\n")


def test_c4_line_rules_and_sentences():
    s = stats(C4_TEXT)
    assert s["c4_lines"] == 8
    assert s["c4_kept_lines"] == 4          # lines 1, 6, 7 and 8 (its citation removed)
    assert s["c4_sentences"] == 2 + 1 + 1 + 1
    assert s["c4_sentences_no_punct_rule"] == 5 + 1   # line 3 counts without the punctuation rule
    assert not s["c4_lorem_ipsum"] and not s["c4_curly_bracket"]
    assert s["line_punct_frac"] == pytest.approx(7 / 8)
    assert stats("Lorem Ipsum dolor {sit}")["c4_lorem_ipsum"] and stats("x { y")["c4_curly_bracket"]


def test_empty_document_has_zero_ratios():
    s = stats("")
    assert list(s) == NAMES
    assert all(v == 0 for v in s.values())
    assert stats(None) == s


GOOD = ("The history of the river valley is long and varied, with many settlements along its banks.\n"
        "Farmers grew wheat and barley in the fertile soil that the spring floods left behind each year.\n"
        "Traders carried salt, timber and cloth between the towns that had grown up at the fords.\n"
        "In the winter months the roads were often closed, so people stored food and fuel in advance.\n"
        "Later, a railway was built to connect the valley with the port on the coast to the south.\n"
        "Today the region is known for its orchards, its old stone bridges and its quiet villages.\n")


def presets_of(texts: list[str]) -> list[dict]:
    cols = stats_columns(texts)
    stats_table = pa.table({name: cols[name] for name, _, _ in COLUMNS})
    sql = ", ".join(f"({preset_sql(p)}) AS {p}" for p in PRESETS)
    return duckdb.connect().sql(f"SELECT {sql} FROM stats_table").to_arrow_table().to_pylist()


def test_presets_are_sql_over_the_statistics():
    good, hashes, repeated, listy = presets_of([
        GOOD,
        GOOD.replace(" the ", " #the "),                  # one '#' in four words: Gopher quality rejects it
        GOOD + (GOOD.split("\n")[0] + "\n") * 3,           # a line repeated: FineWeb rejects it
        "\n".join(w for w in GOOD.split()),                # one word per line: FineWeb's newline ratio
    ])
    assert good == {p: True for p in PRESETS}
    assert not hashes["gopher_quality"] and hashes["gopher_repetition"]
    assert not repeated["fineweb"]
    assert not listy["fineweb"] and not listy["c4"]
    assert stats(GOOD)["c4_sentences"] == 6


def test_every_rule_names_known_columns():
    for rules in PRESETS.values():
        for _, expr in rules:
            duckdb.connect().sql(f"SELECT ({expr}) FROM (SELECT {', '.join(f'0 AS {n}' for n in NAMES)})")
