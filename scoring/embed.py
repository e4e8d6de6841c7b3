"""Deterministic document embeddings for Projektor's OT distances (docs/methods.md §5, Stage 1).

Two kinds:

* ``Embedder`` — model-free. Hashed word unigram+bigram counts
  (``scoring.hashing.ngram_counts``), sublinear TF (1 + log tf) times a smoothed IDF, a fixed sparse
  random projection to ``dim`` dimensions, L2-normalised rows (so squared Euclidean costs lie in
  [0, 4]). The IDF is fitted once on a reference set (``Embedder.fit``) and reused by every
  ``transform``, so a mixture's sources and the validation set live in the same space: fit on the
  validation set plus the revealed samples, then transform each of them.
  The projection is a sparse JL map (Kane & Nelson's block construction): each hash bucket has
  ``nnz_per_row`` entries ±1/√s, one in each of s equal blocks of the output, chosen by a splitmix64
  hash of (seed, bucket, block). It is a function of the seed alone — no RNG stream whose output
  could change between library versions — and it is a small sparse matrix
  (num_buckets × s entries) instead of a dense num_buckets × dim one. Same input → bit-identical
  output in any process.

* ``mean_pooled_embeddings`` — masked mean of an auxiliary LM's hidden states, L2-normalised.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from scoring.hashing import ngram_counts

DEFAULT_DIM = 256
DEFAULT_BUCKETS = 2**18
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrap-around arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sparse_projection(num_buckets: int, dim: int, seed: int = 0, nnz_per_row: int = 8) -> sp.csr_matrix:
    """(num_buckets × dim) sparse JL matrix, float64: per row one ±1/√s entry in each of s blocks."""
    s = min(nnz_per_row, dim)
    starts = (np.arange(s) * dim) // s
    sizes = ((np.arange(1, s + 1) * dim) // s - starts).astype(np.uint64)
    keys = np.arange(num_buckets, dtype=np.uint64)[:, None] * np.uint64(s) + np.arange(s, dtype=np.uint64)
    h = _splitmix64(keys ^ _splitmix64(np.full(1, seed, dtype=np.uint64)))
    cols = starts[None, :] + ((h >> np.uint64(1)) % sizes[None, :]).astype(np.int64)
    signs = np.where((h & np.uint64(1)) == 1, 1.0, -1.0) / np.sqrt(s)
    indptr = np.arange(0, num_buckets * s + 1, s, dtype=np.int64)
    return sp.csr_matrix((signs.ravel(), cols.ravel(), indptr), shape=(num_buckets, dim))


def fit_idf(texts_or_counts, num_buckets: int = DEFAULT_BUCKETS, bigrams: bool = True) -> np.ndarray:
    """Smoothed IDF per bucket, ``log((1 + n) / (1 + df)) + 1``, from texts or a counts matrix."""
    counts = texts_or_counts if sp.issparse(texts_or_counts) else ngram_counts(texts_or_counts, num_buckets, bigrams)
    counts = sp.csr_matrix(counts)
    counts.sum_duplicates()
    counts.eliminate_zeros()
    df = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
    return np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0


class Embedder:
    """Hashed TF-IDF + fixed random projection. ``Embedder(...).fit(reference).transform(texts)``."""

    def __init__(self, dim: int = DEFAULT_DIM, num_buckets: int = DEFAULT_BUCKETS, seed: int = 0,
                 bigrams: bool = True, nnz_per_row: int = 8, idf: np.ndarray | None = None):
        self.dim, self.num_buckets, self.seed = dim, num_buckets, seed
        self.bigrams, self.nnz_per_row = bigrams, nnz_per_row
        self.idf = None if idf is None else np.asarray(idf, dtype=np.float64)
        if self.idf is not None and self.idf.shape != (num_buckets,):
            raise ValueError(f"idf has shape {self.idf.shape}, expected ({num_buckets},)")
        self._projection: sp.csr_matrix | None = None

    def fit(self, reference_texts) -> Embedder:
        self.idf = fit_idf(reference_texts, self.num_buckets, self.bigrams)
        return self

    @property
    def projection(self) -> sp.csr_matrix:
        if self._projection is None:
            self._projection = sparse_projection(self.num_buckets, self.dim, self.seed, self.nnz_per_row)
        return self._projection

    def transform(self, texts) -> np.ndarray:
        """(n, dim) float32, unit rows (an empty document maps to the zero vector)."""
        if self.idf is None:
            raise RuntimeError("Embedder.transform before fit: the IDF must come from a reference set")
        tfidf = sp.csr_matrix(ngram_counts(texts, self.num_buckets, self.bigrams), dtype=np.float64)
        tfidf.sum_duplicates()
        tfidf.data = (1.0 + np.log(tfidf.data)) * self.idf[tfidf.indices]
        emb = (tfidf @ self.projection).toarray()
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def fit_transform(self, texts) -> np.ndarray:
        return self.fit(texts).transform(texts)


def mean_pooled_embeddings(hidden_fn, token_lists, batch_size: int = 32, pad_id: int = 0,
                           max_len: int | None = None, device: str | torch.device = "cpu",
                           autocast_bf16: bool = True) -> np.ndarray:
    """Masked mean of ``hidden_fn(idx: LongTensor[B, T]) -> FloatTensor[B, T, H]`` over each
    document's valid tokens, L2-normalised; (n, H) float32 in the order of ``token_lists``.

    Batches are right-padded with ``pad_id``; the model must not let padding influence earlier
    positions (true of causal LMs). Documents are batched longest-first to waste little padding;
    the batching is a deterministic function of the lengths. An empty document maps to zeros.
    """
    seqs = [list(t)[:max_len] if max_len else list(t) for t in token_lists]
    device = torch.device(device)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: list[torch.Tensor | None] = [None] * len(seqs)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        for start in range(0, len(order), batch_size):
            ids = order[start:start + batch_size]
            width = max(1, max(len(seqs[i]) for i in ids))
            idx = torch.full((len(ids), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.float32)
            for row, i in enumerate(ids):
                idx[row, :len(seqs[i])] = torch.as_tensor(seqs[i], dtype=torch.long)
                mask[row, :len(seqs[i])] = 1.0
            hidden = hidden_fn(idx.to(device)).float().cpu()
            pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=1)
            for row, i in enumerate(ids):
                out[i] = pooled[row]
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.stack(out).numpy().astype(np.float32)
