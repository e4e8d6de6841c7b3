"""MinHash signatures, LSH bands and the normalised n-gram hashes behind dedup and decontamination."""
from __future__ import annotations

import random

import numpy as np
import pytest

from scoring.minhash import (DEFAULT_BANDS, DEFAULT_ROWS, band_keys, detection_probability, estimated_jaccard,
                             implied_threshold, signatures)
from scoring.ngrams import best_owner, distinct_ngrams, ngram_hashes, normalised_words, text_hashes, word_hashes
from tests.corpus_gen import corpus


def test_normalisation_ignores_case_punctuation_accents_and_digits():
    assert normalised_words(["Café, CAFÉ!  naïve 1984"]).to_pylist() == [["cafe", "cafe", "naive", "0000"]]
    h, offsets = word_hashes(["Hello, World!", "hello   world", "world hello", ""])
    th = text_hashes(h, offsets)
    assert th[0] == th[1] != th[2]          # word order counts
    assert th[3] == 0 and list(offsets) == [0, 2, 4, 6, 6]


def test_ngrams_stay_inside_their_document():
    h, offsets = word_hashes(["a b c", "d e f", "a b"])
    grams, doc = ngram_hashes(h, offsets, 3)
    assert list(doc) == [0, 1]                                   # "a b" is too short for a 3-gram
    whole, _ = ngram_hashes(*word_hashes(["a b c d e f"]), 3)
    assert set(grams) < set(whole) and len(whole) == 4           # "b c d", "c d e" only in the joined text
    _, doc = ngram_hashes(h, offsets, 3, short=True)
    assert list(doc) == [0, 1, 2]                                # MinHash: a short document is one shingle


def test_identical_documents_collide_in_every_band():
    sig = signatures(["The same words, in the same order.", "the SAME words in the same order",
                      "Quite another text about something else entirely."])
    keys = band_keys(sig, 14, 8)
    assert (sig[0] == sig[1]).all() and (keys[0] == keys[1]).all()
    assert not (keys[0] == keys[2]).any()
    assert (signatures([""]) == np.iinfo(np.uint64).max).all()   # no words, no signature


def shingle_set(text: str, n: int = 5) -> set:
    w = normalised_words([text]).to_pylist()[0]
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_jaccard_estimate_is_close_to_the_true_similarity():
    rng = random.Random(3)
    docs = [r["text"] for r in corpus(60, seed=3, min_words=150, max_words=250)]
    errors = []
    for i, text in enumerate(docs):
        words = text.split()
        rate = (0.02, 0.05, 0.1)[i % 3]
        copy = " ".join(f"x{rng.randrange(10**9)}" if rng.random() < rate else w for w in words)
        a, b = shingle_set(text), shingle_set(copy)
        true = len(a & b) / len(a | b)
        sig = signatures([text, copy])
        errors.append(estimated_jaccard(sig[0], sig[1]) - true)
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.02                  # unbiased
    assert np.abs(errors).max() < 0.2                 # 112 functions: sd ≈ sqrt(J(1−J)/112) ≤ 0.05


def test_band_keys_depend_on_every_row_of_their_band_only():
    sig = np.arange(2 * 112, dtype=np.uint64).reshape(2, 112)
    sig[1] = sig[0]
    sig[1, 8 * 3 + 5] += np.uint64(1)                 # one value of band 3 differs
    keys = band_keys(sig, 14, 8)
    assert [j for j in range(14) if keys[0, j] != keys[1, j]] == [3]
    with pytest.raises(ValueError, match="need 120 hash functions"):
        band_keys(sig, 15, 8)


def test_band_math_for_datatrove_and_the_default():
    assert implied_threshold(14, 8) == pytest.approx(0.719, abs=1e-3)          # DataTrove's 14 × 8
    assert detection_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)  # 1 − (1 − 0.8^8)^14
    assert detection_probability(0.5, 14, 8) < 0.06
    assert (DEFAULT_BANDS, DEFAULT_ROWS) == (20, 8)
    assert implied_threshold(20, 8) == pytest.approx(0.688, abs=1e-3)          # (1/20)^(1/8)
    assert detection_probability(0.8, 20, 8) == pytest.approx(0.975, abs=1e-3)  # 1 − (1 − 0.8^8)^20
    assert detection_probability(0.5, 20, 8) < 0.08


def test_distinct_ngrams_and_best_owner():
    h, offsets = word_hashes(["a b c a b c", "x y z"])
    grams, doc = distinct_ngrams(h, offsets, 3)
    assert list(doc) == [0, 0, 0, 1]                  # "a b c" counted once
    # doc 0 matches owner 7 twice and owner 5 twice (tie: the smaller), doc 2 owner 9; doc 1 nothing
    best = best_owner(np.array([0, 0, 0, 0, 2]), np.array([7, 5, 7, 5, 9]), 3)
    assert list(best) == [5, -1, 9]
    assert list(best_owner(np.array([0, 0, 0]), np.array([7, 5, 7]), 1)) == [7]
