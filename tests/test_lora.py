"""LoRA-fine-tuned text baselines on a tiny randomly initialised BERT (real tokenizer, real split with canaries):
the shared backbone stays untouched, only adapters and towers train, and no validation/test item leaks."""
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from bench.config import load_config
from bench.llm import BACKBONES, _package_file
from bench.split import build_split
from bench.training import bpr_loss
from conftest import assert_no_prompt_leak, fit_paradigms, minilm_vocab_size, tiny_frozen_llm
from paradigms.lora import adapted_copy

LORA = ("id-direct-lora", "id-translation-lora")
WIDTH, LAYERS = 32, 3


def tiny_llm(cache_root):
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=2,
                                 intermediate_size=37, vocab_size=minilm_vocab_size()))
    return tiny_frozen_llm(model, "tiny-bert-lora", False, cache_root)


@pytest.fixture(scope="module")
def fitted(canary_data, cache_root):
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "birds", "data_dir": str(canary_data)},
                                           "cache_dir": str(cache_root)}, "train.epochs=1", "data.max_users=30"])
    split = build_split(cfg, cache_root)
    llm = tiny_llm(cache_root)
    before = {k: v.clone() for k, v in llm.backbone.model.state_dict().items()}
    out = fit_paradigms(LORA, cfg, split, llm, cache_root)
    return cfg, split, llm, before, out


def test_the_shared_backbone_is_untouched(fitted):
    _, _, llm, before, _ = fitted
    after = llm.backbone.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any("lora" in name for name, _ in llm.backbone.model.named_modules())


def test_adapters_start_as_the_frozen_backbone(recwarn):
    tokenizer = AutoTokenizer.from_pretrained(str(_package_file(*BACKBONES.get("minilm"))))
    model = BertModel(BertConfig(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=2,
                                 intermediate_size=37, vocab_size=tokenizer.vocab_size)).eval()
    adapted = adapted_copy(model, rank=4, alpha=8, dropout=0.0, targets=None).eval()
    batch = tokenizer(["a user bought a film", "another prompt"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).last_hidden_state, adapted(**batch).last_hidden_state)
    assert [str(w.message) for w in recwarn] == []  # no library noise on every fit


@pytest.mark.parametrize("name", LORA)
def test_only_adapters_and_towers_train(fitted, name):
    cfg, _, _, _, paradigms = fitted
    paradigm = paradigms[name]
    rank, dim = paradigm._ctx.options["rank"], paradigm._ctx.options["dim"]
    adapters = LAYERS * 2 * (WIDTH * rank + rank * WIDTH)  # query and value of every layer: A and B
    towers = 2 * (WIDTH * dim + dim)
    assert paradigm.trainable_parameters() == adapters + towers
    paradigm._model.zero_grad()
    samples, items = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])
    bpr_loss(paradigm.sample_vectors(samples), paradigm.item_vectors(items), paradigm.item_vectors(items)).backward()
    grads = {n: p.grad for n, p in paradigm._model.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if "lora_B" in n)
    assert all(grads[n] is None for n in grads if "lora" not in n)


@pytest.mark.parametrize("name, test_marker, valid_marker", [("id-direct-lora", "CANARY", "VALIDBIRD"),
                                                              ("id-translation-lora", "Canary Movie", "Valid Bird")])
def test_no_validation_or_test_item_reaches_training_or_validation_prompts(fitted, name, test_marker, valid_marker):
    _, split, _, _, paradigms = fitted
    paradigm = paradigms[name]
    assert_no_prompt_leak(paradigm, test_marker, valid_marker)
    scores = paradigm.score(split.users[:4], "test")
    assert scores.shape == (4, split.n_items) and torch.isfinite(scores).all()


def test_a_train_fraction_trains_on_the_samples_ra_rec_draws(canary_data, cache_root):
    """The default preset gives LoRA and RA-Rec the same 20%: the same diversity-sampled samples, and the plan's
    workload counts them."""
    from bench import registry
    from bench.training import training_samples
    from bench.training import select_samples

    cfg = load_config("smoke", overrides=[{"data": {"dataset": "birds", "data_dir": str(canary_data)},
                                           "cache_dir": str(cache_root)}, "train.epochs=1", "data.max_users=30",
                                          "train.samples_per_user=4",
                                          "paradigms.id-translation-lora.train_fraction=0.5",
                                          "paradigms.id-translation-lora.diversity=true"])
    split = build_split(cfg, cache_root)
    paradigm = fit_paradigms(["id-translation-lora"], cfg, split, tiny_llm(cache_root), cache_root)[
        "id-translation-lora"]
    options = paradigm._ctx.options
    users, lengths, _ = select_samples(split, options, 0, *training_samples(split, 4))
    llm = paradigm._ctx.llm
    expected = [paradigm.prompt(split, u, split.train_history(u)[:n], llm.token_budget, llm.backbone.count_tokens).text
                for u, n in zip(users, lengths)]
    assert len(expected) == round(0.5 * len(training_samples(split, 4)[0]))
    assert [p.text for p in paradigm.train_prompts] == expected
    workload = registry.get("id-translation-lora").workload(split, cfg, options)
    assert workload.training_samples == len(expected)
