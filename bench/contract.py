"""The paradigm contract: what a paradigm implements, what it is given, and what it may see.

A paradigm implements ``fit(split, context)``, ``score(users, stage)`` and ``token_usage(users, stage)``
(:class:`Paradigm`). ``fit`` receives a :class:`SplitView`, not the split: the training part, the item catalogue
and the ids, and nothing from which a validation or test target can be read. Early stopping asks the harness
through ``context.validate(score)``, which ranks on the validation stage and returns one number. After ``fit``
the harness opens the view for scoring: then ``history(user, "test")`` (which holds the validation item, a
legitimate test-stage input) becomes readable. Targets are never readable through the view.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import numpy as np
import torch

from bench.config import Config
from bench.errors import BenchError

#: ``score(users, stage) -> [len(users), n_items]`` as a paradigm implements it.
ScoreFn = Callable[[np.ndarray, str], torch.Tensor]


class LeakError(BenchError):
    """A paradigm tried to read validation or test information where it may not."""


@dataclass(frozen=True)
class TokenUsage:
    """What one user's prompt costs: positions in the LLM's context, and how much history it carries."""

    user: int
    hard_tokens: int
    soft_tokens: int
    history_len: int
    history_kept: int


class SplitData(Protocol):
    """The split the harness holds (``bench.split.Split``), as far as :class:`SplitView` forwards it."""

    n_users: int
    n_items: int
    hash: str

    def history(self, user: int, stage: str) -> np.ndarray: ...


class EncoderView(Protocol):
    """The pretrained ID encoder a paradigm receives as ``context.encoder`` (``bench.encoders.Encoder``)."""

    model: torch.nn.Module
    max_seq_len: int
    key: str

    @property
    def item_embeddings(self) -> torch.Tensor:
        """[n_items, d] item vectors (row 0 = padding)."""

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """[len(histories), n_items] the encoder's own scores of every item after each history."""

    def user_representations(self, histories: Sequence[np.ndarray], batch_size: int = 4096) -> torch.Tensor:
        """[len(histories), d] user vectors."""

    def stage_representations(self, split: Any, stage: str) -> torch.Tensor:
        """[n_users, d] user vectors before ``stage`` (row 0 = padding), shared by every paradigm."""


class BackboneView(Protocol):
    """The frozen transformers model behind ``context.llm`` (``bench.llm.Backbone``): what paradigms use of it."""

    name: str
    fingerprint: str
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    width: int
    n_layers: int
    is_decoder: bool

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the backbone's tokenizer."""


class TextFeatures(Protocol):
    """A cache of pooled backbone features of texts (``bench.features.FeatureStore``)."""

    def encode(self, texts: Sequence[str], progress=None, desc: str = "encode") -> torch.Tensor:
        """[len(texts), width] float32 features."""


class LLMView(Protocol):
    """What LLM paradigms receive as ``context.llm`` (``bench.features.FrozenLLM``)."""

    backbone: BackboneView
    prompts: TextFeatures
    items: TextFeatures
    token_budget: int


def lacks_decoder(cls: type, backbone) -> bool:
    """True when paradigm class ``cls`` needs a decoder backbone (``needs_decoder``) and ``backbone`` is not one."""
    return bool(getattr(cls, "needs_decoder", False)) and not backbone.is_decoder


def _no_validation(score: ScoreFn) -> float:
    raise BenchError("context.validate is not set: build the context through bench.evaluation.fit_paradigm")


@dataclass(frozen=True)
class Context:
    """Everything a paradigm gets besides the split. ``options`` is its own resolved config section;
    ``validate(score)`` is the harness's validation NDCG@10 of a scorer (the early-stopping signal);
    ``checkpoint`` is the file where a resumable run keeps this job's training state after every epoch (pass it
    to :func:`bench.training.train_bpr`; ``None``: keep none)."""

    config: Config
    options: Mapping[str, Any]
    seed: int
    device: torch.device
    cache_dir: Path | None
    encoder: EncoderView | None = None
    llm: LLMView | None = None
    progress: Callable[..., Any] | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    validate: Callable[[ScoreFn], float] = _no_validation
    checkpoint: Path | None = None


class SplitView:
    """The split as a paradigm sees it: training histories, item catalogue and ids (no targets).

    ``history(user, stage)`` is the stage's input: for ``valid`` the training history; for ``test`` also the
    validation item, readable only once the harness has opened the view for scoring (after ``fit``).
    """

    _SHARED = ("dataset", "user_ids", "item_ids", "titles", "popularity", "stats", "hash", "n_users", "n_items",
               "users", "has_titles", "title", "train_history", "train_lengths")

    def __init__(self, split: SplitData):
        self.__split = split
        self.__scoring = False

    def open_for_scoring(self) -> None:
        """Called by the harness after ``fit``: test-stage histories become readable."""
        self.__scoring = True

    def __getattr__(self, name: str):
        if name in self._SHARED:
            return getattr(self.__split, name)
        if name in ("valid_target", "test_target", "target", "recbole_path", "recbole_name", "train_offsets",
                    "train_items"):
            raise LeakError(f"a paradigm read split.{name}: paradigms see training histories through "
                            "split.train_history(user) and stage inputs through split.history(user, stage); "
                            "targets are never readable (early stopping goes through context.validate(score))")
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def history(self, user: int, stage: str) -> np.ndarray:
        if stage == "test" and not self.__scoring:
            raise LeakError("fit() read split.history(user, 'test'), which holds the validation target: "
                            "build test-stage inputs when score(users, 'test') is first called")
        return self.__split.history(user, stage)


@dataclass(frozen=True)
class Workload:
    """What one (paradigm, seed) job will cost, in units the harness can time on this machine (upper bounds:
    early stopping, shorter prompts and feature caches only make a job cheaper).

    ``prompts``: texts the frozen LLM encodes once (cached features), ``prompt_tokens`` their tokens;
    ``training_samples``: samples per epoch; ``llm_sequences``: other sequence passes through the LLM as
    forward-pass equivalents (a backward pass counts 2), ``llm_tokens`` their tokens; ``rankings``: users ranked
    over every item (validation during training included); ``cached_sequences`` / ``cached_tokens``: LLM passes
    whose results the job keeps for the run's other seeds (a zero-shot paradigm's scores), counted once per run.
    """

    prompts: int = 0
    prompt_tokens: int = 0
    training_samples: int = 0
    llm_sequences: int = 0
    llm_tokens: int = 0
    rankings: int = 0
    cached_sequences: int = 0
    cached_tokens: int = 0

    def __add__(self, other: "Workload") -> "Workload":
        return Workload(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def times(self, seeds: int) -> "Workload":
        """The work of ``seeds`` seeds: features and cached passes count once."""
        return dataclasses.replace(self, training_samples=self.training_samples * seeds,
                                   llm_sequences=self.llm_sequences * seeds, llm_tokens=self.llm_tokens * seeds,
                                   rankings=self.rankings * seeds)


def prompt_budget(config: Config) -> int:
    """Tokens of a user prompt at most (``llm.token_budget``; 512 when it is the backbone's context window)."""
    return config["llm.token_budget"] or 512


def rankings(split: SplitView, config: Config, trained: bool) -> int:
    """Users ranked by one job: both stages, plus one validation per epoch and one before training when the
    job trains with the shared loop (:func:`bench.training.train_bpr`)."""
    users = split.n_users - 1
    return users * (2 + ((config["train.epochs"] + 1) if trained else 0))


class Paradigm:
    """Base class of every paradigm (subclassing is optional; the three methods are the contract).

    Class attributes: ``name`` (registry key), ``version`` (bumped when results can change),
    ``description`` (one line for ``bench list``), ``defaults`` (its config keys under ``paradigms.NAME``),
    ``needs_encoder``/``needs_llm`` (what the runner must provide; ``needs_decoder``: the LLM must be a decoder with
    tied embeddings, else the run skips the paradigm with one line), ``in_all`` (part of ``--paradigms all``),
    ``search_space`` (what ``bench tune`` may change: option names or ``train.KEY`` mapped to ``("float", low,
    high[, "log"])``, ``("int", low, high[, "log"])`` or ``("choice", [values])``).
    After ``fit``, ``info`` holds what the run's manifest records about training (``None``: nothing).

    Optional: ``score_candidates(users, stage, items) -> list[Tensor]`` for paradigms that score short candidate
    lists themselves (LLM likelihood): ``items`` holds one sorted array of item ids per user (the target and the
    sampled protocols' negatives, in no telling order), the result one float32 score per item. The evaluator
    then uses it for the sampled protocols and ``score`` only for full ranking.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    needs_encoder: ClassVar[bool] = False
    needs_llm: ClassVar[bool] = False
    needs_decoder: ClassVar[bool] = False
    in_all: ClassVar[bool] = True
    search_space: ClassVar[Mapping[str, tuple]] = {}
    info: dict | None = None

    def fit(self, split: SplitView, context: Context) -> None:
        """Train whatever the paradigm trains on ``split``'s training part."""
        raise NotImplementedError

    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        """Scores ``[len(users), split.n_items]`` (higher is better) of every item for each internal user id.

        ``stage`` is ``"valid"`` or ``"test"``; for ``"test"`` the validation item is part of the history.
        """
        raise NotImplementedError

    def token_usage(self, users: np.ndarray, stage: str) -> list[TokenUsage] | None:
        """Prompt cost per user, or ``None`` for paradigms without an LLM."""
        return None

    def trainable_parameters(self) -> int:
        """Number of parameters ``fit`` trains (0 for fixed scorers)."""
        return 0

    def invalidate(self) -> None:
        """Forget whatever ``score`` caches (user or item vectors): the harness calls it before every validation
        and once after ``fit``, so scores always come from the current parameters. Optional for plugins."""

    @classmethod
    def workload(cls, split: SplitView, config: Config, options: Mapping[str, Any]) -> Workload | None:
        """What one job of this paradigm will cost on ``split`` (for the plan line and ``--dry-run``);
        ``None``: unknown. Called before ``fit``, on the class."""
        return None
