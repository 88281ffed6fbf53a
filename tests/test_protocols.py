"""Sampled evaluation protocols (bench.protocols): candidate lists and the ranks and metrics computed on them."""
import numpy as np
import pytest
import torch

from bench.config import load_config
from bench.errors import BenchError
from bench.evaluation import stage_ranks
from bench.metrics import metrics_from_ranks, sampled_ranks
from bench.protocols import (Protocol, candidate_lists, candidates_hash, draw_candidates, load_candidates,
                             parse_protocol, save_candidates)
from bench.split import build_split


@pytest.fixture(scope="module")
def split(fixtures_dir, cache_root):
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "ml-slice", "data_dir": str(fixtures_dir)},
                                           "cache_dir": str(cache_root)}])
    return build_split(cfg, cache_root)


@pytest.mark.parametrize("name", ["uni19", "pop19", "uni99"])
def test_candidates_never_hold_the_history_or_the_target_and_never_repeat(split, name):
    protocol = parse_protocol(name)
    for stage in ("valid", "test"):
        lists = draw_candidates(split, stage, protocol, seed=0)
        assert lists.shape == (split.n_users - 1, protocol.negatives)
        for user in split.users:
            row = lists[user - 1]
            assert len(np.unique(row)) == protocol.negatives and row.min() >= 1 and row.max() < split.n_items
            known = set(split.history(int(user), stage)) | {int(split.target(stage)[user])}
            assert not known & set(row.tolist()), (name, stage, user)


def test_lists_depend_on_the_candidate_seed_only(split):
    """Identical for every paradigm and run seed (they take neither), different for another candidate seed, stage
    or protocol."""
    protocols = [parse_protocol("uni19"), parse_protocol("pop19")]
    first, again = candidate_lists(split, protocols, 0), candidate_lists(split, protocols, 0)
    assert candidates_hash(first) == candidates_hash(again)
    other = candidate_lists(split, protocols, 1)
    assert all(candidates_hash(first)[p] != candidates_hash(other)[p] for p in ("uni19", "pop19"))
    assert not np.array_equal(first["uni19"]["valid"], first["uni19"]["test"])
    assert not np.array_equal(first["uni19"]["test"], first["pop19"]["test"])


def test_popularity_sampling_follows_training_popularity(split):
    lists = draw_candidates(split, "test", parse_protocol("pop19"), seed=0)
    drawn = np.bincount(lists.ravel(), minlength=split.n_items)
    assert drawn[split.popularity == 0].sum() == 0  # never an item no one trained on
    popular = split.popularity >= np.quantile(split.popularity[1:], 0.9)
    rare = (split.popularity > 0) & (split.popularity <= np.quantile(split.popularity[1:], 0.5))
    assert drawn[popular].mean() > 3 * drawn[rare].mean()
    uniform = np.bincount(draw_candidates(split, "test", parse_protocol("uni19"), 0).ravel(), minlength=split.n_items)
    assert uniform[popular].mean() < 2 * uniform[rare].mean()


def test_a_sampled_rank_and_its_metrics_by_hand():
    # items 1..6; user 0's target 2 scores 0.5, its negatives 1, 4, 5 score 0.9, 0.5 (a tie), 0.1
    scores = torch.tensor([[0.0, 0.9, 0.5, 3.0, 0.5, 0.1, 7.0],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    ranks = sampled_ranks(scores, np.array([2, 6]), np.array([[1, 4, 5], [1, 2, 3]]))
    assert ranks.tolist() == [3, 1]  # one higher + one tie (ties count against the target); item 3, 6 not drawn
    values = metrics_from_ranks(ranks, ["hit", "ndcg"], [1, 3])
    assert values["hit@1"].tolist() == [0.0, 1.0] and values["hit@3"].tolist() == [1.0, 1.0]
    assert values["ndcg@3"].tolist() == pytest.approx([1 / np.log2(4), 1.0])


def test_stage_ranks_give_every_protocol_from_one_scoring_pass(split):
    protocol = parse_protocol("uni19")
    lists = candidate_lists(split, [protocol], 0)
    calls = []

    def score(users, stage):
        calls.append(len(users))
        return torch.as_tensor(split.popularity, dtype=torch.float32).repeat(len(users), 1)

    ranks = stage_ranks(score, split, "test", True, 256, candidates=lists)
    assert sum(calls) == split.n_users - 1 and set(ranks) == {"full", "uni19"}
    assert (ranks["uni19"] <= ranks["full"]).all() and ranks["uni19"].max() <= 20
    users = split.users
    target_pop = split.popularity[split.test_target[users]]
    by_hand = 1 + (split.popularity[lists["uni19"]["test"]] >= target_pop[:, None]).sum(axis=1)
    assert ranks["uni19"].tolist() == by_hand.tolist()


def test_candidate_files_round_trip(split, tmp_path):
    lists = candidate_lists(split, [parse_protocol("uni19")], 0)
    save_candidates(tmp_path / "candidates.npz", split, lists)
    back = load_candidates(tmp_path / "candidates.npz")
    assert candidates_hash(back) == candidates_hash(lists)
    with np.load(tmp_path / "candidates.npz") as data:
        assert data["item_ids"][0] == "[PAD]" and len(data["user_ids"]) == split.n_users - 1


@pytest.mark.parametrize("bad", ["uniform", "uni0", "pop-5", "top10"])
def test_unknown_protocols_are_one_line_errors(bad):
    with pytest.raises(BenchError, match=f"unknown protocol '{bad}'; use full, uniN or popN"):
        load_config(overrides=[f"eval.protocols=[full,{bad}]"])
    with pytest.raises(BenchError, match="names a protocol twice"):
        load_config(overrides=["eval.protocols=[full,uni99,uni99]"])


def test_too_few_eligible_items_is_a_one_line_error(split):
    with pytest.raises(BenchError, match=r"protocol uni5000: user \S+ has only \d+ eligible negatives"):
        draw_candidates(split, "test", Protocol("uni5000", "uni", 5000), 0)


def test_trivial_cut_offs_are_known():
    assert parse_protocol("uni99").trivial(100) and not parse_protocol("uni99").trivial(10)
    assert not parse_protocol("full").trivial(100000)
