import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

from bench.llm import transformer_blocks
from bench.soft_prompts import LayerProjectors, injected


def _tiny(family):
    """A frozen tiny randomly initialised model of the family and its blocks."""
    torch.manual_seed(0)
    if family == "bert":
        model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=37, vocab_size=99)).eval()
    else:
        model = LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=37, vocab_size=99)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, transformer_blocks(model)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_injection_at_every_depth_changes_the_output(family):
    model, blocks = _tiny(family)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    plain = model(input_ids=ids).last_hidden_state
    for layer in range(len(blocks)):
        prefixes = [None] * len(blocks)
        prefixes[layer] = torch.randn(1, 2, 32)
        with injected(blocks, prefixes):
            out = model(input_ids=ids).last_hidden_state
        assert not torch.allclose(out[:, -1], plain[:, -1]), f"layer {layer} injection had no effect"
    assert torch.equal(model(input_ids=ids).last_hidden_state, plain)  # hooks are removed afterwards


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_gradients_reach_only_the_prefixes(family):
    model, blocks = _tiny(family)
    prefixes = [torch.randn(1, 2, 32, requires_grad=True) for _ in blocks]
    with injected(blocks, prefixes):
        out = model(input_ids=torch.tensor([[5, 6, 7, 8]])).last_hidden_state[:, -1]
        (out * torch.linspace(-1, 1, 32)).sum().backward()  # a plain sum would vanish through LayerNorm
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefixes)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("rank", [None, 4])
def test_layer_projectors_map_id_embeddings_into_every_layer(rank):
    projectors = LayerProjectors(n_layers=3, in_dim=8, out_dim=32, rank=rank)
    out = projectors(torch.randn(5, 7, 8))
    assert out.shape == (3, 5, 7, 32)
    expected_params = 3 * 32 * 8 + 3 * 32 if rank is None else 4 * 8 + 3 * 32 * 4 + 3 * 32
    assert sum(p.numel() for p in projectors.parameters()) == expected_params


def test_calibration_matches_the_target_scale_per_layer():
    projectors = LayerProjectors(n_layers=3, in_dim=8, out_dim=32)
    embeddings = torch.randn(100, 8)
    target = torch.tensor([0.5, 1.0, 4.0])
    projectors.calibrate(embeddings, target)
    assert torch.allclose(projectors(embeddings).flatten(1).std(dim=1), target, rtol=1e-4)
