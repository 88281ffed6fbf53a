"""Evaluation protocols: where the held-out item is ranked.

* ``full``: among every item (``bench.metrics``; with ``eval.mask_history`` the user's history is left out).
  The default and the first table of every report.
* ``uniN`` / ``popN``: among the target and ``N`` negatives drawn per user, uniformly or in proportion to
  their training popularity (``Split.popularity``: interactions in the training part), as RecBole's ``uni100`` /
  ``pop100`` (``N`` counts the negatives: ``uni99`` is the 100-candidate protocol of S3-Rec and BERT4Rec,
  ``uni19`` the 20-candidate one of LLaRA and A-LLMRec). Negatives are drawn without replacement and never
  include the target or an item of the user's history before the stage.

Candidate lists are drawn once per run from ``eval.candidate_seed``, independent of the run's seeds, so every
paradigm and seed is ranked against the same lists; the run directory keeps them (``candidates.npz``) and the
manifest their hash. The rank of a sampled protocol is ``1 + #{negatives scoring >= the target}`` (ties count
against the target, as in full ranking), from 1 to ``N + 1``.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol as Structural

import numpy as np

from bench.errors import BenchError


class SplitLists(Structural):
    """What drawing candidates reads of a split (``bench.split.Split``): ids, popularity, histories, targets."""

    n_items: int
    users: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    popularity: np.ndarray

    def history(self, user: int, stage: str) -> np.ndarray: ...

    def target(self, stage: str) -> np.ndarray: ...


FULL = "full"
_SAMPLED = re.compile(r"^(uni|pop)([1-9][0-9]*)$")
#: Users per block when drawing candidates (a float64 block of ``users x items`` keys).
BLOCK_CELLS = 1 << 23


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: ``full``, or ``negatives`` negatives drawn by ``sampling`` (``uni`` / ``pop``)."""

    name: str
    sampling: str | None = None
    negatives: int = 0

    @property
    def is_full(self) -> bool:
        return self.sampling is None

    def describe(self) -> str:
        """What a table caption says about the protocol."""
        if self.is_full:
            return "full ranking over all items"
        how = "uniformly" if self.sampling == "uni" else "in proportion to training popularity"
        return f"the target among {self.negatives} negatives sampled {how} ({self.name}: {self.negatives + 1} " \
               "candidates)"

    def trivial(self, k: int) -> bool:
        """Whether a cut-off ``k`` holds every candidate (HR@100 over 100 candidates is 1 for everyone)."""
        return not self.is_full and k > self.negatives


def parse_protocol(name: str, key: str = "eval.protocols") -> Protocol:
    """The :class:`Protocol` named ``name``; a one-line error naming ``key`` and the grammar otherwise."""
    if name == FULL:
        return Protocol(FULL)
    match = _SAMPLED.match(str(name))
    if not match:
        raise BenchError(f"config key '{key}': unknown protocol {name!r}; use full, uniN or popN (N negatives "
                         "per user, e.g. uni99, pop99, uni19)")
    return Protocol(str(name), match[1], int(match[2]))


def parse_protocols(names, key: str = "eval.protocols") -> list[Protocol]:
    """Every protocol of a config list, checked, without repeats."""
    protocols = [parse_protocol(n, key) for n in names]
    if not protocols:
        raise BenchError(f"config key '{key}' must name at least one protocol (e.g. [full])")
    if len({p.name for p in protocols}) != len(protocols):
        raise BenchError(f"config key '{key}' names a protocol twice: {list(names)}")
    return protocols


def draw_candidates(split: SplitLists, stage: str, protocol: Protocol, seed: int) -> np.ndarray:
    """Negatives ``[n_users - 1, N]`` (internal item ids, ascending per row; row ``u - 1`` is user ``u``) of a
    sampled protocol for ``stage``: Gumbel top-N over the eligible items, which is sampling without replacement
    with probability proportional to each item's weight. A one-line error when a user has fewer than ``N``
    eligible items."""
    weights = np.ones(split.n_items) if protocol.sampling == "uni" else split.popularity.astype(np.float64)
    weights[0] = 0.0
    with np.errstate(divide="ignore"):
        log_weights = np.log(weights)
    stream = np.random.SeedSequence([seed, zlib.crc32(protocol.name.encode()), ("valid", "test").index(stage)])
    rng = np.random.default_rng(stream)
    users = split.users
    out = np.empty((len(users), protocol.negatives), dtype=np.int64)
    step = max(1, BLOCK_CELLS // split.n_items)
    for start in range(0, len(users), step):
        block = users[start:start + step]
        keys = log_weights + rng.gumbel(size=(len(block), split.n_items))
        _exclude(keys, split, block, stage)
        _check_enough(keys, split, block, protocol, stage)
        top = np.argpartition(-keys, protocol.negatives - 1, axis=1)[:, :protocol.negatives]
        out[start:start + len(block)] = np.sort(top, axis=1)
    return out


def _exclude(keys: np.ndarray, split: SplitLists, block: np.ndarray, stage: str) -> None:
    """Set the keys of every user's history before ``stage`` and target to -inf."""
    histories = [np.append(split.history(int(u), stage), split.target(stage)[u]) for u in block]
    rows = np.repeat(np.arange(len(block)), [len(h) for h in histories])
    keys[rows, np.concatenate(histories)] = -np.inf


def _check_enough(keys: np.ndarray, split: SplitLists, block: np.ndarray, protocol: Protocol, stage: str) -> None:
    eligible = np.isfinite(keys).sum(axis=1)
    short = np.flatnonzero(eligible < protocol.negatives)
    if len(short):
        user = block[short[0]]
        raise BenchError(f"protocol {protocol.name}: user {split.user_ids[user]} has only {eligible[short[0]]} "
                         f"eligible negatives in the {stage} stage, {protocol.negatives} needed; use fewer "
                         f"negatives (e.g. {protocol.sampling}{max(1, int(eligible.min()))}) or uni sampling")


def candidate_lists(split: SplitLists, protocols: list[Protocol], seed: int) -> dict[str, dict[str, np.ndarray]]:
    """``{protocol: {stage: negatives [n_users - 1, N]}}`` of every sampled protocol (full needs none)."""
    return {p.name: {stage: draw_candidates(split, stage, p, seed) for stage in ("valid", "test")}
            for p in protocols if not p.is_full}


def candidates_hash(lists: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, str]:
    """``{protocol: 16 hex digits}``: a content hash of each protocol's lists (both stages)."""
    out = {}
    for name, stages in lists.items():
        digest = hashlib.sha256(name.encode())
        for stage in sorted(stages):
            digest.update(stage.encode())
            digest.update(np.ascontiguousarray(stages[stage], dtype=np.int64).tobytes())
        out[name] = digest.hexdigest()[:16]
    return out


def save_candidates(path: Path, split: SplitLists, lists: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write ``candidates.npz``: ``PROTOCOL.STAGE`` arrays ``[n_users - 1, N]`` of internal item ids (row i: the
    user ``user_ids[i]``), and the raw ``user_ids`` / ``item_ids`` that translate them (index 0 is padding)."""
    dtype = np.uint16 if split.n_items <= np.iinfo(np.uint16).max else np.int32
    arrays = {f"{name}.{stage}": values.astype(dtype) for name, stages in lists.items()
              for stage, values in stages.items()}
    with open(path, "wb") as handle:
        np.savez_compressed(handle, user_ids=split.user_ids[split.users].astype(str),
                            item_ids=split.item_ids.astype(str), **arrays)


def load_candidates(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The lists :func:`save_candidates` wrote, as int64 ``{protocol: {stage: [n_users - 1, N]}}``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            if "." in key:
                name, stage = key.split(".")
                out.setdefault(name, {})[stage] = data[key].astype(np.int64)
    return out
