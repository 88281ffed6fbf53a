"""Know the cost before paying it: what a run will compute, and how long that takes here.

Before the long stages (encoder training, features, paradigm training, ranking) start, the runner prints one
line: users, items, jobs, prompts to encode, training samples, LLM sequence passes, and an estimate per stage
from a few timed batches on this machine (a backbone forward pass at the prompt budget; ranking users over
every item). ``bench run --dry-run`` prints the line and stops. The counts come from each paradigm's
``workload`` (an upper bound: early stopping and cached features make a run cheaper); a paradigm without one
is named as not estimated. Above :data:`LONG_S` the line suggests a smaller sample, a GPU or more processes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.contract import SplitView, Workload, lacks_decoder
from bench.errors import BenchError
from bench.llm import Backbone
from bench.metrics import chunk_size, rank_chunk

#: Estimated seconds above which the plan line suggests ways to make the run affordable.
LONG_S = 3600.0


def time_llm(backbone: Backbone, tokens: int = 32, batch: int = 8) -> float:
    """Seconds per token through ``backbone`` (forward, no graph): the faster of two timed batches of ``batch``
    random sequences of ``tokens`` tokens, after a warm-up batch."""
    ids = torch.randint(100, max(101, backbone.tokenizer.vocab_size - 1), (batch, tokens), device=backbone.device)
    mask = torch.ones_like(ids)
    best = float("inf")
    with torch.no_grad():
        for attempt in range(3):
            start = time.perf_counter()
            backbone.model(input_ids=ids, attention_mask=mask)
            if ids.is_cuda:
                torch.cuda.synchronize(ids.device)  # kernels run asynchronously: wait for them before timing
            if attempt:
                best = min(best, time.perf_counter() - start)
    return best / (batch * tokens)


def time_ranking(n_items: int, chunk_mb: int, device: torch.device) -> float:
    """Seconds to rank one user's target over ``n_items`` items (the evaluator's inner step), from one block."""
    users = min(chunk_size(n_items, chunk_mb), 256)
    scores = torch.rand(users, n_items, device=device)
    targets = np.random.default_rng(0).integers(1, max(2, n_items), users)
    start = time.perf_counter()
    rank_chunk(scores, targets, None)
    return (time.perf_counter() - start) / users


@dataclass
class Estimate:
    """The work of a run and its estimated seconds per stage (for ``processes`` processes on ``device``)."""

    users: int
    items: int
    jobs: int
    device: str
    processes: int
    work: Workload = field(default_factory=Workload)
    seconds: dict[str, float] = field(default_factory=dict)
    encoder: str = ""
    unknown: list[str] = field(default_factory=list)
    timed: str = ""
    finished: int = 0

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def line(self) -> str:
        """The one-line plan (work, then the estimate per stage, then a suggestion when it is long)."""
        w = self.work
        stages = ", ".join(f"{name} {duration(s)}" for name, s in self.seconds.items())
        jobs = f"{self.jobs} job{'s' if self.jobs != 1 else ''}"
        jobs += f" to go ({self.finished} finished)" if self.finished else ""
        bound = " at most (early stopping usually ends training sooner)" if w.training_samples else ""
        text = (f"plan: {self.users:,} users x {self.items:,} items, {jobs}; {w.prompts:,} prompts to "
                f"encode, {w.training_samples:,} training samples, {w.llm_sequences + w.cached_sequences:,} LLM sequence passes, "
                f"{w.rankings:,} user rankings; encoder {self.encoder}; estimate on {self.processes} x "
                f"{self.device}: {stages}, total ~{duration(self.total)}{bound} ({self.timed})")
        if self.unknown:
            text += f"; not estimated: {', '.join(self.unknown)}"
        if self.total > LONG_S:
            text += f" -- long: {self.suggestion()}"
        return text

    def suggestion(self) -> str:
        """Ways to bring the run under :data:`LONG_S`."""
        users = max(100, int(float(f"{self.users * LONG_S / self.total:.1g}")))
        options = [f"--set data.max_users={users} (about {duration(self.total * users / self.users)})"]
        if self.device == "cpu":
            options.append("a GPU (--device cuda)")
        options.append("more processes (accelerate launch --multi_gpu --num_processes N -m bench run ...)")
        return ", or ".join(options)


def duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3.5 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _refuse_unaffordable_full_ranking(arm, split, seconds_per_token: float) -> None:
    """A paradigm that scores candidates by LLM likelihood (``score_candidates``) ranks every item for every user
    under ``full``: refused with the protocol to use when that alone would take more than :data:`LONG_S` here
    (candidate texts counted at ``llm.item_max_tokens``; its scores are reused across seeds)."""
    cfg = arm.config
    if not hasattr(arm.cls, "score_candidates") or "full" not in cfg["eval.protocols"]:
        return
    users, items = split.n_users - 1, split.n_items - 1
    cost = 2 * users * items * cfg["llm.item_max_tokens"] * seconds_per_token
    if cost > LONG_S:
        raise BenchError(f"{arm.label} scores candidates by LLM likelihood: full ranking of {items:,} items for "
                         f"{users:,} users would take ~{duration(cost)} here; use a sampled protocol: "
                         "--set eval.protocols=[uni99] (run it apart from paradigms that need full)")


def estimate(run_arms: list, seeds: int, split, llms: dict, encoder_cached: bool | None, device: torch.device,
             processes: int, to_go: dict[str, int] | None = None) -> Estimate:
    """The :class:`Estimate` of ``run_arms`` x ``seeds`` seeds on ``split``.

    ``llms`` maps each arm label needing an LLM to its :class:`bench.features.FrozenLLM`; ``encoder_cached`` is
    ``None`` when no arm needs the encoder; ``to_go`` (a resumed run) maps arm labels to the number of their
    seeds still to compute (absent: all ``seeds``), so finished jobs are not estimated again.
    """
    view = SplitView(split)
    to_go = {arm.label: seeds for arm in run_arms} | (to_go or {})
    result = Estimate(users=split.n_users - 1, items=split.n_items - 1, jobs=sum(to_go.values()),
                      finished=len(run_arms) * seeds - sum(to_go.values()), device=device.type, processes=processes,
                      encoder="not needed" if encoder_cached is None else "cached" if encoder_cached
                      else "to train (not timed)")
    per_rank = time_ranking(split.n_items, run_arms[0].config["eval.chunk_mb"], device) if run_arms else 0.0
    per_token: dict[int, float] = {}
    features = passes = ranking = 0.0
    total = Workload()
    for arm in run_arms:
        if not to_go[arm.label] or arm.label in llms and lacks_decoder(arm.cls, llms[arm.label].backbone):
            continue  # finished, or the run skips it (bench.runner)
        work = arm.cls.workload(view, arm.config, arm.options)
        if work is None:
            result.unknown.append(arm.label)
            continue
        work = work.times(to_go[arm.label])
        seconds = 0.0
        if arm.label in llms:
            backbone = llms[arm.label].backbone
            if id(backbone) not in per_token:
                per_token[id(backbone)] = time_llm(backbone)
            seconds = per_token[id(backbone)]
        if arm.label in llms:
            _refuse_unaffordable_full_ranking(arm, split, seconds)
        features += work.prompt_tokens * seconds
        passes += (work.llm_tokens + work.cached_tokens) * seconds
        ranking += work.rankings * per_rank
        total = total + work
    result.work = total
    result.seconds = {"features": features / processes, "LLM passes": passes / processes,
                      "ranking": ranking / processes}
    timed = [f"{1e6 * s:.0f} us per LLM token" for s in dict.fromkeys(per_token.values())]
    result.timed = "timed here: " + ", ".join(timed + [f"{1000 * per_rank:.2f} ms to rank a user"])
    return result
