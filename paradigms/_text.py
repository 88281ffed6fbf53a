"""Shared machinery of the two text paradigms (ID-Direct, ID-Translation): prompts of the most recent
history that fits the token budget, frozen pooled features computed once (and cached), and two linear
towers ``g(u) = W_u pool(f(prompt))``, ``h(i) = W_i pool(f(item text))`` trained by the shared BPR loop."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bench.contract import SplitView, Workload, prompt_budget, rankings
from bench.registry import Context, TokenUsage
from bench.tokens import FittedPrompt, fit_prompt, usage
from bench.training import count_training_samples, training_samples
from paradigms._two_tower import TwoTower, with_padding_row


class Heads(torch.nn.Module):
    """The two trained linear towers over pooled backbone outputs: ``user`` and ``item``, ``width -> dim``."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.user = torch.nn.Linear(width, dim)
        self.item = torch.nn.Linear(width, dim)


class TextTwoTower(TwoTower):
    """Base class: subclasses say how a history item is written, what separates two of them in a prompt
    (``separator``) and how the prompt and item text read."""

    separator = ", "

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
        self._sample_feats = llm.prompts.encode([p.text for p in prompts], progress, f"{self.name} train prompts")
        item_texts = [self.item_text(split, i) for i in range(1, split.n_items)]
        self._item_feats = torch.cat([torch.zeros(1, llm.backbone.width),
                                      llm.items.encode(item_texts, progress, f"{self.name} items")])
        self._prompts: dict[str, list[FittedPrompt]] = {}
        self._features: dict[str, torch.Tensor] = {}
        self._towers = Heads(llm.backbone.width, context.options["dim"])
        self.info = self.train_towers(targets, split.n_items, context)

    # -- the task the shared training loop drives ------------------------------------------------------------
    def parameters(self):
        return list(self._towers.parameters())

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        return self._towers.user(self._sample_feats[samples])

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self._towers.item(self._item_feats[items])

    # -- scoring ---------------------------------------------------------------------------------------------
    def stage_prompts(self, stage: str) -> list[FittedPrompt]:
        """Every real user's ``stage`` prompt (index ``user - 1``), built on first use."""
        if stage not in self._prompts:
            split, llm = self._split, self._ctx.llm
            self._prompts[stage] = [self.prompt(split, int(u), split.history(int(u), stage), llm.token_budget,
                                                llm.backbone.count_tokens) for u in split.users]
        return self._prompts[stage]

    def stage_features(self, stage: str) -> torch.Tensor:
        """``[n_users, width]`` pooled frozen features of every user's ``stage`` prompt (row 0: zeros), encoded
        once: they do not change while the towers train."""
        if stage not in self._features:
            ctx = self._ctx
            feats = ctx.llm.prompts.encode([p.text for p in self.stage_prompts(stage)], ctx.progress,
                                           f"{self.name} {stage} prompts")
            self._features[stage] = with_padding_row(feats)
        return self._features[stage]

    def user_vectors(self, stage: str) -> torch.Tensor:
        return with_padding_row(self._towers.user(self.stage_features(stage)[1:]))

    def all_item_vectors(self) -> torch.Tensor:
        return self._towers.item(self._item_feats)

    def token_usage(self, users: np.ndarray, stage: str) -> list[TokenUsage]:
        prompts = self.stage_prompts(stage)
        return [usage(int(u), prompts[int(u) - 1], len(self._split.history(int(u), stage))) for u in users]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._towers.parameters() if p.requires_grad)
