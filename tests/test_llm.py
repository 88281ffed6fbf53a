import logging

import pytest
import torch
from transformers import (BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel, T5Config,
                          T5EncoderModel)

from bench.errors import BenchError
from bench.features import FeatureStore
from bench.llm import load_backbone, model_width, transformer_blocks

TINY = {
    "bert": (BertModel, BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
                                   vocab_size=99)),
    "llama": (LlamaModel, LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=37, vocab_size=99)),
    "gpt2": (GPT2Model, GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=99)),
    "t5": (T5EncoderModel, T5Config(d_model=32, num_layers=3, num_heads=2, d_ff=37, d_kv=16, vocab_size=99)),
}


@pytest.mark.parametrize("family", sorted(TINY))
def test_blocks_and_width_of_every_family(family):
    model_class, config = TINY[family]
    model = model_class(config)
    blocks = transformer_blocks(model)
    assert len(blocks) == 3 and model_width(config) == 32
    # the blocks really are the ones the forward pass runs through
    seen = []
    handle = blocks[-1].register_forward_hook(lambda module, args, out: seen.append(True))
    model(input_ids=torch.tensor([[1, 2, 3]]))
    handle.remove()
    assert seen == [True]


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(BenchError, match="cannot find the transformer blocks"):
        transformer_blocks(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return load_backbone("minilm", torch.device("cpu"), "float32")  # the reference precision


def test_minilm_alias_loads_offline_frozen_and_mean_pools(minilm, monkeypatch):
    assert minilm.n_layers == 6 and minilm.width == 384 and minilm.pooling == "mean" and not minilm.is_decoder
    assert not minilm.model.training and all(not p.requires_grad for p in minilm.model.parameters())
    a, b = minilm.encode(["Toy Story", "a completely different sentence about cooking"], 32)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) < 0.9
    single = minilm.encode(["Toy Story"], 32)
    assert torch.allclose(single[0], a, atol=1e-5)  # padding in a batch does not change a text's features


def test_unknown_backbone_suggests_alias():
    with pytest.raises(BenchError, match=r"unknown backbone 'minilmm' \(did you mean 'minilm'\?\)"):
        load_backbone("minilmm", torch.device("cpu"))


def test_feature_cache_hit_does_no_forward_pass(minilm, tmp_path):
    texts = ["Toy Story", "GoldenEye", "Four Rooms", "Toy Story"]
    first = FeatureStore(minilm, tmp_path, 32).encode(texts)
    calls = minilm.forward_calls
    again = FeatureStore(minilm, tmp_path, 32).encode(texts)      # a new store: read from disk
    assert minilm.forward_calls == calls and torch.equal(first, again)
    FeatureStore(minilm, tmp_path, 32).encode(["Toy Story", "Heat"])  # only the new text is encoded
    assert minilm.forward_calls == calls + 1


def test_length_sorted_batches_give_the_same_features(minilm):
    texts = ["a", "a much longer text with many more words in it than the first", "mid length text"]
    assert torch.allclose(minilm.encode(texts, 32, batch_size=2),
                          minilm.encode(texts, 32, batch_size=2, sort_by_length=False), atol=1e-5)


def test_smollm2_alias_converts_gguf_once_and_pools_the_last_real_token(cache_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load_backbone("smollm2-135m", torch.device("cpu"), cache_root=cache_root)
    assert backbone.is_decoder and backbone.pooling == "last"
    assert backbone.n_layers == 30 and backbone.width == 576 and backbone.context_window >= 2048
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert len(list(cache_root.glob("llm/*/model.safetensors"))) == 1
    short, padded = backbone.encode(["Toy Story", "Toy Story"], 16), backbone.encode(["Toy Story", "x " * 12], 16)
    assert torch.allclose(short[0], padded[0], atol=1e-4)  # right padding does not move the pooled token
    again = load_backbone("smollm2-135m", torch.device("cpu"), cache_root=cache_root)  # from the cached folder
    assert again.fingerprint == backbone.fingerprint


def test_counting_a_prompt_longer_than_the_context_warns_nothing(minilm):
    """Prompts are counted before they are cut to the budget; that must not print transformers' indexing warning."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        text = "word " * (minilm.tokenizer.model_max_length + 10)
        assert minilm.count_tokens(text) > minilm.tokenizer.model_max_length
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [r for r in records if "indexing errors" in r.getMessage()]


# -- precision: bfloat16 where the hardware has it, float32 pooling, keyed caches ----------------------------------
def test_pooling_upcasts_before_summing(minilm):
    """Mean pooling summed in bfloat16 has about 10x the error of upcasting first; pooled outputs are float32."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 200, 16, generator=gen, dtype=torch.float64) + 3.0
    mask = torch.ones(4, 200, dtype=torch.long)
    exact = hidden.mean(dim=1)
    pooled = minilm.pool(hidden.to(torch.bfloat16), mask)
    assert pooled.dtype == torch.float32
    upcast_error = (hidden.to(torch.bfloat16).double().mean(dim=1) - exact).abs().max()
    assert (pooled.double() - exact).abs().max() <= upcast_error + 1e-6


def test_bfloat16_features_agree_with_float32_and_are_cached_apart(minilm, tmp_path):
    texts = ["Toy Story", "GoldenEye (1995)", "a completely different sentence about cooking pasta at home",
             "Star Wars; Return of the Jedi; The Empire Strikes Back"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        fast = load_backbone("minilm", torch.device("cpu"), "bfloat16")
    assert fast.dtype == torch.bfloat16 and next(fast.model.parameters()).dtype == torch.bfloat16
    reference, features = minilm.encode(texts, 32), fast.encode(texts, 32)
    assert features.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(reference, features).min() >= 0.999
    assert FeatureStore(fast, tmp_path, 32).key != FeatureStore(minilm, tmp_path, 32).key
