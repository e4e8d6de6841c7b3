"""Normalised word n-grams hashed to 64 bits: the shingles of MinHash dedup and the index of
decontamination.

Normalisation follows DataTrove's `simplify_text`: Unicode NFKD with the combining marks removed
(diacritics), lower case, every decimal digit turned into 0, and anything that is not a letter or a
digit a word boundary (punctuation and whitespace). Arrow does that vectorised over a whole shard.
Each distinct word of a batch is hashed once (BLAKE2b, 8 bytes: stable across processes and
machines); an n-gram's hash is a polynomial of its word hashes, finished by splitmix64, all in numpy.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MULT = np.uint64(0x9E3779B97F4A7C15)   # odd: (h·M + w) mod 2^64 keeps every bit of h
_ONE = np.uint64(1)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection of uint64 that spreads every input bit to every output bit."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def normalised_words(texts) -> pa.LargeListArray:
    """Per document, its normalised words (see the module's docstring)."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, type=pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.utf8_normalize(arr.fill_null(""), "NFKD")
    arr = pc.utf8_lower(pc.replace_substring_regex(arr, r"\p{Mn}", ""))
    arr = pc.replace_substring_regex(arr, r"\p{Nd}", "0")
    words = pc.split_pattern_regex(arr, r"[^\p{L}\p{N}]+")
    flat = words.flatten()
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    doc_of_word = np.repeat(np.arange(len(words)), np.diff(words.offsets.to_numpy()))
    counts = np.bincount(doc_of_word[keep], minlength=len(words))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def word_hashes(texts) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): the 64-bit hash of every normalised word of every document, flattened,
    and where each document's words start (offsets[i]:offsets[i+1])."""
    lists = normalised_words(texts)
    offsets = lists.offsets.to_numpy().astype(np.int64)
    flat = lists.flatten()
    if len(flat) == 0:
        return np.zeros(0, dtype=np.uint64), offsets
    enc = pc.dictionary_encode(flat)
    distinct = np.frombuffer(b"".join(hashlib.blake2b(w.encode(), digest_size=8).digest()
                                      for w in enc.dictionary.to_pylist()), dtype="<u8")
    return distinct[enc.indices.to_numpy(zero_copy_only=False)], offsets


def ngram_hashes(h: np.ndarray, offsets: np.ndarray, n: int, short: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, doc): the hash of every word n-gram that lies inside one document, and its document.
    With `short`, a document of fewer than n words (but at least one) gets one n-gram of all its words,
    so that short documents still have a signature (MinHash); without it they have none."""
    n_docs = len(offsets) - 1
    doc = np.repeat(np.arange(n_docs), np.diff(offsets))
    end = offsets[1:][doc]                    # the end of each word's document
    pos = np.arange(len(h))
    acc = h.copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            nxt = np.empty_like(h)
            nxt[:len(h) - k] = h[k:]
            inside = pos + k < end
            acc = np.where(inside, acc * _MULT + nxt, acc)
    valid = pos + n <= end
    if short:
        lengths = np.diff(offsets)
        starts = offsets[:-1]
        valid[starts[(lengths > 0) & (lengths < n)]] = True
    return splitmix64(acc[valid] + np.uint64(n)), doc[valid]


def text_hashes(h: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each document's whole normalised word sequence (exact dedup): order-sensitive,
    vectorised. 0 for a document without words."""
    n_docs = len(offsets) - 1
    if len(h) == 0:
        return np.zeros(n_docs, dtype=np.uint64)
    pos = np.arange(len(h), dtype=np.uint64) - np.repeat(offsets[:-1], np.diff(offsets)).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = splitmix64(h ^ splitmix64(pos + _ONE))
    out = np.zeros(n_docs, dtype=np.uint64)
    nonempty = np.diff(offsets) > 0
    sums = np.add.reduceat(mixed, offsets[:-1][nonempty])
    out[nonempty] = splitmix64(sums ^ np.diff(offsets)[nonempty].astype(np.uint64))
    return out


def distinct_ngrams(h: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, doc) of each document's distinct n-grams (from its word hashes), sorted by document."""
    grams, doc = ngram_hashes(h, offsets, n)
    order = np.lexsort((grams, doc))
    grams, doc = grams[order], doc[order]
    first = np.ones(len(grams), dtype=bool)
    first[1:] = (grams[1:] != grams[:-1]) | (doc[1:] != doc[:-1])
    return grams[first], doc[first]


def best_owner(doc: np.ndarray, owner: np.ndarray, n_docs: int) -> np.ndarray:
    """Per document (0 … n_docs−1), the owner (a non-negative id) of most of the matches `doc[i]` ↔
    `owner[i]` (ties: the smallest owner); −1 for a document without matches."""
    best = np.full(n_docs, -1, dtype=np.int64)
    if len(doc) == 0:
        return best
    order = np.lexsort((owner, doc))
    d, o = doc[order], owner[order]
    starts = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (o[1:] != o[:-1])])
    counts = np.diff(np.r_[starts, len(d)])
    rd, ro = d[starts], o[starts]
    pick = np.lexsort((ro, -counts, rd))              # per document: most matches, then smallest owner
    rd, ro = rd[pick], ro[pick]
    first = np.r_[True, rd[1:] != rd[:-1]]
    best[rd[first]] = ro[first]
    return best


def overlap(texts, reference, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per document of `texts`: whether its normalised text is one of `reference`'s (an exact copy),
    and how many of its distinct n-grams occur in `reference` (none for a document of fewer than n
    words). Exact, no false positives beyond 64-bit hash collisions."""
    ref_h, ref_off = word_hashes(reference)
    ref_text = text_hashes(ref_h, ref_off)
    ref_text = np.unique(ref_text[ref_text != 0])
    ref_grams = np.unique(ngram_hashes(ref_h, ref_off, n)[0])
    h, offsets = word_hashes(texts)
    text = text_hashes(h, offsets)
    exact = (text != 0) & np.isin(text, ref_text)
    grams, doc = distinct_ngrams(h, offsets, n)
    matching = np.bincount(doc[np.isin(grams, ref_grams)], minlength=len(offsets) - 1)
    return exact, matching
