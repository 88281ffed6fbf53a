"""Paired significance tests between paradigms on per-user results (the model is ranx's ``compare``).

Every comparison is paired by user: per-user values are first averaged over seeds (so a paradigm with three
seeds is one number per user), then for each pair (a, b) and metric this module reports the paired t-test and
the Wilcoxon signed-rank test (scipy.stats), a seeded bootstrap 95% confidence interval of the mean difference,
the relative difference, win/tie/loss counts over users, and Holm's correction over the whole family of
comparisons in the table.

A test that is undefined for its data (scipy's NaN: e.g. a single user for the t-test) keeps its NaN p-value, and
its Holm-adjusted p is NaN too: it still counts in the size of the family (it is one of the comparisons made, so
counting it keeps the correction conservative) and is ordered after every defined p-value, so the others' adjusted
values are what they would be if it had p = 1; it is never marked significant. Identical per-user values (every
difference zero) are not such a case: both p-values are 1 by definition, as nothing differs.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from bench.errors import BenchError

SIGNIFICANCE_COLUMNS = ["metric", "a", "b", "mean_a", "mean_b", "diff", "rel_diff_pct", "ci_low", "ci_high",
                        "t_p", "wilcoxon_p", "p_holm", "wins", "ties", "losses"]
TESTS = ("t", "wilcoxon")


def user_matrix(per_user: pd.DataFrame, metric: str, stage: str = "test") -> pd.DataFrame:
    """``[users, paradigms]`` table of ``metric`` at ``stage``, each cell averaged over the paradigm's seeds.

    Columns keep the order in which paradigms first appear; rows are sorted by user id."""
    rows = per_user[per_user["stage"] == stage]
    if rows.empty:
        raise BenchError(f"no per-user rows for stage {stage!r}")
    if "protocol" in rows.columns and rows["protocol"].nunique() > 1:
        raise ValueError("per-user rows of several protocols: select one first (bench.rundir.Run.for_protocol)")
    order = list(dict.fromkeys(rows["paradigm"]))
    table = rows.groupby(["user", "paradigm"], sort=True)[metric].mean().unstack("paradigm")
    return table[order]


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as the input). A NaN p-value (an undefined test) stays NaN;
    it counts in the family size ``m`` and is ordered last, so it leaves every other adjusted value as a p of 1
    would (see the module docstring)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    undefined = np.isnan(p)
    order = np.argsort(np.where(undefined, np.inf, p), kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * np.where(undefined, 1.0, p)[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    out[undefined] = np.nan
    return out


def paired_pvalues(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values ``(paired t-test, Wilcoxon signed-rank)`` of ``a`` vs ``b``: 1.0 when every difference
    is zero (identical results, by definition never significant), NaN where scipy's test is undefined for the
    data (e.g. one user), reported as such."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not np.any(diff):
        return 1.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t_p = float(sps.ttest_rel(a, b).pvalue)
        w_p = float(sps.wilcoxon(a, b).pvalue)
    return t_p, w_p


def bootstrap_ci(diffs: np.ndarray, n_boot: int = 10_000, seed: int = 0, level: float = 0.95,
                 cells: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean of each column of ``diffs`` ``[users, comparisons]``.

    Users are resampled with replacement ``n_boot`` times; every column uses the same resamples (paired).
    Returns ``(low, high)``, each ``[comparisons]``. Memory stays near ``cells`` x 8 bytes."""
    diffs = np.asarray(diffs, dtype=np.float64)
    n = diffs.shape[0]
    rng = np.random.default_rng(seed)
    step = max(1, cells // max(n, 1))
    means = []
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        means.append(counts @ diffs / n)
    means = np.concatenate(means)
    tail = (1 - level) / 2 * 100
    return np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


def compare_pairs(matrices: dict[str, pd.DataFrame], pairs: list[tuple[str, str]], n_boot: int = 10_000,
                  seed: int = 0, test: str = "t") -> pd.DataFrame:
    """One row per (metric, pair) with :data:`SIGNIFICANCE_COLUMNS`; ``p_holm`` adjusts the ``test`` p-values
    (``t`` or ``wilcoxon``) over every row of the returned table.

    ``matrices`` maps a metric to its ``[users, paradigms]`` table (see :func:`user_matrix`)."""
    if test not in TESTS:
        raise BenchError(f"unknown significance test {test!r}; use one of {', '.join(TESTS)}")
    rows, diffs = [], []
    for metric, table in matrices.items():
        for a, b in pairs:
            va, vb = table[a].to_numpy(np.float64), table[b].to_numpy(np.float64)
            t_p, w_p = paired_pvalues(va, vb)
            mean_a, mean_b = float(va.mean()), float(vb.mean())
            d = va - vb
            rows.append({"metric": metric, "a": a, "b": b, "mean_a": mean_a, "mean_b": mean_b,
                         "diff": mean_a - mean_b,
                         "rel_diff_pct": (mean_a - mean_b) / mean_b * 100 if mean_b else np.nan,
                         "t_p": t_p, "wilcoxon_p": w_p, "wins": int((d > 0).sum()), "ties": int((d == 0).sum()),
                         "losses": int((d < 0).sum())})
            diffs.append(d)
    if not rows:
        return pd.DataFrame(columns=SIGNIFICANCE_COLUMNS)
    table = pd.DataFrame(rows)
    low, high = bootstrap_ci(np.stack(diffs, axis=1), n_boot, seed)
    table["ci_low"], table["ci_high"] = low, high
    table["p_holm"] = holm(table["t_p" if test == "t" else "wilcoxon_p"])
    return table[SIGNIFICANCE_COLUMNS]


def compare(per_user: pd.DataFrame, metrics: list[str], stage: str = "test", n_boot: int = 10_000, seed: int = 0,
            test: str = "t") -> pd.DataFrame:
    """Every pair of paradigms of one run, for every metric in ``metrics`` (see :func:`compare_pairs`)."""
    matrices = {m: user_matrix(per_user, m, stage) for m in metrics}
    names = list(next(iter(matrices.values())).columns) if matrices else []
    return compare_pairs(matrices, list(itertools.combinations(names, 2)), n_boot, seed, test)


def beaten(significance: pd.DataFrame, alpha: float = 0.05) -> dict[str, dict[str, list[str]]]:
    """``{metric: {paradigm: [paradigms it is significantly better than]}}`` after Holm correction (an undefined
    test, NaN, never counts)."""
    out: dict[str, dict[str, list[str]]] = {}
    for row in significance.itertuples(index=False):
        if not row.p_holm < alpha or row.diff == 0:
            continue
        winner, loser = (row.a, row.b) if row.diff > 0 else (row.b, row.a)
        out.setdefault(row.metric, {}).setdefault(winner, []).append(loser)
    return out
