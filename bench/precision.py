"""Which floating-point type a stage computes in, and why: shared by the LLM backbone (``llm.dtype``) and the
ID encoder's training (``encoder.dtype``), recorded in the manifest with its reason."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import torch

from bench.errors import BenchError


class Precision(NamedTuple):
    """The dtype a stage computes in, and why (for the manifest)."""

    dtype: torch.dtype
    reason: str


#: The instruction-set flags that decide which float32 and bfloat16 kernels PyTorch runs on a CPU.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def _cpuinfo() -> str:
    """``/proc/cpuinfo`` (Linux), else ``""``."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively: the ``avx512_bf16`` or ``amx_bf16`` flag
    in ``/proc/cpuinfo`` (Linux; elsewhere False, so float32). Without them bfloat16 is emulated and slower."""
    return bool(set(_cpuinfo().split()) & {"avx512_bf16", "amx_bf16"})


def cpu_description() -> dict:
    """The CPU as a manifest records it: ``cpu_model`` (``/proc/cpuinfo``'s model name, ``None`` where unknown),
    ``cpu_capability`` (the vector instruction set PyTorch dispatches to, e.g. ``AVX512``) and ``cpu_flags`` (which
    of :data:`KERNEL_FLAGS` it has). Two CPUs that differ here may run other kernels, and the same run then gives
    ranks that differ in the last bits of a score (near-ties order differently): bit-identical reruns need the same."""
    info = _cpuinfo()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    flags = set(info.split())
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": [flag for flag in KERNEL_FLAGS if flag in flags]}


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


#: The attention implementation :func:`use_precise_kernels` switches a backbone to (transformers' attention
#: interface): PyTorch's scaled-dot-product attention with the kernel chosen per call by :func:`attention_kernel`.
ATTENTION = "bench_sdpa"


def attention_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """The scaled-dot-product kernel context for one attention call: the plain ("math") kernel for a bfloat16
    call on the CPU that records a graph, PyTorch's default choice otherwise.

    PyTorch's fused CPU attention (flash) is fast forward, but its bfloat16 backward took 12x its forward
    (torch.profiler, MiniLM, 64 x 32 tokens: 56% of a prefix-tuning step); the math kernel halves that step and
    its gradients are no less accurate (``make perf``: ``tests/perf/test_precision_perf.py``). Forward passes
    without a graph and float32 keep the fused kernel, which is faster there."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    recording = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if recording and query.device.type == "cpu" and query.dtype == torch.bfloat16:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention function under :func:`attention_kernel` (same signature and result)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with attention_kernel(query, key, value):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_precise_kernels(model: torch.nn.Module) -> torch.nn.Module:
    """Switch a transformers model that uses SDPA attention to :func:`sdpa_attention` (same masks, same maths);
    other attention implementations are left as they are. Returns the model."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, sdpa_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.config._attn_implementation = ATTENTION
    return model
