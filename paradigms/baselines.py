"""Reference paradigms without an LLM: training popularity, and the frozen ID encoder's own scores."""
from __future__ import annotations

import numpy as np
import torch

from bench.contract import Workload, rankings
from bench.registry import Context, Paradigm, register


@register("pop")
class Pop(Paradigm):
    """Every user gets the same ranking: items by number of training interactions."""

    version = "1"
    description = "Popularity: items ranked by their training interaction count (same for every user)."

    @classmethod
    def workload(cls, split, config, options) -> Workload:
        return Workload(rankings=rankings(split, config, trained=False))

    def fit(self, split, context: Context) -> None:
        self._scores = torch.as_tensor(split.popularity, dtype=torch.float32)

    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        return self._scores.unsqueeze(0).expand(len(users), -1)  # a view: the evaluator never writes into scores

    def token_usage(self, users: np.ndarray, stage: str):
        return None


@register("sasrec")
class EncoderScores(Paradigm):
    """The shared ID encoder (SASRec by default) scoring items from each user's history, no LLM."""

    version = "1"
    description = "The frozen ID encoder alone (encoder.model, SASRec by default): its full-sort scores."
    needs_encoder = True

    @classmethod
    def workload(cls, split, config, options) -> Workload:
        return Workload(rankings=rankings(split, config, trained=False))

    def fit(self, split, context: Context) -> None:
        self._split, self._encoder = split, context.encoder

    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        histories = [self._split.history(int(u), stage) for u in users]
        return self._encoder.score(histories).float().cpu()

    def token_usage(self, users: np.ndarray, stage: str):
        return None
