"""Zero-shot likelihood paradigms: the frozen decoder itself as the recommender (LLMRank/TALLRec-style baselines).

``id-direct-lm`` and ``id-translation-lm`` write the user's prompt exactly as ``id-direct`` and ``id-translation``
do (most recent history first, within the same token budget), followed by a fixed cue ``. Next:``; a candidate's
score is the decoder's length-normalised log-likelihood of `` <item text>`` (the tower version's item text: ``item
115`` or the title) after it (:mod:`bench.likelihood`). Nothing is trained. They score the candidate lists of the
sampled protocols (``eval.protocols: [uni99]``); full ranking scores every item for every user, which the plan
refuses where it would take more than an hour here.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import ClassVar

import numpy as np
import torch

from bench.contract import Paradigm, SplitView, Workload, prompt_budget
from bench.likelihood import continuation_scores, output_embedding
from bench.protocols import parse_protocols
from bench.registry import Context, TokenUsage, register
from bench.tokens import FittedPrompt, usage
from paradigms.id_direct import IDDirect
from paradigms.id_translation import IDTranslation

#: Scores already computed in this process, by (backbone, dtype, paradigm, item tokens, prompt, candidates):
#: the paradigm is deterministic, so a run's other seeds reuse them.
_MEMO: dict[tuple, np.ndarray] = {}


def candidates_per_user(config, n_items: int) -> int:
    """Candidates one user's stage costs at most under ``eval.protocols`` (every item under full ranking)."""
    protocols = parse_protocols(config["eval.protocols"])
    sampled = 1 + sum(p.negatives for p in protocols if not p.is_full)
    return (n_items - 1 if any(p.is_full for p in protocols) else 0) + sampled


class _Likelihood(Paradigm):
    """Base class: ``writer`` is the tower paradigm whose prompts and item texts are reused."""

    writer: ClassVar[type] = IDDirect
    cue: ClassVar[str] = ". Next:"
    version = "1"
    needs_llm = True
    needs_decoder = True
    in_all = False

    @classmethod
    def workload(cls, split: SplitView, config, options) -> Workload:
        """:meth:`scoring_work`, kept for the run's other seeds (nothing trained, so the scores are the same)."""
        sequences, tokens = cls.scoring_work(split, config)
        return Workload(cached_sequences=sequences, cached_tokens=tokens)

    @staticmethod
    def scoring_work(split: SplitView, config) -> tuple[int, int]:
        """(sequences, tokens) of scoring both stages: one prompt pass per user and stage, plus one pass of at most
        ``llm.item_max_tokens`` tokens per candidate (:func:`candidates_per_user`); no ranking over towers."""
        users, candidates = split.n_users - 1, candidates_per_user(config, split.n_items)
        return (2 * users * (1 + candidates),
                2 * users * (prompt_budget(config) + candidates * config["llm.item_max_tokens"]))

    def fit(self, split: SplitView, context: Context) -> None:
        """Nothing to train: checks the data and the backbone (a decoder) and tokenizes every item's text."""
        self.prepare(split, context)
        digest = hashlib.sha256(repr(self._item_tokens).encode()).hexdigest()
        self._memo_key = (context.llm.backbone.fingerprint, str(context.llm.backbone.dtype), self.name, digest)

    def prepare(self, split: SplitView, context: Context) -> None:
        """Checks the data and the backbone (a decoder); tokenizes every item's candidate text (`` <item
        text>``, at most ``llm.item_max_tokens`` tokens)."""
        self._writer = self.writer()
        self._writer.check(split)
        self._split, self._ctx, backbone = split, context, context.llm.backbone
        output_embedding(backbone)
        texts = [" " + self._writer.item_text(split, i) for i in range(1, split.n_items)]
        tokens = backbone.tokenizer(texts, add_special_tokens=False, truncation=True,
                                    max_length=context.config["llm.item_max_tokens"])["input_ids"]
        self._item_tokens = [[]] + [list(t) for t in tokens]
        self._cue_tokens = backbone.count_tokens(self.cue)
        self._prompts: dict[str, list[FittedPrompt]] = {}
        self._memo_key = None

    def prompt_budget(self) -> int:
        """Tokens the prompt may take, the cue included (``llm.token_budget``)."""
        return self._ctx.llm.token_budget

    def write_prompt(self, user: int, history: np.ndarray, budget: int) -> FittedPrompt:
        """The prompt before the cue: the tower version's, within ``budget`` tokens."""
        return self._writer.prompt(self._split, user, history, budget, self._ctx.llm.backbone.count_tokens)

    def cued_prompt(self, user: int, history: np.ndarray) -> FittedPrompt:
        """:meth:`write_prompt` within the budget less the cue's tokens, then the cue."""
        fitted = self.write_prompt(user, history, self.prompt_budget() - self._cue_tokens)
        text = fitted.text + self.cue
        return FittedPrompt(text, fitted.kept, self._ctx.llm.backbone.count_tokens(text))

    def stage_prompts(self, stage: str) -> list[FittedPrompt]:
        """Every real user's ``stage`` prompt (index ``user - 1``), built on first use."""
        if stage not in self._prompts:
            split = self._split
            self._prompts[stage] = [self.cued_prompt(int(u), split.history(int(u), stage)) for u in split.users]
        return self._prompts[stage]

    def scoring_context(self, user: int, stage: str) -> contextlib.AbstractContextManager | None:
        """What wraps the decoder's passes for ``user`` (a trained paradigm's prefixes); None: nothing."""
        return None

    def score_candidates(self, users: np.ndarray, stage: str, items: list[np.ndarray]) -> list[torch.Tensor]:
        """Length-normalised log-likelihood (nats per token) of each candidate's text after each user's prompt
        (kept for the run's other seeds while ``_memo_key`` is set: nothing trained)."""
        prompts, backbone = self.stage_prompts(stage), self._ctx.llm.backbone
        out = []
        for user, shown in zip(users, items):
            text = prompts[int(user) - 1].text
            key = None if self._memo_key is None else (*self._memo_key, text, np.asarray(shown, np.int64).tobytes())
            scores = _MEMO.get(key)
            if scores is None:
                prompt = backbone.tokenizer(text)["input_ids"]
                scores = continuation_scores(backbone, prompt, [self._item_tokens[int(i)] for i in shown],
                                             batch_size=self._ctx.config["llm.batch_size"],
                                             context=self.scoring_context(int(user), stage)).numpy()
                if key is not None:
                    _MEMO[key] = scores
            out.append(torch.from_numpy(scores))
        return out

    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        """Full ranking: every item's likelihood for every user (column 0, the padding id, scores ``-inf``)."""
        every = np.arange(1, self._split.n_items)
        rows = self.score_candidates(users, stage, [every] * len(users))
        padding = torch.full((len(users), 1), float("-inf"))
        return torch.cat([padding, torch.stack(rows)], dim=1)

    def token_usage(self, users: np.ndarray, stage: str) -> list[TokenUsage]:
        prompts = self.stage_prompts(stage)
        return [usage(int(u), prompts[int(u) - 1], len(self._split.history(int(u), stage))) for u in users]


@register("id-direct-lm")
class IDDirectLM(_Likelihood):
    """``id-direct``'s prompt, then ``. Next:``; candidates ``item 115``, scored by the frozen decoder."""

    writer = IDDirect
    description = "ID-Direct zero-shot: the frozen decoder's likelihood of ' item <id>' after the ID prompt."


@register("id-translation-lm")
class IDTranslationLM(_Likelihood):
    """``id-translation``'s prompt, then ``. Next:``; candidates are titles, scored by the frozen decoder."""

    writer = IDTranslation
    description = "ID-Translation zero-shot: the frozen decoder's likelihood of a title after the title prompt."
