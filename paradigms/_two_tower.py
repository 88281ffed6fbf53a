"""The base of every paradigm that scores ``s(u, i) = <user vector, item vector>`` (the text paradigms, their LoRA
variants, RA-Rec and its earlier reading).

A subclass says how to compute every user's vectors for a stage and every item's vector (``user_vectors``,
``all_item_vectors``) and, as a :class:`bench.training.TrainingTask`, the vectors of training samples and items.
The base owns what they used to repeat: the vector caches (filled on first use, dropped by the harness's
``invalidate()`` before every validation and before the reported evaluation, so no paradigm can score with stale
vectors), scoring, the shared training call, the similarity head and the option checks.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.distributed import world
from bench.errors import BenchError
from bench.registry import Context, Paradigm
from bench.training import TrainingTask, train_bpr


def padded_rows(compute: Callable[[int, int], torch.Tensor], n: int, step: int, width: int) -> torch.Tensor:
    """``[1 + n, width]`` rows on the CPU: a zero padding row (id 0), then ``compute(start, stop)`` for rows
    ``0..n-1`` in micro-batches of ``step``; in a distributed run each rank computes a contiguous share."""
    def share(first: int, stop: int) -> torch.Tensor:
        return torch.cat([torch.zeros(0, width)] + [compute(s, min(s + step, stop)).cpu()
                                                    for s in range(first, stop, step)])

    return torch.cat([torch.zeros(1, width), world().map_rows(share, n)])


def with_padding_row(vectors: torch.Tensor) -> torch.Tensor:
    """``[1 + n, k]``: a zero row for the padding id in front of ``vectors`` ``[n, k]``."""
    return torch.cat([torch.zeros(1, vectors.shape[1], dtype=vectors.dtype, device=vectors.device), vectors])


class SimilarityHead:
    """How pooled outputs become vectors whose dot product is the score: ``dot`` keeps them, ``cosine`` scales
    unit vectors so the dot product is ``cosine / score_temperature`` (scale-robust for backbones with large
    hidden norms: decoders' last-token states), ``auto`` picks cosine for decoders and dot for encoders."""

    def __init__(self, similarity: str, score_temperature: float, is_decoder: bool):
        self.kind = ("cosine" if is_decoder else "dot") if similarity == "auto" else similarity
        self.scale = score_temperature ** -0.5 if self.kind == "cosine" else None

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled if self.scale is None else F.normalize(pooled, dim=-1) * self.scale


class TwoTower(Paradigm, TrainingTask):
    """Base class: scoring from cached user and item vectors, invalidated by the harness."""

    def user_vectors(self, stage: str) -> torch.Tensor:
        """``[n_users, k]`` vector of every user for ``stage`` (row 0: the padding user)."""
        raise NotImplementedError

    def all_item_vectors(self) -> torch.Tensor:
        """``[n_items, k]`` vector of every item (row 0: the padding item)."""
        raise NotImplementedError

    def invalidate(self) -> None:
        """Forget the cached vectors (the harness calls this before every validation and after ``fit``)."""
        self._vectors: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        cache = self.__dict__.setdefault("_vectors", {})
        if "items" not in cache:
            cache["items"] = self.all_item_vectors()
        if stage not in cache:
            cache[stage] = self.user_vectors(stage)
        return cache[stage][torch.as_tensor(users)] @ cache["items"].T

    def train_towers(self, targets: np.ndarray, n_items: int, context: Context, **options) -> dict:
        """:func:`bench.training.train_bpr` on this paradigm, early-stopped on the harness's validation of
        :meth:`score`; ``options`` are its ``learning_rate`` and ``warmup_steps``."""
        return train_bpr(self, targets, n_items, context.config, context.generator,
                         lambda: context.validate(self.score), context.progress, desc=f"{self.name} fit",
                         checkpoint=context.checkpoint, **options)

    def option(self, options, key: str, allowed: Sequence) -> object:
        """``options[key]``, or a one-line error naming ``paradigms.<name>.<key>`` and the allowed values."""
        value = options[key]
        if value not in allowed:
            raise BenchError(f"config key 'paradigms.{self.name}.{key}' must be one of "
                             f"{', '.join(map(str, allowed))}, got {value!r}")
        return value

    def similarity_head(self, options, backbone) -> SimilarityHead:
        """The checked similarity options as a :class:`SimilarityHead` for ``backbone``."""
        return SimilarityHead(self.option(options, "similarity", ("auto", "dot", "cosine")),
                              options["score_temperature"], backbone.is_decoder)
