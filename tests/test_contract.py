"""The paradigm contract: fit sees a training-only view of the split; validation comes through the harness."""
import numpy as np
import pytest
import torch

from bench.config import load_config
from bench.contract import Context, LeakError, Paradigm, SplitView
from bench.evaluation import fit_paradigm, stage_ranks, validation_ndcg
from bench.split import build_split


@pytest.fixture(scope="module")
def split_and_cfg(fixtures_dir, cache_root):
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "ml-slice", "data_dir": str(fixtures_dir)},
                                           "cache_dir": str(cache_root)}])
    return build_split(cfg, cache_root), cfg


def _context(cfg):
    return Context(config=cfg, options={}, seed=0, device=torch.device("cpu"), cache_dir=None)


class Peeker(Paradigm):
    """Reads ``self.reach(split)`` in fit: the test passes each way a plugin might try to see a target."""

    reach = staticmethod(lambda split: None)

    def fit(self, split, context):
        self.reach(split)

    def score(self, users, stage):
        return torch.zeros(len(users), 10)

    def token_usage(self, users, stage):
        return None


@pytest.mark.parametrize("reach, what", [
    (lambda split: split.test_target, "split.test_target"),
    (lambda split: split.valid_target[1], "split.valid_target"),
    (lambda split: split.target("test"), "split.target"),
    (lambda split: split.history(1, "test"), "history\\(user, 'test'\\)"),
    (lambda split: split.train_items, "split.train_items"),
    (lambda split: split.recbole_path, "split.recbole_path"),
])
def test_a_paradigm_reading_a_target_in_fit_fails_with_a_clear_error(split_and_cfg, reach, what):
    split, cfg = split_and_cfg
    peeker = Peeker()
    peeker.reach = reach
    with pytest.raises(LeakError, match=what) as err:
        fit_paradigm(peeker, split, _context(cfg))
    assert "\n" not in str(err.value)


def test_after_fit_scoring_reads_test_stage_inputs_but_never_targets(split_and_cfg):
    split, cfg = split_and_cfg
    view = fit_paradigm(Peeker(), split, _context(cfg))
    assert isinstance(view, SplitView)
    user = int(split.users[0])
    assert list(view.history(user, "test")) == list(split.history(user, "test"))
    assert list(view.train_history(user)) == list(split.train_history(user))
    assert view.n_items == split.n_items and view.hash == split.hash
    with pytest.raises(LeakError):
        view.test_target


def test_validate_is_the_harness_evaluator_with_the_runs_masking_rules(split_and_cfg):
    split, cfg = split_and_cfg
    seen = {}

    class Validating(Peeker):
        def fit(self, split, context):
            seen["value"] = context.validate(self.score)

        def score(self, users, stage):  # scores each user's history items highest, the target next
            scores = torch.zeros(len(users), split.n_items)
            for row, user in enumerate(users):
                scores[row, split.history(int(user), stage)] = 2.0
                scores[row, split.valid_target[int(user)]] = 1.0
            return scores

    fit_paradigm(Validating(), split, _context(cfg))
    assert seen["value"] == pytest.approx(1.0)  # history masked: the target ranks first for everyone
    unmasked = load_config("smoke", overrides=["eval.mask_history=false"])
    fit_paradigm(Validating(), split, _context(unmasked))
    assert seen["value"] < 0.5
    assert seen["value"] == pytest.approx(validation_ndcg(split, Validating().score, unmasked))


def test_stage_ranks_mask_only_when_asked(split_and_cfg):
    split, _ = split_and_cfg
    user = int(split.users[0])
    history = split.history(user, "test")

    def score(users, stage):
        scores = torch.zeros(len(users), split.n_items)
        scores[:, history] = 5.0
        scores[torch.arange(len(users)), torch.as_tensor(split.test_target[users])] = 1.0
        return scores

    masked = stage_ranks(score, split, "test", True, 256)["full"]
    unmasked = stage_ranks(score, split, "test", False, 256)["full"]
    assert masked[0] == 1 and unmasked[0] == len(np.unique(history)) + 1
