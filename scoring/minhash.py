"""MinHash signatures and LSH band keys of documents (Broder 1997; banding as in Leskovec et al.,
Mining of Massive Datasets, ch. 3): word 5-gram shingles of the normalised text (scoring.ngrams) and
64-bit shingle hashes as DataTrove; 20 bands × 8 rows = 160 hash functions, where DataTrove has 14 × 8
(detection at Jaccard 0.8: 0.975 against its 0.924, for 43% more hashing).

Each hash function is h_i(x) = a_i·x + b_i mod 2^64 with a_i odd (a bijection of the 64-bit
shingle hashes, which splitmix64 has already spread); a document's signature holds, per function,
the least value over its shingles. Two documents agree on one signature value with probability their
Jaccard similarity J, so a band of r rows collides with probability J^r and at least one of b bands
with P(J) = 1 − (1 − J^r)^b. Everything is numpy over a whole shard, in chunks of shingles so that
memory stays bounded whatever the documents' lengths.
"""
from __future__ import annotations

import numpy as np

from scoring.ngrams import ngram_hashes, splitmix64, word_hashes

DEFAULT_NGRAM = 5
DEFAULT_BANDS = 20
DEFAULT_ROWS = 8
SEED = 1
_CHUNK = 1 << 11          # shingles per block: the block's (shingles × functions) matrix stays in cache (~2 MB)
_EMPTY = np.iinfo(np.uint64).max


def permutations(num: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of `num` hash functions, fixed by the seed (so every task and every run agrees)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num, dtype=np.uint64)
    return a, b


def signatures_of(shingles: np.ndarray, doc: np.ndarray, n_docs: int, num_perm: int,
                  seed: int = SEED) -> np.ndarray:
    """(n_docs × num_perm) uint64 MinHash signatures from shingle hashes sorted by document (`doc`
    the document of each). A document without shingles keeps the all-ones row (`_EMPTY`)."""
    a, b = permutations(num_perm, seed)
    sig = np.full((n_docs, num_perm), _EMPTY, dtype=np.uint64)
    for s in range(0, len(shingles), _CHUNK):
        e = min(len(shingles), s + _CHUNK)
        with np.errstate(over="ignore"):
            values = shingles[s:e, None] * a + b
        d = doc[s:e]
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        mins = np.minimum.reduceat(values, starts, axis=0)
        rows = d[starts]
        sig[rows] = np.minimum(sig[rows], mins)   # a document cut by the block edge takes both halves
    return sig


def document_signatures(h: np.ndarray, offsets: np.ndarray, ngram: int = DEFAULT_NGRAM,
                        num_perm: int = DEFAULT_BANDS * DEFAULT_ROWS, seed: int = SEED) -> np.ndarray:
    """Signatures of documents given as word hashes (scoring.ngrams.word_hashes). A document shorter
    than `ngram` words is one shingle of all its words; one without words keeps the all-ones row."""
    shingles, doc = ngram_hashes(h, offsets, ngram, short=True)
    return signatures_of(shingles, doc, len(offsets) - 1, num_perm, seed)


def signatures(texts, ngram: int = DEFAULT_NGRAM, num_perm: int = DEFAULT_BANDS * DEFAULT_ROWS,
               seed: int = SEED) -> np.ndarray:
    """(n_docs × num_perm) signatures of texts."""
    return document_signatures(*word_hashes(texts), ngram, num_perm, seed)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs × bands) int64 keys: two documents share key j iff their signatures agree on all
    `rows` values of band j (up to a 2^-64 collision)."""
    if sig.shape[1] < bands * rows:
        raise ValueError(f"{bands} bands × {rows} rows need {bands * rows} hash functions, not {sig.shape[1]}")
    keys = np.empty((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            acc = np.full(sig.shape[0], np.uint64(j + 1), dtype=np.uint64)
            for v in sig[:, j * rows:(j + 1) * rows].T:
                acc = splitmix64(acc ^ v)
            keys[:, j] = acc
    return keys.view(np.int64)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """The fraction of equal signature values: an unbiased estimate of the Jaccard similarity."""
    return (np.asarray(sig_a) == np.asarray(sig_b)).mean(axis=-1)


def implied_threshold(bands: int, rows: int) -> float:
    """The similarity where P(J) rises fastest, ≈ (1/b)^(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)


def detection_probability(jaccard: float, bands: int, rows: int) -> float:
    """P(J) = 1 − (1 − J^r)^b: the chance that a pair at Jaccard J shares at least one band."""
    return 1.0 - (1.0 - jaccard ** rows) ** bands
