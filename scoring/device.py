"""Where to run, and in which precision.

bf16 autocast is only worth it where the hardware multiplies bf16 natively: CUDA GPUs with bf16
support, and CPUs with AMX or AVX512-BF16. Elsewhere (e.g. AVX2-only CPUs) PyTorch emulates bf16
matmuls and they run hundreds of times slower than float32, so we fall back to float32.
Set THRESHER_NO_BF16=1 to force float32 everywhere (exactness tests, debugging).
"""

from __future__ import annotations

import functools
import os

import torch

_NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def pick_device(prefer: str | None = None) -> torch.device:
    """`prefer` ("cpu", "cuda", "cuda:1", …) wins; otherwise CUDA when present, else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has AMX or AVX512-BF16 instructions."""
    if torch.backends.cpu.get_cpu_capability() == "AVX512_BF16":  # reported by some builds
        return True
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _NATIVE_BF16_CPU_FLAGS)
    except OSError:
        pass
    return False


def bf16_disabled_by_env() -> bool:
    return os.environ.get("THRESHER_NO_BF16", "").strip() not in ("", "0", "false", "False")


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """torch.bfloat16 when the device computes bf16 natively, None (= float32) otherwise."""
    if bf16_disabled_by_env():
        return None
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """An autocast context for `dtype`, or a disabled one for float32."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
