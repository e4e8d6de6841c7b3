"""Saving and loading scoring models.

Our GPT: a directory with `model.safetensors` (weights), `config.json` (GPTConfig), `tokenizer.json`
and `meta.json` (caller's metadata: what it was trained on, losses, …). A fine-tune of a Hugging Face
model is stored in the same four files: its weights and config as transformers writes them, its
tokenizer as a `tokenizers` file, and `"format": "huggingface"` in meta.json.

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


HF_FORMAT = "huggingface"  # meta.json's `format` of a stored Hugging Face model


def save_model(directory: str | Path, model, tokenizer, meta: dict | None = None) -> Path:
    """Our GPT with its tokenizer, or a Hugging Face model (HFCausalLM, e.g. fine-tuned) with its."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    if isinstance(model, HFCausalLM):
        tokenizer = tokenizers_form(tokenizer)
        # transformers writes config.json and model.safetensors (one file: the size limit of
        # registered models keeps it far below a shard); its other files are not kept.
        model.hf_model.save_pretrained(str(directory), max_shard_size="100GB")
        meta["format"] = HF_FORMAT
    else:
        # save_model (not save_file) because the tied head shares the embedding's storage.
        safetensors.torch.save_model(model, str(directory / WEIGHTS))
        (directory / CONFIG).write_text(json.dumps(asdict(model.config), indent=2))
    save_tokenizer(tokenizer, directory / TOKENIZER)
    (directory / META).write_text(json.dumps(meta, indent=2, default=str))
    return directory


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Tokenizer, dict]:
    """(model, tokenizer, meta) of a directory save_model wrote: our GPT, or an HFCausalLM with the
    context it was saved with (meta's `context`)."""
    directory = Path(directory)
    meta_path = directory / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("format") == HF_FORMAT:
        model = load_hf_model(directory, device, context=meta.get("context"))
    else:
        model = GPT(GPTConfig(**json.loads((directory / CONFIG).read_text())))
        safetensors.torch.load_model(model, str(directory / WEIGHTS), device=str(device))
        model.to(device).eval()
    return model, load_tokenizer(directory / TOKENIZER), meta


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


def tokenizers_form(tokenizer) -> Tokenizer:
    """The `tokenizers.Tokenizer` that encodes exactly as `tokenizer` does (with its special
    tokens): a transformers fast tokenizer's backend, which is what its `__call__` runs. ValueError
    for a tokenizer without one (a slow, Python-only tokenizer)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer.hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"the model's tokenizer ({type(tokenizer.hf_tokenizer).__name__}) has no tokenizer.json "
                         "form (a slow tokenizer)")
    plain = Tokenizer.from_str(backend.to_str())
    # transformers turns these off for each call unless asked; a plain Tokenizer would apply them.
    plain.no_truncation()
    plain.no_padding()
    return plain


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
    from transformers import AutoTokenizer  # heavy import, only when asked

    model = load_hf_model(directory, device, dtype, context)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    meta = {"source": "huggingface", "model_type": model.hf_model.config.model_type, "directory": str(directory)}
    return model, HFTokenizerAdapter(hf_tokenizer), meta


def load_hf_model(directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  context: int | None = None) -> HFCausalLM:
    """The weights of a local Hugging Face causal-LM checkpoint (no downloads), as an HFCausalLM."""
    from transformers import AutoModelForCausalLM  # heavy import, only when asked

    # Cast after loading: the dtype keyword of from_pretrained changed name across transformers versions.
    hf_model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).to(dtype)
    return HFCausalLM(hf_model, context).to(device).eval()
