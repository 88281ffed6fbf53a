"""One evaluator for everything that ranks: early stopping during ``fit`` and the reported evaluation.

:func:`stage_ranks` ranks every user's target of a stage over all items, masking history items when
``eval.mask_history`` is set, for both uses. :func:`fit_paradigm` is the only way the harness trains a
paradigm: on a :class:`~bench.contract.SplitView` with ``context.validate`` bound to this evaluator.
:func:`run_job` fits one (arm, seed) job and evaluates it on every stage, into a :class:`JobResult`; the job's
:class:`~bench.contract.Context` comes from :func:`job_context`, which ``bench tune`` uses too.

In a distributed run each rank ranks its own contiguous share of the users against every item (the score
matrix never leaves the rank); validation NDCG is averaged over all users, so every rank takes the same
early-stopping decision; the per-user rows of a job are gathered on rank 0, which checks that every user appears
exactly once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from bench.config import Config
from bench.distributed import world
from bench.contract import Context, Paradigm, ScoreFn, SplitView
from bench.metrics import TOP_ITEMS, evaluate_candidates, evaluate_protocols, metrics_from_ranks
from bench.resources import Resources, Timings, seed_everything
from bench.rundir import ID_COLUMNS, with_protocol
from bench.split import STAGES, Split


def local_users(split: Split) -> np.ndarray:
    """The real users this process ranks: all of them, or this rank's contiguous share."""
    return split.users[world().shard(len(split.users))]


def stage_ranks(score: ScoreFn, split: Split, stage: str, mask_history: bool, chunk_mb: int, progress=None,
                desc: str = "rank", candidates: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                full: bool = True, score_candidates=None, top_k: int = 0) -> dict[str, np.ndarray]:
    """Rank (1 = best) of the ``stage`` target of each of :func:`local_users` under ``score`` (one process:
    [n_users - 1], every real user), per protocol: ``"full"`` over all items (when ``full``; with
    ``mask_history`` the items of the user's history before that stage are excluded) and every sampled protocol
    of ``candidates`` (``{protocol: {stage: negatives [n_users - 1, N]}}``, :mod:`bench.protocols`).

    With ``score_candidates`` (a paradigm's ``score_candidates(users, stage, items)``, :class:`Paradigm`) the
    sampled protocols are scored through it, each user's candidates only; ``score`` then serves full ranking.
    With ``full`` and ``top_k > 0`` the result also holds each user's ``top_k`` items under full ranking
    (key :data:`bench.metrics.TOP_ITEMS`, int32 ``[users, top_k]``)."""
    users = local_users(split)
    histories = [split.history(int(u), stage) for u in users] if mask_history and full else None
    negatives = {name: lists[stage][users - 1] for name, lists in (candidates or {}).items()}
    targets = split.target(stage)[users]
    sampled = {}
    if score_candidates is not None and negatives:
        sampled = evaluate_candidates(lambda chunk, items: score_candidates(chunk, stage, items), users, targets,
                                      negatives, progress, desc)
        negatives = {}
    if not full and not negatives:
        return sampled
    ranks = evaluate_protocols(lambda chunk: score(chunk, stage), users, targets, histories, split.n_items,
                               negatives, full, chunk_mb, progress, desc, top_k)
    return {**ranks, **sampled}


def validation_ndcg(split: Split, score: ScoreFn, cfg: Config) -> float:
    """Mean validation NDCG@10 of ``score`` under ``cfg``'s ``eval`` rules: the early-stopping signal."""
    ranks = stage_ranks(score, split, "valid", cfg["eval.mask_history"], cfg["eval.chunk_mb"])["full"]
    values = metrics_from_ranks(ranks, ["ndcg"], [10])["ndcg@10"]
    return float(np.concatenate(world().all_gather_object(values)).mean())


def fit_paradigm(paradigm: Paradigm, split: Split, context: Context) -> SplitView:
    """Fit ``paradigm`` on the training view of ``split`` with ``context.validate`` bound to the evaluator;
    return the view, opened for scoring."""
    view = SplitView(split)

    def validate(score: ScoreFn) -> float:
        invalidate(paradigm)
        return validation_ndcg(split, score, context.config)

    paradigm.fit(view, dataclasses.replace(context, validate=validate))
    invalidate(paradigm)
    view.open_for_scoring()
    return view


def invalidate(paradigm: Paradigm) -> None:
    """Drop the paradigm's scoring caches (:meth:`Paradigm.invalidate`; a plugin may leave the method out)."""
    method = getattr(paradigm, "invalidate", None)
    if callable(method):
        method()


@dataclass(frozen=True)
class JobResult:
    """What one (arm, seed) job produced.

    ``rows``: the per-user ranks (:data:`bench.rundir.ID_COLUMNS`: paradigm, seed, stage, protocol, user, rank) of
    every stage and protocol, ``None`` on the ranks other than 0 of a distributed run; ``top_items``: per stage,
    every user's top ``eval.topk`` items under full ranking (int32 ``[users, K]``, internal ids, users in split
    order; empty when ``eval.topk`` is 0 or the run has no full ranking); ``tokens``: the prompt-cost
    rows (:data:`bench.rundir.TOKEN_COLUMNS`, first seed only, else empty); ``info``: the manifest's record of the job
    (``trainable_parameters``, ``fit_seconds``, ``score_seconds``, ``training``); ``version``: the paradigm version
    that produced it."""

    label: str
    seed: int
    version: str
    rows: pd.DataFrame | None
    tokens: tuple[tuple, ...] = ()
    info: dict = dataclasses.field(default_factory=dict)
    top_items: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        """Everything but the rows, as plain JSON data (what a resumable run saves beside the rows)."""
        return {"label": self.label, "seed": self.seed, "version": self.version,
                "tokens": [list(row) for row in self.tokens], "info": self.info}

    @classmethod
    def from_record(cls, rows: pd.DataFrame | None, record: dict,
                    top_items: Mapping[str, np.ndarray] | None = None) -> "JobResult":
        """The job saved as ``rows``, :meth:`record` and ``top_items`` (rows of an older run keep their id and rank
        columns)."""
        return cls(label=record["label"], seed=record["seed"], version=record["version"],
                   rows=None if rows is None else with_protocol(rows)[list(ID_COLUMNS)],
                   tokens=tuple(tuple(row) for row in record.get("tokens") or []), info=record.get("info") or {},
                   top_items=dict(top_items or {}))


def job_context(arm, seed: int, resources: Resources, checkpoint: Path | None = None) -> Context:
    """The context ``arm`` is fitted with for ``seed``: its config and options, the shared device, cache, encoder
    and (when it needs one) frozen LLM, the progress reporter, a generator freshly seeded with ``seed``
    (every global RNG is seeded too) and the job's training ``checkpoint`` file, if any. ``bench run`` and
    ``bench tune`` both build it here."""
    cfg = arm.config
    return Context(config=cfg, options=arm.options, seed=seed, device=resources.device,
                   cache_dir=resources.cache_root, encoder=resources.encoder,
                   llm=resources.llm_for(cfg) if arm.cls.needs_llm else None,
                   progress=resources.progress, generator=seed_everything(seed), checkpoint=checkpoint)


def run_job(arm, seed: int, resources: Resources, timings: Timings, checkpoint: Path | None = None) -> JobResult:
    """Fit one arm with one seed and evaluate it on every stage; ``checkpoint``: where its training keeps its
    state after every epoch (:attr:`Context.checkpoint`). In a distributed run the rows of every rank are
    returned on rank 0 (``rows`` is ``None`` on the others)."""
    cfg, split = arm.config, resources.split
    context = job_context(arm, seed, resources, checkpoint)
    paradigm = arm.cls()
    tag = f"{arm.label}/seed{seed}"
    with timings(f"{tag}/fit"):
        fit_paradigm(paradigm, split, context)
    stages = {stage: _stage_frame(paradigm, arm.label, seed, stage, split, cfg, resources, timings)
              for stage in STAGES}
    rows = gather_rows_on_main(pd.concat([frame for frame, _ in stages.values()], ignore_index=True), split)
    top_items = gather_lists_on_main({stage: top for stage, (_, top) in stages.items() if top is not None})
    info = {"trainable_parameters": int(paradigm.trainable_parameters()), "fit_seconds": timings[f"{tag}/fit"],
            "score_seconds": round(sum(timings[f"{tag}/score_{st}"] for st in STAGES), 3),
            "training": getattr(paradigm, "info", None)}
    tokens = _token_rows(paradigm, arm.label, split) if seed == cfg["seeds"][0] else []
    return JobResult(label=arm.label, seed=seed, version=arm.cls.version, rows=rows, tokens=tuple(tokens),
                     info=info, top_items=top_items or {})


def gather_rows_on_main(frame: pd.DataFrame, split: Split) -> pd.DataFrame | None:
    """Every rank's per-user rows on rank 0, in user order (stage, protocol, then user), each user of each stage
    and protocol exactly once (else ``RuntimeError``); ``None`` on the other ranks; ``frame`` itself in one
    process."""
    if not world().distributed:
        return frame
    parts = world().gather_to_main(frame)
    if parts is None:
        return None
    rows = pd.concat(parts, ignore_index=True)
    protocols = list(dict.fromkeys(rows["protocol"]))
    rows = rows.sort_values(["stage", "protocol"], kind="stable", key=lambda column: column.map(
        (STAGES if column.name == "stage" else protocols).index)).reset_index(drop=True)
    expected = pd.Series(split.user_ids[split.users])
    for (stage, protocol), group in rows.groupby(["stage", "protocol"], sort=False):
        if len(group) != len(expected) or not group["user"].reset_index(drop=True).equals(expected):
            raise RuntimeError(f"gathered {stage} {protocol} rows do not cover every user exactly once "
                               f"({len(group)} rows for {len(expected)} users)")
    return rows


def gather_lists_on_main(lists: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Every rank's top-K lists on rank 0, per stage, in user order (each rank holds a contiguous share of the
    users, so rank order is user order); ``None`` on the other ranks; ``lists`` itself in one process."""
    if not world().distributed:
        return dict(lists)
    parts = world().gather_to_main(dict(lists))
    if parts is None:
        return None
    return {stage: np.concatenate([part[stage] for part in parts]) for stage in lists}


def _stage_frame(paradigm: Paradigm, label: str, seed: int, stage: str, split: Split, cfg: Config,
                 resources: Resources, timings: Timings) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The per-user rows of one stage (one block per protocol, in ``eval.protocols`` order) and the stage's
    top-K lists (``None`` when ``eval.topk`` is 0 or the run does not rank fully)."""
    tag = f"{label}/seed{seed}"
    with timings(f"{tag}/score_{stage}"):
        ranks = stage_ranks(paradigm.score, split, stage, cfg["eval.mask_history"], cfg["eval.chunk_mb"],
                            resources.progress, f"{tag} {stage}", resources.candidates,
                            full="full" in cfg["eval.protocols"],
                            score_candidates=getattr(paradigm, "score_candidates", None),
                            top_k=cfg["eval.topk"])
    top = ranks.pop(TOP_ITEMS, None)
    users = split.user_ids[local_users(split)]
    frame = pd.concat([pd.DataFrame({"paradigm": label, "seed": seed, "stage": stage, "protocol": name,
                                     "user": users, "rank": ranks[name]})[list(ID_COLUMNS)]
                       for name in cfg["eval.protocols"]], ignore_index=True)
    return frame, top


def _token_rows(paradigm: Paradigm, label: str, split: Split) -> list[tuple]:
    return [(label, str(split.user_ids[t.user]), t.hard_tokens, t.soft_tokens, t.history_len, t.history_kept)
            for t in paradigm.token_usage(split.users, "test") or []]
