"""The statistics module against scipy, a hand-worked Holm example, and the properties users rely on."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench import stats


def per_user_frame(values: dict[str, list[list[float]]], metric: str = "ndcg@10") -> pd.DataFrame:
    """per_user rows: ``values[paradigm][seed][user]``."""
    rows = []
    for paradigm, seeds in values.items():
        for seed, users in enumerate(seeds):
            for user, value in enumerate(users):
                rows.append({"paradigm": paradigm, "seed": seed, "stage": "test", "user": str(user), "rank": 1,
                             metric: value})
    return pd.DataFrame(rows)


A = np.array([0.12, 0.50, 0.33, 0.05, 0.91, 0.40, 0.27, 0.66, 0.10, 0.72])
B = np.array([0.10, 0.41, 0.35, 0.00, 0.80, 0.42, 0.20, 0.60, 0.11, 0.52])


def test_pvalues_equal_scipy_on_known_arrays():
    t_p, w_p = stats.paired_pvalues(A, B)
    assert t_p == pytest.approx(sps.ttest_rel(A, B).pvalue, rel=1e-12)
    assert w_p == pytest.approx(sps.wilcoxon(A, B).pvalue, rel=1e-12)
    d = A - B  # the t statistic by hand: mean / (sd / sqrt(n)), two-sided, n - 1 degrees of freedom
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert t_p == pytest.approx(2 * sps.t.sf(abs(t), len(d) - 1), rel=1e-9)


def test_holm_on_a_hand_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1 and monotone in the raw p
    # an undefined test stays NaN; it counts in the family (m = 2) and leaves the others as a p of 1 would
    assert stats.holm([np.nan, 0.01]) == pytest.approx([np.nan, 0.02], nan_ok=True)
    assert stats.holm([0.04, np.nan, 0.01]) == pytest.approx([0.08, np.nan, 0.03], nan_ok=True)


def test_identical_paradigms_are_never_significant():
    rng = np.random.default_rng(0)
    users = rng.random((3, 200)).tolist()
    table = stats.compare(per_user_frame({"x": users, "copy": users}), ["ndcg@10"])
    row = table.iloc[0]
    assert (row["t_p"], row["wilcoxon_p"], row["p_holm"]) == (1.0, 1.0, 1.0)
    assert (row["diff"], row["ci_low"], row["ci_high"]) == (0.0, 0.0, 0.0)
    assert (row["wins"], row["ties"], row["losses"]) == (0, 200, 0)
    assert stats.beaten(table) == {}


def test_compare_table_columns_seed_averaging_and_wins():
    frame = per_user_frame({"a": [A.tolist(), (A + 0.1).tolist()], "b": [B.tolist(), B.tolist()]})
    table = stats.compare(frame, ["ndcg@10"])
    assert list(table.columns) == stats.SIGNIFICANCE_COLUMNS
    row = table.iloc[0]
    averaged = A + 0.05  # per-user values are averaged over seeds before testing
    assert row["mean_a"] == pytest.approx(averaged.mean()) and row["diff"] == pytest.approx((averaged - B).mean())
    assert row["t_p"] == pytest.approx(sps.ttest_rel(averaged, B).pvalue)
    assert row["rel_diff_pct"] == pytest.approx((averaged - B).mean() / B.mean() * 100)
    assert (row["wins"], row["ties"], row["losses"]) == (int((averaged > B).sum()), 0, int((averaged < B).sum()))
    assert row["ci_low"] < row["diff"] < row["ci_high"]


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(1)
    diffs = rng.normal(0.3, 1.0, size=(500, 2))
    low, high = stats.bootstrap_ci(diffs, 2000, seed=7)
    again = stats.bootstrap_ci(diffs, 2000, seed=7, cells=10_000)  # other chunking, same resamples
    assert np.allclose(low, again[0], rtol=1e-12) and np.allclose(high, again[1], rtol=1e-12)
    half_width = 1.96 * diffs.std(axis=0, ddof=1) / np.sqrt(500)  # normal-theory width for comparison
    assert np.allclose(high - low, 2 * half_width, rtol=0.15)
    assert np.all(low < diffs.mean(axis=0)) and np.all(diffs.mean(axis=0) < high)


def test_holm_spans_every_pair_and_metric_and_marks_only_real_winners():
    rng = np.random.default_rng(2)
    base = rng.random(300)
    frame = per_user_frame({"good": [(base + 0.2).tolist()], "mid": [(base + rng.normal(0, 0.01, 300)).tolist()],
                            "same": [base.tolist()]})
    frame["hit@10"] = frame["ndcg@10"]
    table = stats.compare(frame, ["ndcg@10", "hit@10"])
    assert len(table) == 6  # 3 pairs x 2 metrics in one Holm family
    assert np.allclose(table["p_holm"], stats.holm(table["t_p"]))
    wins = stats.beaten(table)
    assert sorted(wins["ndcg@10"]["good"]) == ["mid", "same"] and "same" not in wins["ndcg@10"]
    wilcoxon = stats.compare(frame, ["ndcg@10"], test="wilcoxon")
    assert np.allclose(wilcoxon["p_holm"], stats.holm(wilcoxon["wilcoxon_p"]))


def test_an_undefined_test_keeps_its_nan_p_value_and_is_never_significant():
    """One user: the t-test has no degrees of freedom (scipy: NaN). It used to be reported as p = 1."""
    frame = per_user_frame({"a": [[0.9]], "b": [[0.1]]})
    row = stats.compare(frame, ["ndcg@10"]).iloc[0]
    assert np.isnan(row["t_p"]) and np.isnan(row["p_holm"]) and row["diff"] == pytest.approx(0.8)
    assert stats.beaten(stats.compare(frame, ["ndcg@10"])) == {}
    assert np.isnan(stats.paired_pvalues(np.array([0.9]), np.array([0.1]))[0])
