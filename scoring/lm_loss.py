"""Per-document language-model loss: the hot path of CoLoR-Filter scoring.

A document's loss is the mean next-token cross-entropy over its predicted tokens (padding never
counts). Windowing: a document of n tokens has n − 1 next-token targets. It is cut into consecutive
windows of at most `context` targets; window j feeds tokens [j·C, j·C + C) and predicts tokens
[j·C + 1, j·C + C + 1), so consecutive windows overlap by exactly one token (the last target of a
window is the first input of the next) and every token but the document's first is predicted exactly
once. Each window starts with fresh context, as in the paper's fixed 512-token windows.
The document's loss is the token-weighted mean over all of its windows.

Speed: windows are sorted by length and packed into batches of about `batch_tokens` tokens, so
padding stays small; right padding needs no attention mask with a causal model. Forwards run under
`torch.inference_mode` and bf16 autocast where the device multiplies bf16 natively; the
cross-entropy is always computed in float32 and summed in float64.

Several models can share one engine: each batch goes through every model, so all models see the
same windows (CoLoR-Filter's prior and conditional losses must come from identical token positions).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from scoring.device import autocast, autocast_dtype

IGNORE_INDEX = -100
_AUTO = "auto"


def default_batch_tokens(device: torch.device) -> int:
    """Tokens per batch. A GPU wants big batches. A CPU is fastest with small ones (measured with
    bench/scoring.py): a window of a few hundred tokens already makes the matmuls compute-bound, and
    larger batches push the activations (tokens × 4·width floats in the MLP) out of cache."""
    return 65536 if torch.device(device).type == "cuda" else 1024


def tokenize_documents(tokenizer, texts: Iterable[str], prepend_id: int | None = None) -> list[list[int]]:
    """Token ids of each text via the tokenizer's batched (parallel) encoder.

    Works with a `tokenizers.Tokenizer` (encodings carry `.ids`) and with adapters whose
    `encode_batch` returns lists of ids. `prepend_id` (e.g. the eos id, which precedes every
    document in the pretraining stream) gives the first real token a prediction too.
    """
    encoded = tokenizer.encode_batch(list(texts))
    ids = [list(e.ids) if hasattr(e, "ids") else list(e) for e in encoded]
    if prepend_id is not None:
        ids = [[prepend_id, *doc] for doc in ids]
    return ids


def window_layout(doc_lengths: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windows of every document: (doc index, start token, number of targets), one row per window.

    Documents with fewer than 2 tokens have no targets and get no window.
    """
    n_targets = np.maximum(np.asarray(doc_lengths, dtype=np.int64) - 1, 0)
    n_windows = -(-n_targets // context)  # ceil division
    win_doc = np.repeat(np.arange(len(n_targets)), n_windows)
    first_window = np.cumsum(n_windows) - n_windows
    win_index = np.arange(len(win_doc)) - np.repeat(first_window, n_windows)  # j within its document
    win_start = win_index * context
    win_targets = np.minimum(context, n_targets[win_doc] - win_start)
    return win_doc, win_start, win_targets


def pack_batches(win_targets: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Group window indices into batches: longest first, each batch padded to its first (longest)
    window, as many rows as fit in `batch_tokens` (at least one)."""
    order = np.argsort(-win_targets, kind="stable")
    batches, i = [], 0
    while i < len(order):
        rows = max(1, batch_tokens // int(win_targets[order[i]]))
        batches.append(order[i : i + rows])
        i += rows
    return batches


def token_losses(model, inputs: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 512
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 next-token CE of each scored position, the row each belongs to). inputs, targets: (B, T).

    The CE runs over chunks of `chunk_tokens` positions, small enough to stay in cache and to never
    need a float32 copy of a whole bf16 batch. Models exposing `hidden` and `lm_head` (our GPT)
    get the output head applied to the valid positions only, a chunk at a time, so the padding
    costs no head FLOPs and the full (B, T, vocab) logits never exist. Other models (any idx ->
    logits callable) are scored on every position: padding has IGNORE_INDEX targets and adds 0.
    """
    valid = targets != IGNORE_INDEX
    if hasattr(model, "hidden") and hasattr(model, "lm_head"):
        states, flat_targets, head = model.hidden(inputs)[valid], targets[valid], model.lm_head
        rows = valid.nonzero()[:, 0]
    else:
        states, flat_targets, head = model(inputs).flatten(0, 1), targets.flatten(), None
        rows = torch.arange(len(targets), device=targets.device).repeat_interleave(targets.shape[1])
    per_token = torch.cat([
        F.cross_entropy((head(s) if head else s).float(), t, ignore_index=IGNORE_INDEX, reduction="none")
        for s, t in zip(states.split(chunk_tokens), flat_targets.split(chunk_tokens))
    ])
    return per_token, rows


def per_row(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> np.ndarray:
    return torch.zeros(n_rows, device=values.device).index_add_(0, rows, values).double().cpu().numpy()


class DocumentLossEngine:
    """Scores documents with one model, or with several models on identical windows.

    `models`: a model or a sequence of models; each is a callable idx (B, T) -> logits (B, T, V)
    with a `context` attribute. They must share one tokenizer. `context` may lower the window
    length below the smallest model context. `max_tokens_per_doc` truncates documents to their
    first that-many tokens. `batch_tokens` bounds a batch (default: `default_batch_tokens`;
    models without a `hidden` method materialise batch_tokens × vocab logits). `device` defaults
    to where the first model's parameters are; `dtype` "auto" picks bf16 where native (see
    scoring.device), None forces float32.
    """

    def __init__(
        self,
        models,
        context: int | None = None,
        batch_tokens: int | None = None,
        max_tokens_per_doc: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None | str = _AUTO,
    ):
        self.single = not isinstance(models, (list, tuple))
        self.models = [models] if self.single else list(models)
        if device is None:
            device = next(self.models[0].parameters()).device
        self.device = torch.device(device)
        for model in self.models:
            model.to(self.device).eval()
        self.context = min([m.context for m in self.models] + ([context] if context else []))
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.max_tokens_per_doc = max_tokens_per_doc
        self.dtype = autocast_dtype(self.device) if dtype == _AUTO else dtype

    def score(
        self,
        token_lists: Sequence[Sequence[int]],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(loss, n_tokens): loss is float64 of shape (n_docs,) for one model or (n_models, n_docs);
        n_tokens counts the predicted tokens of each document. Documents with < 2 tokens are not
        scored: their loss is NaN and n_tokens 0 (report them, do not rank them)."""
        loss, n_tokens, _ = self._score(token_lists, on_progress, paired=False)
        return (loss[0] if self.single else loss), n_tokens

    def score_difference(
        self,
        token_lists: Sequence[Sequence[int]],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> PairScores:
        """Two models (prior, conditional) on identical windows: their losses, and the spread of the
        per-token loss difference (what CoLoR-Filter's `evidence` needs)."""
        if len(self.models) != 2:
            raise ValueError("score_difference needs exactly two models")
        loss, n_tokens, diff_sq = self._score(token_lists, on_progress, paired=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_sq = np.where(n_tokens > 0, diff_sq / n_tokens, np.nan)
        diff_sd = np.sqrt(np.maximum(0.0, mean_sq - (loss[0] - loss[1]) ** 2))
        return PairScores(loss[0], loss[1], n_tokens, diff_sd)

    def _score(self, token_lists, on_progress, paired: bool):
        lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
        if self.max_tokens_per_doc is not None:
            lengths = np.minimum(lengths, self.max_tokens_per_doc)
        kept = itertools.chain.from_iterable(t[:n] for t, n in zip(token_lists, lengths))
        flat = np.fromiter(kept, dtype=np.int64, count=int(lengths.sum()))
        offsets = np.cumsum(lengths) - lengths
        win_doc, win_start, win_targets = window_layout(lengths, self.context)
        n_tokens = np.bincount(win_doc, weights=win_targets, minlength=len(lengths)).astype(np.int64)

        loss_sum = np.zeros((len(self.models), len(lengths)), dtype=np.float64)
        diff_sq = np.zeros(len(lengths), dtype=np.float64)
        total, done = int(win_targets.sum()), 0
        for batch in pack_batches(win_targets, self.batch_tokens):
            inputs, targets = self._batch_tensors(flat, offsets[win_doc[batch]] + win_start[batch], win_targets[batch])
            sums, sq = self._forward_all(inputs, targets, paired)
            for m, row_sums in enumerate(sums):
                np.add.at(loss_sum[m], win_doc[batch], row_sums)
            if paired:
                np.add.at(diff_sq, win_doc[batch], sq)
            done += int(win_targets[batch].sum())
            if on_progress is not None:
                on_progress(done, total)

        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.where(n_tokens > 0, loss_sum / n_tokens, np.nan)
        return loss, n_tokens, diff_sq

    def _batch_tensors(self, flat: np.ndarray, starts: np.ndarray, n_targets: np.ndarray):
        """Right-padded inputs (pad id 0) and targets (IGNORE_INDEX on padding), shape (B, T)."""
        T = int(n_targets.max())
        cols = np.arange(T + 1)
        tokens = flat[np.minimum(starts[:, None] + cols, len(flat) - 1)]
        valid = cols[None, :T] < n_targets[:, None]
        inputs = np.where(valid, tokens[:, :T], 0)
        targets = np.where(valid, tokens[:, 1:], IGNORE_INDEX)
        return (
            torch.from_numpy(inputs).to(self.device, non_blocking=True),
            torch.from_numpy(targets).to(self.device, non_blocking=True),
        )

    @torch.inference_mode()
    def _forward_all(self, inputs: torch.Tensor, targets: torch.Tensor, paired: bool = False):
        """Per-row loss sums of every model and, when `paired`, the per-row sum of the squared
        difference of the first two models' per-token losses."""
        chunk = 8192 if self.device.type == "cuda" else 512  # GPU: fewer, larger head matmuls
        per_token, rows = [], None
        for model in self.models:
            with autocast(self.device, self.dtype):
                values, rows = token_losses(model, inputs, targets, chunk)
            per_token.append(values)
        sums = [per_row(v, rows, len(targets)) for v in per_token]
        sq = per_row((per_token[0] - per_token[1]) ** 2, rows, len(targets)) if paired else None
        return sums, sq


class PairScores(NamedTuple):
    """Per document: both models' mean losses, predicted tokens, and the standard deviation of the
    per-token loss difference (prior − conditional) over the document's tokens."""
    prior_loss: np.ndarray
    cond_loss: np.ndarray
    n_tokens: np.ndarray
    diff_sd: np.ndarray


# The spread of a document's per-token differences is estimated as if it also had this many tokens of
# this spread (nats): a document of a few tokens cannot claim a tiny spread, and so a huge evidence.
SPREAD_PRIOR_TOKENS, SPREAD_PRIOR_NATS = 16, 1.0


def evidence(scores: PairScores) -> np.ndarray:
    """How sure a document's loss reduction is: the t-statistic of its per-token differences,
    (prior − conditional) · √n / spread (docs/methods.md §1). It ranks a long document that the
    conditional model predicts steadily better above a short one whose mean is high by chance; a
    document's log-likelihood ratio (the sum) would rank by length instead. NaN where unscored."""
    n = scores.n_tokens.astype(np.float64)
    var = (n * scores.diff_sd ** 2 + SPREAD_PRIOR_TOKENS * SPREAD_PRIOR_NATS ** 2) / (n + SPREAD_PRIOR_TOKENS)
    return (scores.prior_loss - scores.cond_loss) * np.sqrt(n) / np.sqrt(var)
