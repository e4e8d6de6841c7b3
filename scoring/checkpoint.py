"""Saving and loading scoring models.

Our GPT: a directory with `model.safetensors` (weights), `config.json` (GPTConfig), `tokenizer.json`
and `meta.json` (caller's metadata: what it was trained on, losses, …).

Bring your own model: `load_hf_causal_lm` opens a local Hugging Face causal-LM directory (no network)
and wraps it so the loss engine and trainers use it exactly like our GPT: a module mapping ids to
logits with a `context` attribute, and a tokenizer with `encode_batch(texts) -> list of id lists`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import safetensors.torch
import torch
from tokenizers import Tokenizer

from scoring.gpt import GPT, GPTConfig
from scoring.tokenizer import load_tokenizer, save_tokenizer

WEIGHTS, CONFIG, TOKENIZER, META = "model.safetensors", "config.json", "tokenizer.json", "meta.json"


def save_model(directory: str | Path, model: GPT, tokenizer: Tokenizer, meta: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # save_model (not save_file) because the tied head shares the embedding's storage.
    safetensors.torch.save_model(model, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(asdict(model.config), indent=2))
    save_tokenizer(tokenizer, directory / TOKENIZER)
    (directory / META).write_text(json.dumps(meta or {}, indent=2, default=str))
    return directory


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict]:
    directory = Path(directory)
    model = GPT(GPTConfig(**json.loads((directory / CONFIG).read_text())))
    safetensors.torch.load_model(model, str(directory / WEIGHTS), device=str(device))
    model.to(device).eval()
    tokenizer = load_tokenizer(directory / TOKENIZER)
    meta_path = directory / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return model, tokenizer, meta


class HFCausalLM(torch.nn.Module):
    """A transformers causal LM seen as `idx -> logits` with a `context` attribute.

    Inputs are right-padded and attention is causal, so no attention mask is needed: real tokens
    never attend to the padding after them, and positions start at 0 in every row.
    """

    def __init__(self, hf_model, context: int | None = None):
        super().__init__()
        self.hf_model = hf_model
        cfg = hf_model.config
        limit = int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings"))
        self.context = min(limit, context) if context else limit
        self.vocab_size = int(cfg.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf_model(input_ids=idx, use_cache=False).logits


class HFTokenizerAdapter:
    """`encode_batch(texts) -> list[list[int]]` over a transformers tokenizer (fast one preferred).

    The tokenizer's own special tokens are kept (e.g. a BOS that the model expects first)."""

    def __init__(self, hf_tokenizer):
        self.hf_tokenizer = hf_tokenizer
        self.eos_id = hf_tokenizer.eos_token_id
        self.pad_id = hf_tokenizer.pad_token_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.hf_tokenizer(list(texts), add_special_tokens=True)["input_ids"]

    def get_vocab_size(self) -> int:
        return len(self.hf_tokenizer)


def load_hf_causal_lm(
    directory: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    context: int | None = None,
) -> tuple[HFCausalLM, HFTokenizerAdapter, dict]:
    """Load a local Hugging Face causal-LM checkpoint (weights and tokenizer) without downloads.

    Weights load in float32 by default; the loss engine's autocast lowers matmuls to bf16 where native.
    `context` caps the scoring window (long-context models would otherwise get huge windows).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy import, only when asked

    # Cast after loading: the dtype keyword of from_pretrained changed name across transformers versions.
    hf_model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).to(dtype)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = HFCausalLM(hf_model, context).to(device).eval()
    meta = {"source": "huggingface", "model_type": hf_model.config.model_type, "directory": str(directory)}
    return model, HFTokenizerAdapter(hf_tokenizer), meta
