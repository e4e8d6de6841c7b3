"""The per-document statistics behind the published heuristic quality filters, and the filters
themselves as SQL over those statistics.

Sources (definitions and thresholds as DataTrove implements them, which the FineWeb datasets used):
- Gopher quality and repetition: Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
  Insights from Training Gopher", arXiv 2112.11446, §A.1.1 and Table A1; DataTrove's
  `GopherQualityFilter` and `GopherRepetitionFilter`.
- C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer", §2.2 (TFDS `c4_utils`); DataTrove's `C4QualityFilter`.
- FineWeb: Penedo et al. 2024, "The FineWeb Datasets", arXiv 2406.17557, §3.3.4; DataTrove's
  `FineWebQualityFilter`.

A filter never drops anything here: `stats(text)` measures, `PRESETS` decides. A preset is a list of
(rule, SQL boolean expression over the statistic columns); a document passes the preset when every
rule holds. The same SQL runs on each shard and can be rerun with other thresholds over a manifest
through the query API, without measuring again.

Words differ from DataTrove's in one respect: DataTrove splits with spaCy's tokenizer (punctuation
marks become words of their own); here a word is a whitespace-separated token with its leading and
trailing punctuation stripped, and a token of punctuation only is not a word (as in the Gopher
paper). Every ratio of an empty document is 0.
"""
from __future__ import annotations

import re
import string
from collections import Counter

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})   # Gopher's
_PUNCT = string.punctuation + "…“”‘’«»—–·•"
TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)
C4_END = (".", "?", "!", '"', "'")
C4_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]", re.I)
C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
C4_MAX_WORD = 1000
C4_MIN_LINE_WORDS = 3
FINEWEB_END = (".", "?", "!", '"', "'", "…", "。", "！", "？")
FINEWEB_SHORT_LINE = 30
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

# Every statistic stats() returns, in column order: (name, type, what it is).
COLUMNS: list[tuple[str, type, str]] = [
    ("n_chars", int, "characters"),
    ("n_words", int, "words (whitespace tokens with edge punctuation stripped; punctuation-only tokens are not words)"),
    ("n_lines", int, "non-empty lines"),
    ("mean_word_length", float, "mean characters per word"),
    ("hash_word_ratio", float, "'#' characters per word"),
    ("ellipsis_word_ratio", float, "'...' and '…' per word"),
    ("bullet_line_frac", float, "lines starting with '•' or '-' (after leading spaces) / lines"),
    ("ellipsis_line_frac", float, "lines ending with '...' or '…' / lines"),
    ("alpha_word_frac", float, "whitespace tokens containing a letter / tokens"),
    ("stop_words", int, "occurrences of Gopher's stop words (the, be, to, of, and, that, have, with)"),
    ("dup_para_frac", float, "paragraphs (split on blank lines) that repeat an earlier one / paragraphs"),
    ("dup_para_char_frac", float, "characters in repeated paragraphs / characters"),
    ("dup_line_frac", float, "lines that repeat an earlier line / lines"),
    ("dup_line_char_frac", float, "characters in repeated lines / characters"),
    *((f"top_{n}gram_char_frac", float, f"characters of the most frequent word {n}-gram × its count / "
       "characters (0 when no n-gram repeats)") for n in TOP_NGRAMS),
    *((f"dup_{n}gram_char_frac", float, f"characters in repeated word {n}-grams / characters") for n in DUP_NGRAMS),
    ("c4_lines", int, "lines C4 looks at (non-empty)"),
    ("c4_kept_lines", int, "lines that pass C4's line rules (terminal punctuation, ≥3 words, no word over "
     "1000 characters, no 'javascript', no policy phrase)"),
    ("c4_sentences", int, "sentences in the lines C4 keeps"),
    ("c4_sentences_no_punct_rule", int, "sentences in the lines C4 keeps without its terminal-punctuation "
     "rule (FineWeb's setting)"),
    ("c4_lorem_ipsum", bool, "contains 'lorem ipsum'"),
    ("c4_curly_bracket", bool, "contains '{'"),
    ("line_punct_frac", float, "non-empty lines ending in terminal punctuation / non-empty lines"),
    ("short_line_frac", float, "non-empty lines of at most 30 characters (trimmed) / non-empty lines"),
    ("dup_line_char_frac_nl", float, "characters in repeated non-empty lines / characters other than newlines"),
    ("newline_word_ratio", float, "newlines per word"),
]
NAMES = [c[0] for c in COLUMNS]

_TOP = {2: 0.20, 3: 0.18, 4: 0.16}
_DUP = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
PRESETS: dict[str, list[tuple[str, str]]] = {
    "gopher_quality": [
        ("gopher_min_words", "n_words >= 50"),
        ("gopher_max_words", "n_words <= 100000"),
        ("gopher_word_length", "mean_word_length BETWEEN 3 AND 10"),
        ("gopher_hash_ratio", "hash_word_ratio <= 0.1"),
        ("gopher_ellipsis_ratio", "ellipsis_word_ratio <= 0.1"),
        ("gopher_bullet_lines", "bullet_line_frac <= 0.9"),
        ("gopher_ellipsis_lines", "ellipsis_line_frac <= 0.3"),
        ("gopher_alpha_words", "alpha_word_frac >= 0.8"),
        ("gopher_stop_words", "stop_words >= 2"),
    ],
    "gopher_repetition": [
        ("gopher_dup_para", "dup_para_frac <= 0.3"),
        ("gopher_dup_para_chars", "dup_para_char_frac <= 0.2"),
        ("gopher_dup_line", "dup_line_frac <= 0.3"),
        ("gopher_dup_line_chars", "dup_line_char_frac <= 0.2"),
        *((f"gopher_top_{n}gram", f"top_{n}gram_char_frac <= {t}") for n, t in _TOP.items()),
        *((f"gopher_dup_{n}gram", f"dup_{n}gram_char_frac <= {t}") for n, t in _DUP.items()),
    ],
    "c4": [
        ("c4_min_sentences", "c4_sentences >= 5"),
        ("c4_no_lorem_ipsum", "NOT c4_lorem_ipsum"),
        ("c4_no_curly_bracket", "NOT c4_curly_bracket"),
    ],
    "fineweb": [
        ("fineweb_line_punct", "line_punct_frac >= 0.12"),
        ("fineweb_short_lines", "short_line_frac <= 0.67"),
        ("fineweb_dup_line_chars", "dup_line_char_frac_nl <= 0.01"),
        ("fineweb_newlines", "newline_word_ratio <= 0.3"),
    ],
}


def preset_sql(name: str) -> str:
    """The preset as one SQL boolean expression over the statistic columns."""
    return " AND ".join(f"({expr})" for _, expr in PRESETS[name])


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(elements, characters) that repeat an earlier element."""
    seen: set[str] = set()
    count = chars = 0
    for x in items:
        if x in seen:
            count += 1
            chars += len(x)
        else:
            seen.add(x)
    return count, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters (with the spaces between its words) of the most frequent n-gram times its count,
    0 when no n-gram occurs twice."""
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(" ".join(gram)) * count if count > 1 else 0


def _dup_ngram_chars(words: list[str], n: int) -> int:
    """Characters (without spaces) of the word n-grams that repeat an earlier one, each word counted
    once: after a repeat the scan jumps past it (DataTrove's `find_all_duplicate`)."""
    seen: set[tuple] = set()
    chars, i = 0, 0
    while i + n <= len(words):
        gram = tuple(words[i:i + n])
        if gram in seen:
            chars += sum(len(w) for w in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def _c4(text: str) -> tuple[int, int, int, int]:
    """(lines, lines kept, sentences kept, sentences kept without the terminal-punctuation rule)."""
    lines = kept = sentences = sentences_any = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        lines += 1
        words = line.split()
        if any(len(w) > C4_MAX_WORD for w in words):
            continue
        line = C4_CITATION.sub("", line)
        low = line.lower()
        if len(words) < C4_MIN_LINE_WORDS or "javascript" in low or any(p in low for p in C4_POLICY):
            continue
        n = len([s for s in _SENTENCE_END.split(line) if s])
        sentences_any += n
        if line.endswith(C4_END) and not line.endswith("..."):
            kept += 1
            sentences += n
    return lines, kept, sentences, sentences_any


def stats(text: str | None) -> dict:
    """Every statistic of COLUMNS for one document."""
    text = text or ""
    n_chars = len(text)
    tokens = text.split()
    words = [w for w in (t.strip(_PUNCT) for t in tokens) if w]
    n_words = len(words)
    lines = text.splitlines()
    nonempty = [line for line in lines if line.strip()]
    paragraphs = re.split(r"\n{2,}", text.strip())
    rep_lines = re.split(r"\n+", text)
    dup_para, dup_para_chars = _duplicates(paragraphs)
    dup_line, dup_line_chars = _duplicates(rep_lines)
    c4_lines, c4_kept, c4_sent, c4_sent_any = _c4(text)
    low = text.lower()
    return {
        "n_chars": n_chars, "n_words": n_words, "n_lines": len(nonempty),
        "mean_word_length": _ratio(sum(len(w) for w in words), n_words),
        "hash_word_ratio": _ratio(text.count("#"), n_words),
        "ellipsis_word_ratio": _ratio(text.count("...") + text.count("…"), n_words),
        "bullet_line_frac": _ratio(sum(line.lstrip().startswith(("•", "-")) for line in lines), len(lines)),
        "ellipsis_line_frac": _ratio(sum(line.rstrip().endswith(("...", "…")) for line in lines), len(lines)),
        "alpha_word_frac": _ratio(sum(any(c.isalpha() for c in t) for t in tokens), len(tokens)),
        "stop_words": sum(w.lower() in STOP_WORDS for w in words),
        "dup_para_frac": _ratio(dup_para, len(paragraphs)),
        "dup_para_char_frac": _ratio(dup_para_chars, n_chars),
        "dup_line_frac": _ratio(dup_line, len(rep_lines)),
        "dup_line_char_frac": _ratio(dup_line_chars, n_chars),
        **{f"top_{n}gram_char_frac": _ratio(_top_ngram_chars(words, n), n_chars) for n in TOP_NGRAMS},
        **{f"dup_{n}gram_char_frac": _ratio(_dup_ngram_chars(words, n), n_chars) for n in DUP_NGRAMS},
        "c4_lines": c4_lines, "c4_kept_lines": c4_kept, "c4_sentences": c4_sent,
        "c4_sentences_no_punct_rule": c4_sent_any,
        "c4_lorem_ipsum": "lorem ipsum" in low, "c4_curly_bracket": "{" in text,
        "line_punct_frac": _ratio(sum(line.rstrip().endswith(FINEWEB_END) for line in nonempty), len(nonempty)),
        "short_line_frac": _ratio(sum(len(line.strip()) <= FINEWEB_SHORT_LINE for line in nonempty), len(nonempty)),
        "dup_line_char_frac_nl": _ratio(_duplicates(nonempty)[1], len(text.replace("\n", ""))),
        "newline_word_ratio": _ratio(text.count("\n"), n_words),
    }


def stats_columns(texts) -> dict[str, list]:
    """stats() of many texts, as columns (one list per statistic, in COLUMNS order)."""
    cols: dict[str, list] = {name: [] for name in NAMES}
    for text in texts:
        for name, value in stats(text).items():
            cols[name].append(value)
    return cols
