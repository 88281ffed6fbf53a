"""Ranking evaluation: per-user ranks of the held-out item among all items (full ranking) or among a sampled
candidate list (``bench.protocols``), and metrics from ranks.

``rank = 1 + #{candidates scoring higher} + #{other candidates scoring equal}``: ties count against the
target, so a constant scorer earns nothing. Candidates are all items except the padding id 0 and (with
``mask_history``) the user's history items; the target itself is always a candidate. Scores are computed
in chunks of users sized so one ``[chunk, n_items]`` float32 block stays within ``chunk_mb``; the
comparison is done in item slices of that block, so no ``users x items`` matrix is ever held whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from bench.errors import BenchError
from bench.progress import progress_bar
from bench.registry import Registry

ScoreFn = Callable[[np.ndarray], torch.Tensor]


def chunk_size(n_items: int, chunk_mb: int) -> int:
    """Users per chunk such that a float32 score block and its comparison temporaries fit ``chunk_mb`` MiB."""
    per_user = n_items * (4 + 2)  # the float block plus one bool temporary per slice, with headroom
    return max(1, min(4096, (chunk_mb << 20) // per_user))


#: The key of :func:`evaluate_protocols`' result that holds the top-K lists (next to the protocols' ranks).
TOP_ITEMS = "top_items"


def _mask_rows(scores: torch.Tensor, histories: Sequence[np.ndarray], value: float = float("nan")) -> None:
    lengths = [len(h) for h in histories]
    if not sum(lengths):
        return
    rows = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor(lengths))
    cols = torch.from_numpy(np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]))
    scores[rows.to(scores.device), cols.to(scores.device)] = value


def top_items(scores: torch.Tensor, histories: Sequence[np.ndarray] | None, k: int) -> np.ndarray:
    """The ``k`` best items ``[b, k]`` (internal ids, best first) of a score block ``[b, n_items]``, over the same
    candidates as full ranking (never the padding id; with ``histories``, never a history item). Equal scores are
    ordered by item id, so the lists are reproducible. The block itself is never written."""
    scores = comparable_copy(scores) + 0.0  # + 0.0: -0.0 becomes 0.0, as the ranking compares them
    scores[:, 0] = float("-inf")
    if histories is not None:
        _mask_rows(scores, histories, float("-inf"))
    values, order = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)  # a partial sort: 5-10x cheaper
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1)  # only there can topk's order differ from item-id order
    if tied.any():
        order[tied] = torch.sort(scores[tied], dim=1, descending=True, stable=True).indices[:, :order.shape[1]]
    return order[:, :k].cpu().numpy().astype(np.int32)


def comparable_copy(scores: torch.Tensor) -> torch.Tensor:
    """A copy of a score block that ranking may write into, in a dtype that keeps every distinct score distinct:
    float32 and float64 as they are, integers as float64 (exact below 2**53). Half-precision scores are refused:
    converting them back cannot undo the ties they already made, and ties count against the target."""
    if scores.dtype in (torch.float16, torch.bfloat16):
        raise BenchError(f"score() returned {str(scores.dtype).removeprefix('torch.')} scores; return float32 "
                         "(compute the final dot products in float32: low-precision scores tie, and ties count "
                         "against the target)")
    if scores.dtype == torch.bool or torch.is_complex(scores):
        raise BenchError(f"score() returned {str(scores.dtype).removeprefix('torch.')} scores; return float32")
    if not scores.is_floating_point():
        return scores.to(torch.float64)
    return scores.clone()


def rank_chunk(scores: torch.Tensor, targets: np.ndarray, histories: Sequence[np.ndarray] | None,
               item_slice: int = 1 << 18) -> np.ndarray:
    """Ranks ``[b]`` of ``targets`` in a score block ``[b, n_items]``; the block itself is never written (a
    paradigm may return a view of its own cache), ranking works on :func:`comparable_copy`.

    Masked candidates become NaN, which compares false with everything, so they never count.
    """
    if torch.isnan(scores).any():
        raise BenchError("a paradigm returned NaN scores; check its training (learning rate, inputs)")
    scores = comparable_copy(scores)
    rows = torch.arange(len(targets), device=scores.device)
    target_t = torch.as_tensor(targets, dtype=torch.long, device=scores.device)
    target_scores = scores[rows, target_t].clone()
    scores[:, 0] = float("nan")
    if histories is not None:
        _mask_rows(scores, histories)
    scores[rows, target_t] = float("nan")  # the target never competes with itself
    better = torch.zeros(len(targets), dtype=torch.long, device=scores.device)
    column = target_scores.unsqueeze(1)
    for start in range(0, scores.shape[1], item_slice):
        block = scores[:, start:start + item_slice]
        better += (block >= column).sum(dim=1)
    return (better + 1).cpu().numpy()


def sampled_ranks(scores: torch.Tensor, targets: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Ranks ``[b]`` (1 to ``N + 1``) of ``targets`` among themselves and their ``negatives`` ``[b, N]`` (item ids)
    in a score block ``[b, n_items]``: ``1 + #{negatives scoring >= the target}``, ties against the target."""
    columns = np.concatenate([np.asarray(targets, dtype=np.int64).reshape(-1, 1), negatives], axis=1)
    picked = comparable_copy(scores.gather(1, torch.as_tensor(columns, device=scores.device)))  # [b, 1 + N]
    return ((picked[:, 1:] >= picked[:, :1]).sum(dim=1) + 1).cpu().numpy()


def evaluate_protocols(score_fn: ScoreFn, users: np.ndarray, targets: np.ndarray,
                       histories: Sequence[np.ndarray] | None, n_items: int,
                       negatives: Mapping[str, np.ndarray] | None = None, full: bool = True, chunk_mb: int = 256,
                       progress=None, desc: str = "rank", top_k: int = 0) -> dict[str, np.ndarray]:
    """Rank of each user's target under full ranking (``full``, key ``"full"``) and under every sampled protocol
    of ``negatives`` (``{protocol: [len(users), N]}`` item ids), from one ``score_fn`` pass, chunk by chunk.

    ``score_fn(user_chunk) -> Tensor[len(chunk), n_items]``; ``targets``, ``histories`` and the rows of
    ``negatives`` align with ``users`` (``histories=None`` disables history masking of the full ranking).
    Returns ``{protocol: int64 ranks [len(users)]}``, 1 = best; with ``full`` and ``top_k > 0`` also
    ``{TOP_ITEMS: int32 [len(users), top_k]}``, each user's :func:`top_items`.
    """
    users = np.asarray(users, dtype=np.int64)
    negatives = dict(negatives or {})
    names = (["full"] if full else []) + list(negatives)
    ranks = {name: np.empty(len(users), dtype=np.int64) for name in names}
    top_k = min(top_k, n_items - 1) if full else 0
    if top_k > 0:
        ranks[TOP_ITEMS] = np.empty((len(users), top_k), dtype=np.int32)
    step = chunk_size(n_items, chunk_mb)
    with progress_bar(progress, total=len(users), desc=desc, unit="user", leave=False) as bar:
        for start in range(0, len(users), step):
            stop = min(start + step, len(users))
            with torch.no_grad():
                scores = score_fn(users[start:stop])
            if tuple(scores.shape) != (stop - start, n_items):
                raise BenchError(f"score() returned shape {tuple(scores.shape)}, expected ({stop - start}, {n_items})")
            if full:
                chunk_hist = None if histories is None else histories[start:stop]
                ranks["full"][start:stop] = rank_chunk(scores, targets[start:stop], chunk_hist)
                if top_k > 0:
                    ranks[TOP_ITEMS][start:stop] = top_items(scores, chunk_hist, top_k)
            elif torch.isnan(scores).any():
                raise BenchError("a paradigm returned NaN scores; check its training (learning rate, inputs)")
            for name, lists in negatives.items():
                ranks[name][start:stop] = sampled_ranks(scores, targets[start:stop], lists[start:stop])
            bar.update(stop - start)
    return ranks


CandidateScoreFn = Callable[[np.ndarray, list], list]


def candidate_union(target: int, negatives: Sequence[np.ndarray]) -> np.ndarray:
    """The items a candidate scorer is shown for one user: the target and every protocol's negatives, sorted by
    item id and without repeats (so nothing in their order says which one is the target)."""
    return np.unique(np.concatenate([np.asarray([target], dtype=np.int64), *negatives]).astype(np.int64))


def evaluate_candidates(score_fn: CandidateScoreFn, users: np.ndarray, targets: np.ndarray,
                        negatives: Mapping[str, np.ndarray], progress=None, desc: str = "rank",
                        chunk: int = 16) -> dict[str, np.ndarray]:
    """Rank of each user's target under every sampled protocol of ``negatives`` (``{protocol: [len(users), N]}``)
    when the paradigm scores candidate lists itself (LLM likelihood) instead of every item.

    ``score_fn(user_chunk, items) -> scores``: ``items`` is one :func:`candidate_union` per user, ``scores`` one
    1-D float tensor per user aligned with it. Each user's union of candidates is scored once for all protocols;
    ranks follow :func:`sampled_ranks` (ties count against the target). Returns ``{protocol: int64 ranks}``."""
    users = np.asarray(users, dtype=np.int64)
    ranks = {name: np.empty(len(users), dtype=np.int64) for name in negatives}
    with progress_bar(progress, total=len(users), desc=desc, unit="user", leave=False) as bar:
        for start in range(0, len(users), chunk):
            rows = range(start, min(start + chunk, len(users)))
            items = [candidate_union(targets[r], [lists[r] for lists in negatives.values()]) for r in rows]
            with torch.no_grad():
                scores = score_fn(users[start:rows.stop], items)
            for r, shown, got in zip(rows, items, scores):
                got = comparable_copy(torch.as_tensor(got)).cpu()
                if tuple(got.shape) != (len(shown),):
                    raise BenchError(f"score_candidates() returned shape {tuple(got.shape)} for "
                                     f"{len(shown)} candidates")
                if torch.isnan(got).any():
                    raise BenchError("a paradigm returned NaN scores; check its training (learning rate, inputs)")
                target = got[np.searchsorted(shown, targets[r])]
                for name, lists in negatives.items():
                    ranks[name][r] = int((got[np.searchsorted(shown, lists[r])] >= target).sum()) + 1
            bar.update(len(rows))
    return ranks


def evaluate_ranks(score_fn: ScoreFn, users: np.ndarray, targets: np.ndarray,
                   histories: Sequence[np.ndarray] | None, n_items: int, chunk_mb: int = 256,
                   progress=None, desc: str = "rank") -> np.ndarray:
    """Rank of each user's target over all items (:func:`evaluate_protocols`' full ranking alone).

    ``score_fn(user_chunk) -> Tensor[len(chunk), n_items]``; ``targets`` and ``histories`` align with ``users``
    (``histories=None`` disables history masking). Returns int64 ranks ``[len(users)]``, 1 = best.
    """
    return evaluate_protocols(score_fn, users, targets, histories, n_items, chunk_mb=chunk_mb, progress=progress,
                              desc=desc)["full"]


@dataclass(frozen=True)
class Metric:
    """A rank-based metric: ``value(ranks, k)`` maps float64 ranks ``[n]`` (1 = best) to per-user values ``[n]``;
    ``label`` is its name in tables and plots (``NDCG`` in ``NDCG@10``)."""

    label: str
    value: Callable[[np.ndarray, int], np.ndarray]


#: Every metric a config may name in ``eval.metrics`` and ``report.metrics``. A new one is one decorated
#: function here (or in a plugin, entry-point group ``bench.metrics``); tables, tests and plots pick it up.
METRICS: Registry[Metric] = Registry("metric", entry_point_group="bench.metrics")


def metric(name: str, label: str):
    """Decorator: register ``fn(ranks, k) -> values`` as metric ``name`` shown as ``label``."""
    def decorate(fn: Callable[[np.ndarray, int], np.ndarray]):
        METRICS.add(name, Metric(label, fn), origin=f"{fn.__module__}.{fn.__qualname__}")
        return fn

    return decorate


@metric("hit", "HR")
def hit(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 when the target is in the top ``k``."""
    return (ranks <= k).astype(np.float64)


@metric("ndcg", "NDCG")
def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """``1 / log2(rank + 1)`` inside the top ``k``, else 0 (one relevant item, so IDCG = 1)."""
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


@metric("mrr", "MRR")
def mrr(ranks: np.ndarray, k: int) -> np.ndarray:
    """``1 / rank`` inside the top ``k``, else 0."""
    return np.where(ranks <= k, 1.0 / ranks, 0.0)


def metric_names(metrics: Sequence[str], ks: Sequence[int]) -> list[str]:
    """Column names like ``hit@10`` in a fixed order: metric-major, then K ascending."""
    return [f"{m}@{k}" for m in metrics for k in sorted(ks)]


def metrics_from_ranks(ranks: np.ndarray, metrics: Sequence[str], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user values of every ``metrics`` x ``ks`` from ranks. Returns ``{name: float64 array [len(ranks)]}``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for name in metric_names(metrics, ks):
        metric_name, k = name.split("@")
        out[name] = METRICS.get(metric_name).value(ranks, int(k))
    return out


def check_config(cfg) -> None:
    """A one-line error when ``eval.metrics`` or ``report.metrics`` names a metric that is not registered."""
    for key, names in (("eval.metrics", cfg["eval.metrics"]),
                       ("report.metrics", [str(m).partition("@")[0] for m in cfg["report.metrics"]])):
        for name in names:
            if name not in METRICS:
                raise BenchError(f"config key '{key}': unknown metric {name!r}; use one of "
                                 f"{', '.join(METRICS.names())}")
