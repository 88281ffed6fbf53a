"""Export a run's rankings for other tools: TREC run and qrels files, or ranx's JSON (``bench export``).

One run file per (paradigm, seed, stage) and one qrels file per stage, from the run's stored top-K lists
(``topk.npz``, full ranking) and held-out items: query = external user id, document = external item id, one
relevant document (the stage's target) per query. The target is placed at the rank ``per_user.csv`` gives it,
so HR@K and NDCG@K computed from the files (K up to the stored list length) equal the run's own to rounding:
without tied scores that is where the list has it anyway; with ties the run counts them against the target
(:mod:`bench.metrics`), and the file follows that rule. A target ranked below K is absent from its list.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from bench.cache import atomic_write_text
from bench.errors import BenchError
from bench.protocols import FULL
from bench.rundir import Run, TopLists

FORMATS = ("trec", "ranx")


def ranked_lists(lists: np.ndarray, targets: np.ndarray, ranks: np.ndarray) -> Iterator[list[int]]:
    """Per user, the stored list ``[K]`` (internal item ids) with the target moved to its harness rank (or
    dropped when that rank is below K): the ranking the run's metrics describe."""
    k = lists.shape[1]
    for row, target, rank in zip(lists, targets, ranks):
        items = [int(i) for i in row if i != target]
        if rank <= k:
            items.insert(int(rank) - 1, int(target))
        yield items[:k]


def _file_stem(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label)


def _job_ranks(run: Run, lists: TopLists) -> dict[tuple[str, int, str], np.ndarray]:
    """The harness rank of each stored job's targets, in ``lists.users`` order, keyed by (paradigm, seed,
    stage); checked for every job before any file is written, so an inconsistent run directory leaves none."""
    rows = run.per_user[run.per_user["protocol"] == FULL]
    found = {}
    for paradigm, seed, stage in sorted(lists.lists):
        ranks = rows[(rows["paradigm"] == paradigm) & (rows["seed"] == seed) & (rows["stage"] == stage)]
        ranks = ranks.set_index("user")["rank"].reindex(lists.users.astype(str))
        if ranks.isna().any():
            raise BenchError(f"{run.path}: per_user.csv lacks full-ranking rows of {paradigm} seed {seed} {stage} "
                             "that topk.npz holds; the run directory is inconsistent, rerun it")
        found[paradigm, seed, stage] = ranks.to_numpy()
    return found


def export(run_dir: Path, fmt: str, out: Path | None = None) -> list[Path]:
    """Write the run at ``run_dir`` as ``fmt`` (``trec`` or ``ranx``) files into ``out`` (default
    ``RUN_DIR/export/FORMAT``); return the written paths (qrels first)."""
    if fmt not in FORMATS:
        raise BenchError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    run = Run.from_disk(run_dir)
    lists = run.top_lists
    if lists is None or not lists.targets:
        raise BenchError(f"{run_dir} stored no top-K lists (topk.npz with targets): rerun it with this bench and "
                         "eval.topk > 0 and full ranking in eval.protocols")
    job_ranks = _job_ranks(run, lists)
    out = Path(out) if out else Path(run_dir) / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    users, items = lists.users.astype(str), lists.items.astype(str)
    written = []
    for stage, targets in lists.targets.items():
        qrels = {u: {items[t]: 1} for u, t in zip(users, targets)}
        written.append(_write(out / f"qrels.{stage}", fmt, qrels, qrels=True))
    for (paradigm, seed, stage), ranks in job_ranks.items():
        ranked = ranked_lists(lists.lists[paradigm, seed, stage], lists.targets[stage], ranks)
        run_dict = {u: {items[i]: float(len(row) - pos) for pos, i in enumerate(row)} for u, row in zip(users, ranked)}
        written.append(_write(out / f"{_file_stem(paradigm)}.seed{seed}.{stage}", fmt, run_dict, tag=paradigm))
    return written


def _write(stem: Path, fmt: str, data: dict, qrels: bool = False, tag: str = "bench") -> Path:
    """One file: TREC text (``qid Q0 doc rank score tag`` / ``qid 0 doc rel``) or ranx's ``{qid: {doc: score}}``
    JSON."""
    if fmt == "ranx":
        path = stem.with_suffix(stem.suffix + ".json")
        atomic_write_text(path, json.dumps(data, sort_keys=False) + "\n")
        return path
    path = stem.with_suffix(stem.suffix + ".trec")
    tag = re.sub(r"\s+", "_", tag)
    if qrels:
        lines = [f"{q} 0 {doc} {rel}" for q, docs in data.items() for doc, rel in docs.items()]
    else:
        lines = [f"{q} Q0 {doc} {pos} {score:g} {tag}" for q, docs in data.items()
                 for pos, (doc, score) in enumerate(docs.items(), start=1)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
