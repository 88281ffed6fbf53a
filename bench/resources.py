"""The shared resources of a run: device, split, ID encoder and frozen backbones, each loaded once.

In a distributed run rank 0 builds each (split, encoder, converted weights) into the cache first; the other
ranks then load it from there.

Every paradigm of a run (and every arm of a sweep) gets the same split and encoder; a backbone is loaded once
per (backbone, dtype) and shared by every arm that asks for it, whatever their ``llm.token_budget``.
"""
from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.cache import default_cache_root
from bench.config import Config
from bench.distributed import World, world
from bench.encoders import Encoder, encoder_key, kept_entry, load_or_train
from bench.errors import BenchError
from bench.features import FeatureStore, FrozenLLM
from bench.llm import Backbone, load_backbone
from bench.protocols import candidate_lists, candidates_hash, parse_protocols
from bench.split import build_split


class Timings(dict):
    """Wall-clock seconds per named stage, filled by ``with timings("name"): ...``."""

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)


def pick_device(requested: str, world: World | None = None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error. In a distributed run on
    GPUs each process gets its own GPU (the launcher's local rank)."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch sees no GPU here; use --device cpu or auto")
    device = torch.device("cuda" if requested == "auto" and torch.cuda.is_available() else
                          "cpu" if requested == "auto" else requested)
    if device.type == "cuda" and world is not None and world.distributed:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and every CUDA device); return a CPU torch generator seeded the same
    way for the paradigm (its draws, e.g. batch order and negatives, are the same on every device and rank)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def frozen_llm(backbone: Backbone, cfg: Config, cache_root: Path) -> FrozenLLM:
    """``backbone`` with feature caches for ``cfg``'s ``llm`` section; the prompt budget is capped by the
    context window."""
    cap = cfg["llm.token_budget"]
    budget = backbone.context_window if cap is None else min(cap, backbone.context_window)
    batch = cfg["llm.batch_size"]
    return FrozenLLM(backbone, FeatureStore(backbone, cache_root, budget, batch),
                     FeatureStore(backbone, cache_root, cfg["llm.item_max_tokens"], batch), budget)


def load_llm(cfg: Config, device: torch.device, cache_root: Path, progress=None) -> FrozenLLM:
    """Load ``cfg``'s backbone and wrap it with its feature caches (:func:`frozen_llm`)."""
    backbone = load_backbone(cfg["llm.backbone"], device, cfg["llm.dtype"], cache_root, progress)
    return frozen_llm(backbone, cfg, cache_root)


class Resources:
    """The split, candidate lists (``eval.protocols``), encoder and backbones of a run, loaded once and on
    demand."""

    def __init__(self, cfg: Config, device: torch.device, progress: Callable | None, timings: Timings,
                 keep_encoder: Path | None = None):
        """``keep_encoder``: the run's working folder, which keeps a copy of the encoder (see
        :func:`bench.encoders.load_or_train`'s ``pinned``)."""
        self.cfg, self.device, self.progress, self.timings = cfg, device, progress, timings
        self.keep_encoder = keep_encoder
        self.cache_root = default_cache_root(cfg["cache_dir"])
        self.encoder: Encoder | None = None
        self.backbones: dict[tuple[str, str], Backbone] = {}
        self._llms: dict[str, FrozenLLM] = {}
        with timings("split"), world().main_first():  # rank 0 builds the cache entry, the others read it
            self.split = build_split(cfg, self.cache_root, progress)
        world().check_same(self.split.hash, "splits")
        with timings("candidates"):
            self.protocols = parse_protocols(cfg["eval.protocols"])
            self.candidates = candidate_lists(self.split, self.protocols, cfg["eval.candidate_seed"])
            self.candidate_hashes = candidates_hash(self.candidates)
        world().check_same(self.candidate_hashes, "candidate lists")

    def prepare(self, run_arms: list, train: bool = True) -> None:
        """Load what the arms need before the first job: every backbone, and the encoder (``train=False``: only
        one that is kept or cached; else it stays ``None``)."""
        self.llms(run_arms)
        if any(a.cls.needs_encoder for a in run_arms) and self.encoder is None:
            with self.timings("encoder"), world().main_first():
                self.encoder = load_or_train(self.split, self.cfg, self.cache_root, str(self.device), self.progress,
                                             self.keep_encoder, train)
            if self.encoder is not None:
                world().check_same(float(self.encoder.item_embeddings.double().sum()), "encoder weights")

    def llms(self, run_arms: list) -> dict[str, FrozenLLM]:
        """The frozen LLM of every arm that needs one, by arm label (backbones load on first use)."""
        return {arm.label: self.llm_for(arm.config) for arm in run_arms if arm.cls.needs_llm}

    def encoder_cached(self, run_arms: list) -> bool | None:
        """Whether the encoder the arms need is in the cache already (``None``: no arm needs one)."""
        if not any(a.cls.needs_encoder for a in run_arms):
            return None
        key = encoder_key(self.split, self.cfg, str(self.device))
        return (self.encoder is not None or kept_entry(self.keep_encoder) is not None
                or (self.cache_root / "encoders" / key / "meta.json").is_file())

    def llm_for(self, cfg: Config) -> FrozenLLM:
        """The frozen LLM for an arm's config: its backbone loaded once per (backbone, dtype)."""
        key = (cfg["llm.backbone"], cfg["llm.dtype"])
        if key not in self.backbones:
            with self.timings("llm_load"), world().main_first():
                self.backbones[key] = load_backbone(key[0], self.device, key[1], self.cache_root, self.progress)
        section = cfg.section_hash("llm")
        if section not in self._llms:
            self._llms[section] = frozen_llm(self.backbones[key], cfg, self.cache_root)
        return self._llms[section]
