"""Prefix keys/values in every attention layer (bench.prefix_kv), on tiny random BERT and LLaMA models."""
import pytest
import torch
from transformers import BertConfig, BertModel, DynamicCache, LlamaConfig, LlamaModel

from bench.llm import transformer_blocks
from bench.prefix_kv import attention_input_scales, attention_modules, prefixed


def _frozen(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return _frozen(BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                        intermediate_size=48, vocab_size=120)))


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return _frozen(LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=120)))


IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _prefixes(model, length=3, batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, 32, generator=generator) for _ in transformer_blocks(model)]


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_without_prefixes_the_model_is_unchanged_and_restored(request, name):
    model = request.getfixturevalue(name)
    before = model.config._attn_implementation
    plain = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    with prefixed(model, transformer_blocks(model), [None] * 3):
        same = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert torch.equal(plain, same) and model.config._attn_implementation == before
    with pytest.raises(RuntimeError), prefixed(model, transformer_blocks(model), _prefixes(model)):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == before


def test_decoder_prefix_equals_a_key_value_cache_of_the_projected_prefix(llama):
    prefixes = _prefixes(llama)
    with prefixed(llama, llama.layers, prefixes):
        out = llama(input_ids=IDS, attention_mask=MASK).last_hidden_state
    cache = DynamicCache(config=llama.config)
    for layer, attention in enumerate(attention_modules(llama.layers)):
        def heads(linear):
            return linear(prefixes[layer]).view(2, 3, 2, 8).transpose(1, 2)
        cache.update(heads(attention.k_proj), heads(attention.v_proj), layer)
    reference = llama(input_ids=IDS, attention_mask=torch.cat([torch.ones(2, 3, dtype=torch.long), MASK], 1),
                      cache=cache, position_ids=torch.arange(5).expand(2, -1)).last_hidden_state
    assert torch.allclose(out[MASK.bool()], reference[MASK.bool()], atol=1e-5)


def test_encoder_prefix_attention_matches_a_hand_computation(bert):
    attention = attention_modules(bert.encoder.layer)[0]
    hidden = torch.randn(1, 4, 32)
    prefix = torch.randn(1, 2, 32)
    blocks = bert.encoder.layer
    with prefixed(bert, blocks, [prefix, None, None]):
        out, _ = attention(hidden)

    def heads(x):
        return x.view(1, -1, 4, 8).transpose(1, 2)

    q = heads(attention.query(hidden))
    k = heads(attention.key(torch.cat([prefix, hidden], 1)))
    v = heads(attention.value(torch.cat([prefix, hidden], 1)))
    expected = ((q @ k.transpose(2, 3)) / 8 ** 0.5).softmax(-1) @ v
    assert torch.allclose(out, expected.transpose(1, 2).reshape(1, 4, 32), atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_padding_does_not_change_a_rows_output_and_every_layer_acts(request, name):
    model = request.getfixturevalue(name)
    blocks = transformer_blocks(model)
    prefixes = _prefixes(model)
    with prefixed(model, blocks, prefixes):
        batch = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    with prefixed(model, blocks, [p[1:] for p in prefixes]):
        alone = model(input_ids=IDS[1:, :3], attention_mask=MASK[1:, :3]).last_hidden_state
    assert torch.allclose(batch[1, :3], alone[0], atol=1e-5)
    for layer in range(len(blocks)):
        only = [p if i == layer else None for i, p in enumerate(prefixes)]
        with prefixed(model, blocks, only):
            changed = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        plain = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        assert not torch.allclose(changed, plain), f"layer {layer} had no effect"


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_gradients_reach_the_prefixes_and_not_the_backbone(request, name):
    model = request.getfixturevalue(name)
    prefixes = [p.requires_grad_() for p in _prefixes(model)]
    mass = []
    with prefixed(model, transformer_blocks(model), prefixes, mass):
        model(input_ids=IDS, attention_mask=MASK).last_hidden_state.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefixes)
    assert all(p.grad is None for p in model.parameters())
    assert len(mass) == 3 and all(0 < m < 1 for m in mass)
    scales = attention_input_scales(model, transformer_blocks(model), {"input_ids": IDS, "attention_mask": MASK})
    assert scales.shape == (3,) and (scales > 0).all()
