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


def test_the_manifest_names_the_cpu_and_the_kernel_flags_it_has(monkeypatch, tmp_path):
    """Kernels differ between CPUs, so a run records which CPU it ran on (model, PyTorch's ISA, kernel flags)."""
    monkeypatch.setattr(precision, "Path", lambda _: tmp_path / "cpuinfo")
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 fma avx512f "
                                      "avx512_bf16 sse4_2\n")
    described = precision.cpu_description()
    assert described["cpu_model"] == "AMD EPYC 9R14" and described["cpu_flags"] == ["avx2", "fma", "avx512f",
                                                                                     "avx512_bf16"]
    assert described["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    (tmp_path / "cpuinfo").unlink()  # not Linux: nothing known but PyTorch's ISA
    assert precision.cpu_description() | {"cpu_capability": None} == {"cpu_model": None, "cpu_capability": None,
                                                                       "cpu_flags": []}


def _attention_ops(model, ids, mask, prefixes=None) -> set[str]:
    """Names of the attention kernels one forward + backward pass of ``model`` runs (torch.profiler)."""
    from torch.profiler import profile

    from bench.llm import transformer_blocks
    from bench.prefix_kv import prefixed

    with profile() as prof:
        if prefixes is None:
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            with prefixed(model, transformer_blocks(model), list(prefixes)):
                out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        if out.requires_grad:
            direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
            (out.float() * direction).sum().backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_bfloat16_passes_that_record_a_graph_use_the_math_attention_kernel(family):
    """PyTorch's fused CPU attention backward in bfloat16 took 12x its forward; graph-recording bfloat16 passes
    (prefix tuning, LoRA) use the math kernel, passes without a graph and float32 passes keep the fused one, and
    the math kernel's gradients are the fused kernel's (up to bfloat16 rounding)."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = (BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                  vocab_size=99)) if family == "bert" else
             LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                    intermediate_size=48, vocab_size=99)))
    model = precision.use_precise_kernels(model.eval())
    assert model.config._attn_implementation == precision.ATTENTION
    for p in model.parameters():
        p.requires_grad_(False)
    ids, mask = torch.randint(1, 99, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    fused, math = "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"
    grads, start = {}, torch.randn(2, 3, 2, 32)
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        prefixes = start.clone().requires_grad_()
        ops = _attention_ops(model, ids, mask, prefixes)
        assert (math in ops and fused not in ops) if dtype == torch.bfloat16 else (fused in ops and math not in ops)
        with torch.no_grad():
            assert fused in _attention_ops(model, ids, mask)
        grads[dtype] = prefixes.grad
    cosine = torch.nn.functional.cosine_similarity(grads[torch.float32].flatten(), grads[torch.bfloat16].flatten(), 0)
    assert cosine > 0.99
