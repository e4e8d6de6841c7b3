"""Byte-level BPE tokenizer trained with the `tokenizers` library.

Byte-level means every string is encodable (no unknown token). Special tokens: `<|pad|>` has id 0
(so zero-filled buffers are padding) and `<|eos|>` separates documents in the pretraining stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|eos|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN]  # order fixes the ids: pad = 0, eos = 1


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`. Same input (same order) gives the same tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def pad_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(PAD_TOKEN)


def eos_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(EOS_TOKEN)


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    tokenizer.save(str(path))


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))
