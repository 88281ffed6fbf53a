"""ID-Direct and ID-Translation: frozen backbone, budgets, and no leak of validation/test items into prompts."""
import pytest
import torch

from bench import resources
from bench.config import load_config
from bench.split import build_split
from conftest import assert_no_prompt_leak, fit_paradigms

TEXT_PARADIGMS = ("id-direct", "id-translation")


@pytest.fixture(scope="module")
def fitted(canary_data, cache_root):
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "birds", "data_dir": str(canary_data)},
                                           "cache_dir": str(cache_root)}])
    split = build_split(cfg, cache_root)
    llm = resources.load_llm(cfg, torch.device("cpu"), cache_root)
    before = {k: v.clone() for k, v in llm.backbone.model.state_dict().items()}
    out = fit_paradigms(TEXT_PARADIGMS, cfg, split, llm, cache_root)
    return cfg, split, llm, before, out


def test_backbone_weights_are_bit_identical_after_fit(fitted):
    _, _, llm, before, _ = fitted
    after = llm.backbone.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name, test_marker, valid_marker", [("id-direct", "CANARY", "VALIDBIRD"),
                                                              ("id-translation", "Canary Movie", "Valid Bird")])
def test_no_validation_or_test_item_leaks_into_prompts(fitted, name, test_marker, valid_marker):
    paradigms = fitted[-1]
    assert_no_prompt_leak(paradigms[name], test_marker, valid_marker)


@pytest.mark.parametrize("name", TEXT_PARADIGMS)
def test_token_usage_respects_the_budget(fitted, name):
    cfg, split, llm, _, paradigms = fitted
    rows = paradigms[name].token_usage(split.users, "test")
    assert len(rows) == len(split.users)
    for row in rows:
        assert row.hard_tokens <= llm.token_budget and row.soft_tokens == 0
        assert 0 <= row.history_kept <= row.history_len == len(split.history(row.user, "test"))
        prompt = paradigms[name].stage_prompts("test")[row.user - 1]
        assert row.hard_tokens == llm.backbone.count_tokens(prompt.text)
    assert any(r.history_kept < r.history_len for r in rows)  # 64 tokens cannot hold long histories


def test_scores_have_full_item_width_and_towers_are_the_only_trainables(fitted):
    _, split, _, _, paradigms = fitted
    for paradigm in paradigms.values():
        scores = paradigm.score(split.users[:5], "test")
        assert scores.shape == (5, split.n_items) and torch.isfinite(scores).all()
        assert paradigm.trainable_parameters() == 2 * (384 * 128 + 128)
