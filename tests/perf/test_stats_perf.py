"""Statistics benchmark (``make perf``): the bootstrap of a whole run's comparisons, against the textbook
index-gather bootstrap on the same data, in the same run. Reports ratios, never absolute times."""
import time

import numpy as np

from bench import stats

USERS, COMPARISONS, RESAMPLES = 6_000, 28 * 5, 2_000  # 8 paradigms x 5 metrics on a 6,000-user sample


def gather_bootstrap(diffs, n_boot, seed):
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, diffs.shape[1]))
    for b in range(n_boot):
        means[b] = diffs[rng.integers(0, len(diffs), len(diffs))].mean(axis=0)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def test_bootstrap_of_a_run_is_faster_than_index_gathering():
    rng = np.random.default_rng(0)
    diffs = (rng.random((USERS, COMPARISONS)) < 0.3) - (rng.random((USERS, COMPARISONS)) < 0.3).astype(float)
    start = time.perf_counter()
    low, high = stats.bootstrap_ci(diffs, RESAMPLES, seed=0)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    ref_low, ref_high = gather_bootstrap(diffs, RESAMPLES, seed=0)
    baseline = time.perf_counter() - start
    print(f"\nbootstrap of {COMPARISONS} comparisons x {USERS} users x {RESAMPLES} resamples: "
          f"{baseline / ours:.1f}x the index-gather bootstrap")
    assert np.allclose(low, ref_low, atol=0.01) and np.allclose(high, ref_high, atol=0.01)  # same statistic
    assert ours < baseline
