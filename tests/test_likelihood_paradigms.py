"""The zero-shot likelihood paradigms (paradigms/likelihood.py) on a tiny randomly initialised LLaMA decoder with
tied embeddings (real tokenizer, real split with canaries): they rank by the decoder's own likelihood, see each
user's candidates once and in no telling order, never see a validation or test item in a prompt, and the plan
refuses full ranking where it would cost hours."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from bench import registry
from bench.config import load_config
from bench.errors import BenchError
from bench.estimate import _refuse_unaffordable_full_ranking
from bench.evaluation import stage_ranks
from bench.likelihood import continuation_scores
from bench.metrics import candidate_union, evaluate_candidates
from bench.protocols import candidate_lists, parse_protocols
from bench.split import build_split
from conftest import fit_paradigms, minilm_vocab_size, tiny_frozen_llm

LM = ("id-direct-lm", "id-translation-lm")


def tiny_decoder(cache_root):
    torch.manual_seed(0)
    return tiny_frozen_llm(LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2,
                                                  vocab_size=minilm_vocab_size(), tie_word_embeddings=True)),
                           "tiny-llama-lm", True, cache_root)


@pytest.fixture(scope="module")
def fitted(canary_data, cache_root):
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "birds", "data_dir": str(canary_data)},
                                           "cache_dir": str(cache_root)}, "data.max_users=30",
                                          "eval.protocols=[full,uni9,pop19]"])
    split = build_split(cfg, cache_root)
    lists = candidate_lists(split, parse_protocols(cfg["eval.protocols"]), 0)
    return cfg, split, lists, fit_paradigms(LM, cfg, split, tiny_decoder(cache_root), cache_root)


@pytest.mark.parametrize("name", LM)
def test_sampled_ranks_follow_the_decoders_likelihood(fitted, name):
    cfg, split, lists, paradigms = fitted
    paradigm = paradigms[name]
    ranks = stage_ranks(paradigm.score, split, "test", True, 64, candidates=lists, full=False,
                        score_candidates=paradigm.score_candidates)
    backbone = paradigm._ctx.llm.backbone
    for user in split.users[:5]:
        prompt = backbone.tokenizer(paradigm.stage_prompts("test")[user - 1].text)["input_ids"]
        target = split.target("test")[user]
        for protocol, negatives in lists.items():
            items = [target, *negatives["test"][user - 1]]
            direct = continuation_scores(backbone, prompt, [paradigm._item_tokens[i] for i in items],
                                         reuse_prompt=False)
            assert ranks[protocol][user - 1] == 1 + int((direct[1:] >= direct[0]).sum())
    assert paradigm.trainable_parameters() == 0


@pytest.mark.parametrize("name", LM)
def test_full_ranking_on_a_small_catalogue_agrees_with_the_candidate_scores(fitted, name):
    _, split, _, paradigms = fitted
    paradigm = paradigms[name]
    users = split.users[:3]
    full = paradigm.score(users, "valid")
    assert full.shape == (3, split.n_items) and full.dtype == torch.float32
    some = np.array([2, 5, 9])
    picked = paradigm.score_candidates(users, "valid", [some] * 3)
    for row, scores in enumerate(picked):
        torch.testing.assert_close(full[row, some], scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, test_marker, valid_marker", [("id-direct-lm", "CANARY", "VALIDBIRD"),
                                                              ("id-translation-lm", "Canary Movie", "Valid Bird")])
def test_no_validation_or_test_item_reaches_a_prompt(fitted, name, test_marker, valid_marker):
    _, _, _, paradigms = fitted
    paradigm = paradigms[name]
    valid = [p.text for p in paradigm.stage_prompts("valid")]
    test = [p.text for p in paradigm.stage_prompts("test")]
    assert not any(test_marker in t or valid_marker in t for t in valid)
    assert all(test_marker not in t and t.count(valid_marker) == 1 and t.endswith(". Next:") for t in test)
    budget = paradigm._ctx.llm.token_budget
    assert all(p.tokens <= budget for p in paradigm.stage_prompts("test"))


def test_each_users_candidates_are_scored_once_sorted_and_without_the_target_marked():
    """One call per user chunk, every protocol's candidates of a user in one sorted, repeat-free array: the
    target's position says nothing. Ranks are 1 + #{negatives scoring >= the target}."""
    shown = []
    scores = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.5, 5: 0.7, 6: 0.2}

    def score_fn(users, items):
        shown.extend(items)
        return [torch.tensor([scores[int(i)] for i in row]) for row in items]

    negatives = {"a": np.array([[2, 3], [1, 3]]), "b": np.array([[3, 4], [2, 6]])}
    ranks = evaluate_candidates(score_fn, np.array([1, 2]), np.array([1, 5]), negatives)
    assert [list(s) for s in shown] == [[1, 2, 3, 4], [1, 2, 3, 5, 6]]
    assert list(candidate_union(5, [np.array([6, 2])])) == [2, 5, 6]
    assert ranks["a"].tolist() == [2, 1]  # user 1: 0.9 beats 0.5; user 2: 0.7 beats 0.5 and 0.1
    assert ranks["b"].tolist() == [2, 2]  # a tie counts against the target; 0.9 beats 0.7


def test_full_ranking_that_would_take_hours_is_refused_naming_the_protocol(fitted):
    cfg, split, _, _ = fitted
    arm = SimpleNamespace(cls=registry.get("id-direct-lm"), config=cfg, label="id-direct-lm")
    _refuse_unaffordable_full_ranking(arm, split, 1e-6)  # a small catalogue at this speed: allowed
    with pytest.raises(BenchError, match=r"id-direct-lm scores candidates by LLM likelihood.*eval.protocols=\[uni99\]"):
        _refuse_unaffordable_full_ranking(arm, split, 1.0)
    tower = SimpleNamespace(cls=registry.get("id-direct"), config=cfg, label="id-direct")
    _refuse_unaffordable_full_ranking(tower, split, 1.0)


def test_a_run_skips_decoder_paradigms_on_an_encoder_backbone_and_the_plan_leaves_them_out(fitted):
    from bench.runner import _unavailable

    cfg, split, _, _ = fitted
    encoder = SimpleNamespace(backbone=SimpleNamespace(is_decoder=False, name="minilm"))
    decoder = SimpleNamespace(backbone=SimpleNamespace(is_decoder=True, name="smollm2-135m"))
    arms = [SimpleNamespace(cls=registry.get(n), config=cfg, label=n) for n in (*LM, "ra-rec-lm")]
    for arm in arms:
        assert "--llm smollm2-135m" in _unavailable(arm, SimpleNamespace(llm_for=lambda c: encoder))
        assert _unavailable(arm, SimpleNamespace(llm_for=lambda c: decoder)) is None
    tower = SimpleNamespace(cls=registry.get("id-direct"), config=cfg, label="id-direct")
    assert _unavailable(tower, SimpleNamespace(llm_for=lambda c: encoder)) is None
