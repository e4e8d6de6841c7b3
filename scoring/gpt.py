"""A small GPT (nanoGPT-style): pre-norm blocks, causal SDPA attention, GELU MLP, learned positions,
output head tied to the token embedding. `model(idx) -> logits` of shape (batch, time, vocab).

Right padding needs no attention mask: attention is causal, so a real token never sees the padding
that follows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int
    context: int = 512
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.0


# Shapes only; the vocabulary comes from the tokenizer. "150m" is the GPT-2-small shape: 124M
# parameters with a 50k vocabulary (the CoLoR paper's 150M class), fewer with a smaller vocabulary.
PRESETS: dict[str, dict] = {
    "tiny": dict(context=128, n_layer=2, n_head=4, n_embd=128),
    "small": dict(context=256, n_layer=4, n_head=4, n_embd=256),
    "base": dict(context=512, n_layer=8, n_head=8, n_embd=512),
    "150m": dict(context=512, n_layer=12, n_head=12, n_embd=768),
}


def param_count(cfg: GPTConfig) -> int:
    """The parameters of GPT(cfg), in closed form (nothing allocated): token and position
    embeddings (the head is tied to the former), per block two LayerNorms (2d each), qkv (3d²),
    the attention's projection (d²) and the MLP (8d²), and the final LayerNorm."""
    d = cfg.n_embd
    return cfg.vocab_size * d + cfg.context * d + cfg.n_layer * (12 * d * d + 4 * d) + 2 * d


def config_from_preset(preset: str, vocab_size: int, **overrides) -> GPTConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return GPTConfig(vocab_size=vocab_size, **{**PRESETS[preset], **overrides})


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.down = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))  # exact GELU: faster than the tanh form on CPU


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.context, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.apply(self._init_weights)
        # GPT-2: scale the residual-branch outputs by 1/sqrt(2 * n_layer) to keep the stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def context(self) -> int:
        return self.config.context

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(idx))

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final (normalised) hidden states; the loss engine applies `lm_head` to valid positions only."""
        T = idx.shape[1]
        if T > self.config.context:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.context}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the token and position embeddings (Kaplan et al.)."""
        n = sum(p.numel() for p in self.parameters())  # the tied head is counted once
        if non_embedding:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n
