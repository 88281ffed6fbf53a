"""Beyond-accuracy metrics over the top-K lists a run stores: what a paradigm recommends, not only where it puts
the target.

Every metric here is a function of how often each item is recommended over all users' top-K lists (the
*exposure* counts ``[n_items]``), the training popularity of the items, and K; RecBole's four
(``itemcoverage``, ``giniindex``, ``averagepopularity``, ``tailpercentage``) are, with the definitions of
``recbole.evaluator.metrics`` (tested against it on the same lists). As in RecBole, ``|I|`` counts the padding
id (``n_items``), popularity is the number of training interactions, and the long tail is the least popular
``tail_ratio`` share of the items seen in training (ties broken by item id), or, for ``tail_ratio > 1``, the items
with at most that many training interactions.

A value is per run, not per user, so no paired test applies; :func:`bootstrap` resamples users (with
replacement, the same resamples for every paradigm and seed) to give a 95% interval: the estimate +- 1.96
bootstrap standard errors. Percentile intervals would mislead here: a resample holds about 63% distinct users,
so set statistics (coverage, Gini) of resamples sit below (above) the estimate and their percentile interval
can exclude it. A new metric is one
decorated function (or a plugin in entry-point group ``bench.beyond_metrics``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import sparse

from bench.errors import BenchError
from bench.registry import Registry, metric_at


@dataclass(frozen=True)
class Catalogue:
    """What the metrics know of the items: ``popularity`` ``[n_items]`` training interactions per internal id
    (id 0 = padding), and the long-tail rule ``tail_ratio``."""

    popularity: np.ndarray
    tail_ratio: float = 0.1

    @property
    def n_items(self) -> int:
        return len(self.popularity)

    def tail(self) -> np.ndarray:
        """Boolean ``[n_items]``: the long-tail items (RecBole's ``TailPercentage`` rule)."""
        seen = np.flatnonzero(self.popularity > 0)
        out = np.zeros(self.n_items, dtype=bool)
        if self.tail_ratio > 1:
            out[seen[self.popularity[seen] <= self.tail_ratio]] = True
        else:
            order = seen[np.lexsort((seen, self.popularity[seen]))]
            out[order[:max(int(len(seen) * self.tail_ratio), 1)]] = True
        return out


@dataclass(frozen=True)
class BeyondMetric:
    """``value(counts, k, catalogue)``: exposure counts ``[..., n_items]`` (float; leading axes are resamples) of
    lists of length ``k`` -> values ``[...]``. ``label`` names it in tables; ``smaller``: lower is better;
    ``bounds``: the values it can take (its interval is clipped to them)."""

    label: str
    value: Callable[[np.ndarray, int, Catalogue], np.ndarray]
    smaller: bool = False
    bounds: tuple[float, float] = (0.0, 1.0)


BEYOND_METRICS: Registry[BeyondMetric] = Registry("beyond-accuracy metric", entry_point_group="bench.beyond_metrics")


def beyond_metric(name: str, label: str, smaller: bool = False, bounds: tuple[float, float] = (0.0, 1.0)):
    """Decorator: register ``fn(counts, k, catalogue) -> values`` (within ``bounds``) as beyond-accuracy metric
    ``name``."""
    def decorate(fn):
        BEYOND_METRICS.add(name, BeyondMetric(label, fn, smaller, bounds),
                           origin=f"{fn.__module__}.{fn.__qualname__}")
        return fn

    return decorate


@beyond_metric("itemcoverage", "Coverage")
def item_coverage(counts: np.ndarray, k: int, catalogue: Catalogue) -> np.ndarray:
    """Share of the ``n_items`` ids recommended to at least one user."""
    return (counts > 0).sum(axis=-1) / catalogue.n_items


@beyond_metric("giniindex", "Gini", smaller=True)
def gini_index(counts: np.ndarray, k: int, catalogue: Catalogue) -> np.ndarray:
    """Gini index of the exposure counts over all ``n_items`` ids (0: every item equally often, 1: one item)."""
    n = catalogue.n_items
    rows = np.asarray(counts, dtype=np.float64).reshape(-1, n)
    top = int(rows.max(initial=0)) + 1
    if np.array_equal(rows, np.round(rows)) and top <= 4 * n:
        weighted = _sorted_weighted_sum_of_counts(rows.astype(np.int64), top)
    else:
        weighted = (np.sort(rows, axis=1) * (2.0 * np.arange(1, n + 1) - n - 1)).sum(axis=1)
    return (weighted / (n * rows.sum(axis=1))).reshape(np.shape(counts)[:-1])


def _sorted_weighted_sum_of_counts(rows: np.ndarray, top: int) -> np.ndarray:
    """``sum_i (2i - n - 1) c_(i)`` over each row's counts in ascending order, from the histogram of the counts
    instead of a sort: the items with count ``v`` hold positions ``start_v + 1 .. start_v + h_v``, whose
    weights sum to ``h_v (2 start_v + h_v - n)``. Integer counts below ``top``."""
    b, n = rows.shape
    hist = np.bincount((rows + np.arange(b)[:, None] * top).ravel(), minlength=b * top).reshape(b, top)
    start = np.cumsum(hist, axis=1) - hist
    return (np.arange(top) * hist * (2 * start + hist - n)).sum(axis=1).astype(np.float64)


@beyond_metric("averagepopularity", "AvgPop", smaller=True, bounds=(0.0, np.inf))
def average_popularity(counts: np.ndarray, k: int, catalogue: Catalogue) -> np.ndarray:
    """Mean training popularity (interactions) of a recommended item, averaged over users."""
    return counts @ catalogue.popularity.astype(np.float64) / counts.sum(axis=-1)


@beyond_metric("tailpercentage", "Tail")
def tail_percentage(counts: np.ndarray, k: int, catalogue: Catalogue) -> np.ndarray:
    """Share of recommended items in the long tail (:meth:`Catalogue.tail`), averaged over users."""
    return counts @ catalogue.tail().astype(np.float64) / counts.sum(axis=-1)


def parse(column: str, key: str = "report.beyond_metrics") -> tuple[str, int]:
    """``"giniindex@10"`` -> ``("giniindex", 10)``; a one-line error naming ``key`` for anything else."""
    return metric_at(column, BEYOND_METRICS, key)


def display_name(column: str) -> str:
    """``giniindex@10`` -> ``Gini@10``."""
    name, k = parse(column)
    return f"{BEYOND_METRICS.get(name).label}@{k}"


def exposure(lists: np.ndarray, n_items: int) -> sparse.csr_matrix:
    """Users x items indicator ``[n_users, n_items]`` of top-K ``lists`` ``[n_users, K]`` (internal item ids)."""
    users, k = lists.shape
    return sparse.csr_matrix((np.ones(users * k), (np.repeat(np.arange(users), k), lists.ravel())),
                             shape=(users, n_items))


def values(lists: np.ndarray, columns: Sequence[str], catalogue: Catalogue) -> dict[str, float]:
    """``{column: value}`` of each ``METRIC@K`` column on ``lists`` ``[n_users, K_stored]`` cut at K."""
    out = {}
    for column in columns:
        name, k = parse(column)
        counts = np.bincount(lists[:, :k].ravel(), minlength=catalogue.n_items).astype(np.float64)
        out[column] = float(BEYOND_METRICS.get(name).value(counts, k, catalogue))
    return out


def bootstrap(seed_lists: Sequence[np.ndarray], columns: Sequence[str], catalogue: Catalogue, n_boot: int,
              seed: int, block: int = 256) -> dict[str, np.ndarray]:
    """``{column: [n_boot]}``: each metric, averaged over the seeds' lists ``[n_users, K_stored]`` (same users,
    same order), on ``n_boot`` resamples of the users drawn with replacement from ``seed``. A resample is a
    vector of user weights (how often each user was drawn), so its exposure counts are one sparse product."""
    n_users = len(seed_lists[0])
    parsed = {column: parse(column) for column in columns}
    matrices = {(index, k): exposure(lists[:, :k], catalogue.n_items).T.tocsr()
                for index, lists in enumerate(seed_lists) for _, k in parsed.values()}
    rng = np.random.default_rng(seed)
    out = {column: np.empty(n_boot) for column in columns}
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        drawn = rng.integers(0, n_users, (size, n_users)) + np.arange(size)[:, None] * n_users
        weights = np.bincount(drawn.ravel(), minlength=size * n_users).reshape(size, n_users).T
        counts = {key: np.ascontiguousarray(np.asarray(matrix @ weights).T)  # [block, n_items]
                  for key, matrix in matrices.items()}
        for column, (name, k) in parsed.items():
            metric = BEYOND_METRICS.get(name)
            per_seed = [metric.value(counts[index, k], k, catalogue) for index in range(len(seed_lists))]
            out[column][start:start + weights.shape[1]] = np.mean(per_seed, axis=0)
    return out


def check_config(cfg) -> None:
    """One-line errors before a run starts: an unknown ``report.beyond_metrics`` metric, or a K above
    ``eval.topk`` (the lists would be too short)."""
    if cfg["eval.topk"]:
        check_k(cfg["report.beyond_metrics"], cfg["eval.topk"], "this run")
    else:
        for column in cfg["report.beyond_metrics"]:
            parse(column)


def check_k(columns: Sequence[str], stored: int, where: str) -> None:
    """A one-line error when a column's K exceeds the ``stored`` list length of the run at ``where``."""
    for column in columns:
        _, k = parse(column)
        if k > stored:
            raise BenchError(f"config key 'report.beyond_metrics': {column!r} needs top-{k} lists, but {where} "
                             f"has top-{stored} lists (eval.topk={stored}); use K <= {stored} or run with --set "
                             f"eval.topk={k}")


#: Resamples behind an interval at most: the interval needs a standard error, which 1,000 resamples estimate
#: to about 2%, not the tails a percentile interval needs (``report.bootstrap`` may ask for fewer).
MAX_RESAMPLES = 1000


def summary(lists_by_seed: Mapping[int, np.ndarray], columns: Sequence[str], catalogue: Catalogue, n_boot: int,
            seed: int) -> dict[str, dict]:
    """``{column: {"mean", "std", "low", "high", "per_seed"}}``: mean and sample std over seeds, and the 95%
    interval (over users) of the seed mean: the mean +- 1.96 standard deviations of its :func:`bootstrap`,
    clipped to the metric's ``bounds`` (a share near 0 has no negative values)."""
    seeds = sorted(lists_by_seed)
    per_seed = [values(lists_by_seed[s], columns, catalogue) for s in seeds]
    boot = bootstrap([lists_by_seed[s] for s in seeds], columns, catalogue, min(n_boot, MAX_RESAMPLES), seed)
    out = {}
    for column in columns:
        got = np.array([v[column] for v in per_seed])
        low, high = np.clip(got.mean() + np.array([-1.0, 1.0]) * 1.959964 * boot[column].std(ddof=1),
                            *BEYOND_METRICS.get(parse(column)[0]).bounds)
        out[column] = {"mean": float(got.mean()), "std": float(got.std(ddof=1)) if len(got) > 1 else 0.0,
                       "low": float(low), "high": float(high), "per_seed": [float(v) for v in got]}
    return out
