import math

import numpy as np
import pandas as pd
import pytest
import torch

from bench.errors import BenchError
from bench.metrics import (TOP_ITEMS, evaluate_protocols, evaluate_ranks, metric_names, metrics_from_ranks, rank_chunk,
                           top_items)
from bench.rundir import Run


def _ranks(scores, targets, histories=None):
    return rank_chunk(torch.tensor(scores, dtype=torch.float32), np.array(targets), histories)


def test_rank_counts_higher_items_and_ignores_padding():
    # item 0 is padding (it would be best), target 2 has two better real items (3 and 4).
    assert _ranks([[9.0, 1.0, 5.0, 6.0, 7.0]], [2]).tolist() == [3]
    assert _ranks([[0.0, 1.0, 5.0, 4.0, 3.0]], [2]).tolist() == [1]


def test_ties_count_against_the_target():
    assert _ranks([[0.0, 2.0, 2.0, 2.0, 1.0]], [2]).tolist() == [3]
    constant = np.zeros((3, 6))
    assert _ranks(constant, [1, 3, 5]).tolist() == [5, 5, 5]  # 5 real items: worst rank for everyone


def test_history_items_are_masked_but_the_target_is_not():
    scores = [[0.0, 9.0, 8.0, 1.0, 7.0]]
    assert _ranks(scores, [3], [np.array([1, 2])]).tolist() == [2]     # only item 4 is left above it
    assert _ranks(scores, [3], [np.array([1, 2, 3])]).tolist() == [2]   # target in history still ranks


def test_metrics_from_hand_computed_ranks():
    values = metrics_from_ranks(np.array([1, 3, 10, 11]), ["hit", "ndcg", "mrr"], [10])
    assert values["hit@10"].tolist() == [1, 1, 1, 0]
    assert values["ndcg@10"] == pytest.approx([1.0, 1 / math.log2(4), 1 / math.log2(11), 0.0])
    assert values["mrr@10"] == pytest.approx([1.0, 1 / 3, 0.1, 0.0])
    assert metric_names(["hit", "ndcg"], [20, 10]) == ["hit@10", "hit@20", "ndcg@10", "ndcg@20"]


def _naive_rank(row, target, history):
    masked = set(history) | {0}
    return 1 + sum(1 for j, s in enumerate(row) if j != target and j not in masked and s >= row[target])


def test_chunked_evaluation_equals_naive_ranking():
    gen = np.random.default_rng(0)
    n_users, n_items = 57, 301
    table = np.round(gen.normal(size=(n_users, n_items)), 1).astype(np.float32)  # rounding creates ties
    targets = gen.integers(1, n_items, n_users)
    histories = [gen.choice(np.arange(1, n_items), size=gen.integers(0, 20), replace=False) for _ in range(n_users)]
    users = np.arange(n_users)
    expected = [_naive_rank(table[u], targets[u], histories[u]) for u in users]
    for chunk_mb in (0, 1, 256):  # 0 -> one user per chunk
        got = evaluate_ranks(lambda chunk: torch.from_numpy(table[chunk]), users, targets, histories, n_items,
                             chunk_mb)
        assert got.tolist() == expected


def test_nan_scores_and_wrong_shapes_are_errors():
    with pytest.raises(BenchError, match="NaN"):
        _ranks([[0.0, float("nan"), 1.0]], [2])
    with pytest.raises(BenchError, match="shape"):
        evaluate_ranks(lambda chunk: torch.zeros(len(chunk), 4), np.arange(3), np.array([1, 1, 1]), None, 5)


def test_a_metric_added_in_one_place_reaches_runs_tables_tests_and_plots(slice_overrides, tmp_path):
    from bench import metrics, runner
    from bench.config import load_config

    with metrics.METRICS.isolated():
        metrics.metric("rr", "RR")(lambda ranks, k: np.where(ranks <= k, 1.0 / ranks, 0.0))
        cfg = load_config("smoke", overrides=[*slice_overrides, "eval.metrics=[hit, rr]",
                                              "report.metrics=[hit@100, rr@10]"])
        out = runner.run("pop,sasrec", cfg, tmp_path / "run")
        assert "| RR@10 |" in (out / "results.md").read_text()
        assert set(pd.read_csv(out / "significance.csv")["metric"]) == {"hit@100", "rr@10"}
        per_user = Run.from_disk(out).per_user  # computed from per_user.csv's ranks
        assert np.allclose(per_user["rr@10"], np.where(per_user["rank"] <= 10, 1 / per_user["rank"], 0))
        assert (out / "metrics.png").is_file()
    with pytest.raises(BenchError, match="unknown metric 'rr'"):
        runner.run("pop", cfg, tmp_path / "again")


class _CachedScores:
    """A paradigm whose ``score`` returns rows of one cached matrix (basic indexing: views, not copies)."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        return self.table[int(users[0]):int(users[-1]) + 1]


def test_ranking_never_writes_into_what_score_returned():
    """History masking used to write NaN into the returned tensor: a paradigm returning a view of its cache had
    the cache corrupted, and the second evaluation failed with 'returned NaN scores'."""
    gen = np.random.default_rng(1)
    table = torch.from_numpy(gen.normal(size=(20, 50)).astype(np.float32))
    pristine, paradigm = table.clone(), _CachedScores(table)
    users, targets = np.arange(20), gen.integers(1, 50, 20)
    histories = [gen.choice(np.arange(1, 50), size=5, replace=False) for _ in users]
    first, second = (evaluate_ranks(lambda chunk: paradigm.score(chunk, "valid"), users, targets, histories, 50)
                     for _ in range(2))
    assert first.tolist() == second.tolist()
    assert torch.equal(table, pristine)


def test_scores_keep_their_distinctions_or_are_refused():
    """float64 scores closer than float32 resolves are not merged into ties; integer scores rank exactly;
    half-precision scores (already tied) are refused with the fix."""
    close = torch.tensor([[0.0, 1.0, 1.0 + 1e-12, 0.5]], dtype=torch.float64)
    assert evaluate_ranks(lambda chunk: close, np.arange(1), np.array([2]), None, 4).tolist() == [1]
    assert rank_chunk(torch.tensor([[0, 3, 7, 5]]), np.array([3]), None).tolist() == [2]
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(BenchError, match=r"returned (b)?float16 scores; return float32"):
            rank_chunk(torch.zeros(1, 4, dtype=dtype), np.array([1]), None)


def test_top_items_are_the_ranked_candidates_best_first_with_ties_by_item_id():
    """The stored lists follow full ranking's candidates: never the padding id, never a history item, the
    target included; equal scores in item-id order; what score() returned is left as it was."""
    scores = torch.tensor([[9.0, 1.0, 5.0, 5.0, 7.0, 0.0], [0.0, 3.0, 3.0, 3.0, 8.0, 2.0]])
    before = scores.clone()
    lists = top_items(scores, [np.array([4]), np.array([], dtype=np.int64)], 3)
    assert lists.tolist() == [[2, 3, 1], [4, 1, 2]]
    assert torch.equal(scores, before)
    ranks = evaluate_protocols(lambda users: scores[users], np.array([0, 1]), np.array([3, 1]),
                               [np.array([4]), np.array([], dtype=np.int64)], 6, top_k=3)
    assert ranks[TOP_ITEMS].tolist() == lists.tolist() and ranks["full"].tolist() == [2, 4]


def test_top_items_equal_a_full_stable_sort_with_and_without_ties():
    """The partial sort (topk) with a stable-sort fallback on rows with ties orders exactly as sorting every item
    by score, then item id, would."""
    generator = torch.Generator().manual_seed(0)
    distinct = torch.rand(64, 500, generator=generator)
    coarse = torch.randint(0, 20, (64, 500), generator=generator).float()  # ties everywhere
    for scores in (distinct, coarse, torch.cat([distinct[:32], coarse[:32]])):
        expected = scores.clone()
        expected[:, 0] = float("-inf")
        expected = torch.sort(expected, dim=1, descending=True, stable=True).indices[:, :30].numpy()
        assert (top_items(scores, None, 30) == expected).all()
