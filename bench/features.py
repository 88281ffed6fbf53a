"""Disk cache of pooled backbone features, keyed by (backbone, pooling, max tokens, text).

Features live in shards (one per batch of newly encoded texts), each a verified :class:`CacheEntry`; a
lookup reads all shards of the backbone once, encodes only the texts not found, and writes those as a new
shard. A second run over the same texts makes no backbone forward pass.

In a distributed run each rank encodes a contiguous share of the missing texts, every rank receives all of
them, and rank 0 writes the shard. Keys depend on the texts only, never on rank or world size, so a cache
built by one process serves N and the other way round.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bench.cache import CacheEntry
from bench.config import stable_hash
from bench.distributed import world
from bench.llm import Backbone

FEATURES_VERSION = "1"


def text_digest(text: str) -> str:
    """Hex sha256 of a text's UTF-8 bytes (first 32 digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class FeatureStore:
    """Pooled features of texts for one backbone configuration, cached under ``cache_root/features``."""

    def __init__(self, backbone: Backbone, cache_root: Path, max_tokens: int, batch_size: int = 32):
        self.backbone, self.max_tokens, self.batch_size = backbone, max_tokens, batch_size
        self.key = stable_hash({"backbone": backbone.fingerprint, "pooling": backbone.pooling,
                                "max_tokens": max_tokens, "dtype": str(backbone.dtype)},
                               16)
        self.root = Path(cache_root) / "features" / self.key
        self._known: dict[str, torch.Tensor] | None = None

    def _load(self) -> dict[str, torch.Tensor]:
        if self._known is None:
            self._known = {}
            for folder in sorted(self.root.glob("shard-*")) if self.root.is_dir() else []:
                entry = CacheEntry(self.root.parent, self.key, folder.name, FEATURES_VERSION)
                if entry.read() is None:
                    continue
                data = np.load(folder / "features.npz")
                vectors = torch.from_numpy(data["vectors"])
                self._known.update(zip(data["digests"].tolist(), vectors))
        return self._known

    def encode(self, texts: Sequence[str], progress=None, desc: str = "encode") -> torch.Tensor:
        """[len(texts), width] float32 features; only texts missing from the cache go through the backbone."""
        known = self._load()
        digests = [text_digest(t) for t in texts]
        missing: dict[str, str] = {}
        for digest, text in zip(digests, texts):
            if digest not in known and digest not in missing:
                missing[digest] = text
        if missing:
            todo = list(missing.values())
            new = world().map_rows(lambda start, stop: self.backbone.encode(
                todo[start:stop], self.max_tokens, self.batch_size, progress, desc), len(todo))
            if world().is_main:
                self._write(list(missing), new)
            world().barrier()  # every rank sees the same shards when it next reads the cache
            known.update(zip(missing, new))
        if not texts:
            return torch.empty(0, self.backbone.width)
        return torch.stack([known[d] for d in digests])

    def _write(self, digests: list[str], vectors: torch.Tensor) -> None:
        name = f"shard-{stable_hash(digests, 16)}"
        entry = CacheEntry(self.root.parent, self.key, name, FEATURES_VERSION)
        with entry.write() as pending:
            np.savez(pending.path / "features.npz", digests=np.array(digests), vectors=vectors.numpy())
            pending.data["count"] = len(digests)


@dataclass(eq=False)
class FrozenLLM:
    """What LLM paradigms receive as ``context.llm``: the frozen backbone, feature caches for prompts (cut at
    ``token_budget`` tokens) and for item texts (cut at ``item_max_tokens``), and the prompt token budget."""

    backbone: Backbone
    prompts: FeatureStore
    items: FeatureStore
    token_budget: int
