"""Which floating-point type a stage computes in, and why: shared by the LLM backbone (``llm.dtype``) and the
ID encoder's training (``encoder.dtype``), recorded in the manifest with its reason."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from bench.errors import BenchError


class Precision(NamedTuple):
    """The dtype a stage computes in, and why (for the manifest)."""

    dtype: torch.dtype
    reason: str


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively: the ``avx512_bf16`` or ``amx_bf16`` flag
    in ``/proc/cpuinfo`` (Linux; elsewhere False, so float32). Without them bfloat16 is emulated and slower."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(value: str, device: torch.device, key: str = "llm.dtype",
                  allowed: tuple[str, ...] = ("float32", "bfloat16", "float16")) -> Precision:
    """The :class:`Precision` that config key ``key`` (value ``value``) means on ``device``: ``auto`` is bfloat16
    on CUDA and on a CPU with native bfloat16 (:func:`cpu_has_native_bfloat16`), float32 elsewhere; otherwise
    the named dtype, one of ``allowed``."""
    if value != "auto" and value not in allowed:
        names = ", ".join(("auto",) + allowed[:-1]) + f" or {allowed[-1]}"
        raise BenchError(f"config key '{key}' must be {names}, got {value!r}")
    if value != "auto":
        return Precision(getattr(torch, value), f"{key}={value}")
    if device.type == "cuda":
        return Precision(torch.bfloat16, "auto: bfloat16 on CUDA")
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return Precision(torch.bfloat16, "auto: the CPU has native bfloat16 (avx512_bf16/amx_bf16)")
    return Precision(torch.float32, f"auto: float32 on {device.type} without native bfloat16")
