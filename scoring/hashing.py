"""Hashed word n-gram counts: the model-free features behind DSIR and the OT embeddings.

Words are lower-cased runs of letters and digits. Each word hashes with CRC-32 (stable across
processes and machines, unlike Python's salted hash); a bigram's hash combines its two word hashes.
The heavy lifting is vectorised: Arrow splits and dictionary-encodes the words, so Python hashes
each distinct word once per batch, and numpy/scipy do the counting.
"""
from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

DEFAULT_BUCKETS = 10_000
_BIGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier: spreads (w1, w2) pairs


def word_lists(texts) -> pa.ListArray:
    """Per document, its lower-cased words (runs of [a-z0-9])."""
    arr = pa.array(texts, type=pa.large_string()) if not isinstance(texts, (pa.Array, pa.ChunkedArray)) else texts
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    words = pc.split_pattern_regex(pc.utf8_lower(arr.fill_null("")), r"[^a-z0-9]+")
    flat = words.flatten()
    keep = pc.not_equal(flat, "")
    # Re-list the non-empty words per document.
    doc_of_word = np.repeat(np.arange(len(words)), np.diff(words.offsets.to_numpy()))
    kept = keep.to_numpy(zero_copy_only=False)
    counts = np.bincount(doc_of_word[kept], minlength=len(words))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), flat.filter(keep))


def _word_hashes(words: pa.Array) -> np.ndarray:
    """CRC-32 of every word, computing each distinct word once."""
    if len(words) == 0:
        return np.zeros(0, dtype=np.uint64)
    enc = pc.dictionary_encode(words)
    uniq = [zlib.crc32(w.encode()) for w in enc.dictionary.to_pylist()]
    return np.asarray(uniq, dtype=np.uint64)[enc.indices.to_numpy(zero_copy_only=False)]


def ngram_counts(texts, num_buckets: int = DEFAULT_BUCKETS, bigrams: bool = True) -> sp.csr_matrix:
    """(documents × buckets) CSR matrix of hashed unigram (+ bigram) counts, float32."""
    lists = word_lists(texts)
    n_docs = len(lists)
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    h = _word_hashes(lists.flatten())
    doc = np.repeat(np.arange(n_docs), lengths)
    cols = [h % np.uint64(num_buckets)]
    rows = [doc]
    if bigrams and len(h) > 1:
        # A bigram pairs word j with word j+1 of the same document.
        same_doc = doc[1:] == doc[:-1]
        with np.errstate(over="ignore"):
            hb = (h[:-1] * _BIGRAM_MULT + h[1:] + np.uint64(1)) >> np.uint64(7)
        cols.append(hb[same_doc] % np.uint64(num_buckets))
        rows.append(doc[1:][same_doc])
    r = np.concatenate(rows)
    c = np.concatenate(cols).astype(np.int64)
    m = sp.coo_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n_docs, num_buckets))
    return m.tocsr()


def word_counts(texts) -> np.ndarray:
    """Number of words per document (the `n_tokens` of model-free methods)."""
    return np.diff(word_lists(texts).offsets.to_numpy())
