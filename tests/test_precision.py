"""bench.precision: bfloat16 where the hardware computes it natively, float32 elsewhere, explicit values kept."""
import pytest
import torch

from bench import precision
from bench.errors import BenchError


@pytest.mark.parametrize("native, device, expected", [
    (True, "cpu", torch.bfloat16), (False, "cpu", torch.float32), (False, "cuda", torch.bfloat16),
])
def test_auto_dtype_follows_the_hardware(monkeypatch, native, device, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native)
    chosen = precision.resolve_dtype("auto", torch.device(device))
    assert chosen.dtype == expected and chosen.reason.startswith("auto:")
    assert precision.resolve_dtype("float32", torch.device(device)).dtype == torch.float32  # explicit stays
    with pytest.raises(BenchError, match="llm.dtype' must be auto, float32, bfloat16 or float16, got 'fp8'"):
        precision.resolve_dtype("fp8", torch.device(device))


def test_a_stage_names_its_own_key_and_dtypes():
    with pytest.raises(BenchError, match="'encoder.dtype' must be auto, float32 or bfloat16, got 'float16'"):
        precision.resolve_dtype("float16", torch.device("cpu"), "encoder.dtype", ("float32", "bfloat16"))
    assert precision.resolve_dtype("bfloat16", torch.device("cpu"), "encoder.dtype").reason == "encoder.dtype=bfloat16"


def test_native_bfloat16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    flags = "flags : fpu avx2 avx512f avx512_bf16 avx512_vnni"
    assert ("avx512_bf16" in open("/proc/cpuinfo").read()) == precision.cpu_has_native_bfloat16()
    monkeypatch.setattr(precision, "Path", lambda _: tmp_path / "cpuinfo")
    (tmp_path / "cpuinfo").write_text(flags)
    assert precision.cpu_has_native_bfloat16()
    (tmp_path / "cpuinfo").write_text(flags.replace("avx512_bf16", ""))
    assert not precision.cpu_has_native_bfloat16()
