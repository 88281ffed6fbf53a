"""Beyond-accuracy metrics over top-K lists: RecBole's definitions, checked against RecBole's own code."""
from collections import Counter

import numpy as np
import pytest
from recbole.evaluator.metrics import AveragePopularity, GiniIndex, ItemCoverage, TailPercentage

from bench import beyond
from bench.errors import BenchError

N_ITEMS, USERS, K = 60, 40, 10


def _lists(rng, users=USERS, k=K, n_items=N_ITEMS) -> np.ndarray:
    """Distinct real items (never the padding id 0) per user, skewed towards low ids as real lists are."""
    weights = 1.0 / np.arange(1, n_items)
    return np.stack([rng.choice(np.arange(1, n_items), size=k, replace=False, p=weights / weights.sum())
                     for _ in range(users)])


def _recbole(metric_cls, lists, popularity, k, tail_ratio=0.1) -> float:
    """What RecBole reports for ``lists`` cut at ``k`` (its ``count_items`` holds items seen in training only)."""
    metric = metric_cls({"topk": [k], "metric_decimal_place": 12, "tail_ratio": tail_ratio})
    count_items = Counter({item: int(c) for item, c in enumerate(popularity) if c > 0})
    if metric_cls is ItemCoverage:
        return metric.get_coverage(lists[:, :k], N_ITEMS)
    if metric_cls is GiniIndex:
        return metric.get_gini(lists[:, :k], N_ITEMS)
    values = metric.get_pop(lists, dict(count_items)) if metric_cls is AveragePopularity else \
        metric.get_tail(lists, dict(count_items))
    return metric.topk_result("x", metric.metric_info(values))[f"x@{k}"]


@pytest.mark.parametrize("name, metric_cls", [("itemcoverage", ItemCoverage), ("giniindex", GiniIndex),
                                               ("averagepopularity", AveragePopularity),
                                               ("tailpercentage", TailPercentage)])
@pytest.mark.parametrize("k, tail_ratio", [(10, 0.1), (5, 0.3), (3, 4)])
def test_each_metric_equals_recboles_on_the_same_lists(name, metric_cls, k, tail_ratio):
    rng = np.random.default_rng(k)
    lists = _lists(rng)
    popularity = rng.integers(0, 30, N_ITEMS)
    popularity[0] = 0
    popularity[[3, 7]] = 0  # items only in validation or test: RecBole's counter does not hold them
    got = beyond.values(lists, [f"{name}@{k}"], beyond.Catalogue(popularity, tail_ratio))[f"{name}@{k}"]
    assert got == pytest.approx(_recbole(metric_cls, lists, popularity, k, tail_ratio), abs=1e-10)


def test_the_same_list_for_everyone_and_personal_lists_look_different():
    """Two paradigms with the same hit rate can differ in what they expose: one list for all is low coverage,
    high Gini, high average popularity."""
    rng = np.random.default_rng(0)
    popularity = np.r_[0, np.sort(rng.integers(1, 100, N_ITEMS - 1))[::-1]]
    same = np.tile(np.arange(1, K + 1), (USERS, 1))  # the K most popular items, to everyone
    personal = _lists(rng)
    catalogue = beyond.Catalogue(popularity)
    columns = ["itemcoverage@10", "giniindex@10", "averagepopularity@10"]
    a, b = beyond.values(same, columns, catalogue), beyond.values(personal, columns, catalogue)
    assert a["itemcoverage@10"] == pytest.approx(K / N_ITEMS)
    assert b["itemcoverage@10"] > 2 * a["itemcoverage@10"]
    assert a["giniindex@10"] > b["giniindex@10"]
    assert a["averagepopularity@10"] > b["averagepopularity@10"]


def test_the_interval_is_seeded_holds_the_estimate_and_vanishes_without_variation():
    rng = np.random.default_rng(1)
    popularity = rng.integers(1, 50, N_ITEMS)
    catalogue = beyond.Catalogue(popularity)
    columns = ["itemcoverage@10", "averagepopularity@10"]
    lists = {0: _lists(rng), 1: _lists(rng)}
    first = beyond.summary(lists, columns, catalogue, n_boot=400, seed=3)
    assert first == beyond.summary(lists, columns, catalogue, n_boot=400, seed=3)
    for column in columns:
        cell = first[column]
        assert cell["low"] < cell["mean"] < cell["high"]
        assert cell["mean"] == pytest.approx(np.mean(cell["per_seed"]))
    same = {0: np.tile(np.arange(1, K + 1), (USERS, 1))}
    flat = beyond.summary(same, columns, catalogue, n_boot=200, seed=0)
    assert flat["itemcoverage@10"]["low"] == pytest.approx(flat["itemcoverage@10"]["high"])


def test_the_bootstrap_resamples_users_as_a_weighted_count():
    """A resample's exposure counts from user weights equal the counts of the resampled lists themselves."""
    rng = np.random.default_rng(2)
    lists = _lists(rng)
    drawn = rng.integers(0, USERS, USERS)
    weights = np.bincount(drawn, minlength=USERS)
    from_weights = np.asarray(beyond.exposure(lists, N_ITEMS).T @ weights)
    assert np.array_equal(from_weights, np.bincount(lists[drawn].ravel(), minlength=N_ITEMS))


def test_unknown_metrics_and_too_short_lists_are_one_line_errors():
    with pytest.raises(BenchError, match="unknown metric 'coverage'.*itemcoverage"):
        beyond.parse("coverage@10")
    with pytest.raises(BenchError, match="needs top-20 lists.*eval.topk=20"):
        beyond.check_k(["giniindex@20"], 10, "run x")


def test_an_interval_stays_within_what_the_metric_can_take():
    """A tail share near 0 gets a normal interval reaching below 0 unless it is clipped to the metric's range."""
    rng = np.random.default_rng(4)
    popularity = np.r_[0, rng.integers(1, 50, N_ITEMS - 1)]
    lists = np.tile(np.argsort(-popularity, kind="stable")[:K], (USERS, 1))  # the K most popular, to all
    lists[0, -1] = int(np.flatnonzero(beyond.Catalogue(popularity).tail())[0])  # one tail item, one user
    cell = beyond.summary({0: lists}, ["tailpercentage@10"], beyond.Catalogue(popularity), 300, 0)
    assert cell["tailpercentage@10"]["low"] == 0.0 < cell["tailpercentage@10"]["mean"]
