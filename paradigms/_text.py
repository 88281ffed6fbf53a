"""Shared machinery of the two text paradigms (ID-Direct, ID-Translation): prompts of the most recent
history that fits the token budget, frozen pooled features computed once (and cached), and two linear
towers ``g(u) = W_u pool(f(prompt))``, ``h(i) = W_i pool(f(item text))`` trained by the shared BPR loop."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bench.contract import SplitView, Workload, prompt_budget, rankings
from bench.registry import Context, Paradigm, TokenUsage
from bench.tokens import FittedPrompt, fit_prompt, usage
from bench.training import count_training_samples, train_bpr, training_samples


class _Towers(torch.nn.Module):
    def __init__(self, width: int, dim: int, sample_feats: torch.Tensor, item_feats: torch.Tensor):
        super().__init__()
        self.user = torch.nn.Linear(width, dim)
        self.item = torch.nn.Linear(width, dim)
        self.sample_feats, self.item_feats = sample_feats, item_feats

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        return self.user(self.sample_feats[samples])

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item(self.item_feats[items])


class TextTwoTower(Paradigm):
    """Base class: subclasses say how a history item is written and how the prompt and item text read."""

    needs_llm = True
    defaults = {"dim": 128}
    search_space = {"dim": ("choice", [64, 128, 256]), "train.learning_rate": ("float", 1e-4, 1e-2, "log"),
                    "train.weight_decay": ("choice", [0.0, 1e-6, 1e-4]),
                    "train.samples_per_user": ("int", 1, 20, "log"), "train.negatives": ("choice", [16, 64, 256])}

    def history_piece(self, split: SplitView, item: int) -> str:
        raise NotImplementedError

    def render(self, user_id: str, pieces: Sequence[str]) -> str:
        raise NotImplementedError

    def item_text(self, split: SplitView, item: int) -> str:
        raise NotImplementedError

    def check(self, split: SplitView) -> None:
        """Raise :class:`bench.errors.ParadigmUnavailable` when the data cannot feed this paradigm."""

    def prompt(self, split: SplitView, user: int, history: np.ndarray, budget: int, count) -> FittedPrompt:
        """The user's prompt: most recent history items first, as many as fit in ``budget`` tokens."""
        pieces = [self.history_piece(split, int(i)) for i in history[::-1]]
        return fit_prompt(lambda kept: self.render(str(split.user_ids[user]), kept), pieces, count, budget)

    @classmethod
    def workload(cls, split: SplitView, config, options) -> Workload:
        """Frozen features of every training prompt, both stages' prompts and every item text; linear towers."""
        samples = count_training_samples(split, config["train.samples_per_user"])
        prompts, items = samples + 2 * (split.n_users - 1), split.n_items - 1
        return Workload(prompts=prompts + items, training_samples=samples, rankings=rankings(split, config, True),
                        prompt_tokens=prompts * prompt_budget(config) + items * config["llm.item_max_tokens"])

    def fit(self, split: SplitView, context: Context) -> None:
        self.check(split)
        self._split, self._ctx = split, context
        llm, cfg, progress = context.llm, context.config, context.progress
        users, lengths, targets = training_samples(split, cfg["train.samples_per_user"])
        prompts = [self.prompt(split, u, split.train_history(u)[:n], llm.token_budget, llm.backbone.count_tokens)
                   for u, n in zip(users, lengths)]
        self.train_prompts = prompts
        sample_feats = llm.prompts.encode([p.text for p in prompts], progress, f"{self.name} train prompts")
        item_texts = [self.item_text(split, i) for i in range(1, split.n_items)]
        item_feats = torch.cat([torch.zeros(1, llm.backbone.width),
                                llm.items.encode(item_texts, progress, f"{self.name} items")])
        self._stage: dict[str, tuple[list[FittedPrompt], torch.Tensor]] = {}
        self._towers = _Towers(llm.backbone.width, context.options["dim"], sample_feats, item_feats)
        self.info = train_bpr(self._towers, targets, split.n_items, cfg, context.generator,
                              self._validate, progress, desc=f"{self.name} fit")
        self._refresh_items()

    def _stage_prompts(self, stage: str) -> tuple[list[FittedPrompt], torch.Tensor]:
        """Every user's ``stage`` prompt and its features (row 0: padding), built on first use."""
        if stage in self._stage:
            return self._stage[stage]
        split, ctx = self._split, self._ctx
        prompts = [self.prompt(split, int(u), split.history(int(u), stage), ctx.llm.token_budget,
                               ctx.llm.backbone.count_tokens) for u in split.users]
        feats = ctx.llm.prompts.encode([p.text for p in prompts], ctx.progress, f"{self.name} {stage} prompts")
        self._stage[stage] = prompts, torch.cat([torch.zeros(1, feats.shape[1]), feats])
        return self._stage[stage]

    @torch.no_grad()
    def _refresh_items(self) -> None:
        """Item-tower vectors of every item, computed once per evaluation instead of once per user chunk."""
        self._item_vectors = self._towers.item(self._towers.item_feats)

    def _validate(self) -> float:
        self._refresh_items()
        return self._ctx.validate(self.score)

    @torch.no_grad()
    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        user_vectors = self._towers.user(self._stage_prompts(stage)[1][torch.as_tensor(users)])
        return user_vectors @ self._item_vectors.T

    def token_usage(self, users: np.ndarray, stage: str) -> list[TokenUsage]:
        prompts = self._stage_prompts(stage)[0]
        return [usage(int(u), prompts[int(u) - 1], len(self._split.history(int(u), stage))) for u in users]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._towers.parameters() if p.requires_grad)
