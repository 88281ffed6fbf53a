"""The shared ID encoder: a RecBole sequential model trained on the split's training part, then frozen.

Trained with RecBole's own trainer (early stopping on validation NDCG@10) and cached on disk under a key
made of the split hash and the encoder config, so a second run trains nothing. Every paradigm of a run
receives the same :class:`Encoder`.

Where the time of training went, and what the harness changes around the unchanged RecBole model class
(``make perf`` measures the training step against RecBole's own path):

* RecBole's ``sine.py`` switches autograd anomaly detection on at import (``bench.compat`` switches it off):
  about half of every step;
* RecBole's transformer layers compute GELU as ``x * 0.5 * (1 + erf(x / sqrt(2)))``, five element-wise passes
  (and their saved intermediates) over the widest activation: :func:`fuse_activations` swaps in PyTorch's fused
  ``gelu`` (the same function, exact erf form);
* ``torch.dropout`` draws one Bernoulli number per element on the CPU, about 40% of an epoch (the attention
  dropout alone covers batch x heads x length^2 elements): :class:`MaskDropout` draws the same kind of mask from
  15 random bits per element, four elements per 64-bit draw, 3-4x faster;
* ``encoder.dtype`` (bfloat16 where the hardware has it) runs the training passes under RecBole's mixed
  precision (``enable_amp``); weights, the optimiser and the frozen encoder stay float32.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from bench.cache import CacheEntry
from bench.compat import recbole_config, recbole_workdir
from bench.config import Config, stable_hash, thaw
from bench.errors import BenchError
from bench.precision import Precision, resolve_dtype
from bench.progress import progress_bar
from bench.split import Split, recbole_settings, split_from_recbole


ENCODER_VERSION = "3"  # 2: fused GELU, encoder.dtype; 3: MaskDropout


@dataclass(eq=False)
class Encoder:
    """A frozen RecBole sequential model and what paradigms need from it.

    ``item_embeddings`` is ``[n_items, d]`` (row 0 is padding); :meth:`score` gives the model's own
    full-ranking scores ``[len(histories), n_items]``.
    """

    model_name: str
    model: torch.nn.Module
    max_seq_len: int
    key: str
    info: dict = field(default_factory=dict)
    _stage_cache: dict = field(default_factory=dict, repr=False)

    @property
    def item_embeddings(self) -> torch.Tensor:
        """[n_items, d] item embedding table of the frozen model (a detached view)."""
        table = getattr(self.model, "item_embedding", None)
        if table is None:
            raise BenchError(f"encoder {self.model_name} has no item_embedding table; use SASRec or GRU4Rec")
        return table.weight.detach()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pack(self, histories: Sequence[np.ndarray]):
        """RecBole ``Interaction`` of the last ``max_seq_len`` items of each history, left-aligned, 0-padded."""
        from recbole.data.interaction import Interaction

        seqs = torch.zeros(len(histories), self.max_seq_len, dtype=torch.long)
        lengths = torch.zeros(len(histories), dtype=torch.long)
        for row, history in enumerate(histories):
            recent = np.asarray(history[-self.max_seq_len:], dtype=np.int64)
            seqs[row, :len(recent)] = torch.from_numpy(recent)
            lengths[row] = len(recent)
        if (lengths == 0).any():
            raise BenchError("the encoder cannot score a user with an empty history")
        fields = {self.model.ITEM_SEQ: seqs, self.model.ITEM_SEQ_LEN: lengths}
        return Interaction(fields).to(self.device)

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """[len(histories), n_items] float scores of every item after each history."""
        return self.model.full_sort_predict(self.pack(histories))

    @torch.no_grad()
    def user_representations(self, histories: Sequence[np.ndarray], batch_size: int = 4096) -> torch.Tensor:
        """[len(histories), d] the model's representation of each history (on the encoder's device).

        For SASRec this is the last real position's hidden state (the vector its scores are inner products
        with); it reads the last ``max_seq_len`` items of each history.
        """
        parts = []
        for start in range(0, len(histories), batch_size):
            batch = self.pack(histories[start:start + batch_size])
            parts.append(self.model.forward(batch[self.model.ITEM_SEQ], batch[self.model.ITEM_SEQ_LEN]))
        return torch.cat(parts) if parts else torch.empty(0, self.item_embeddings.shape[1], device=self.device)

    def stage_representations(self, split: Split, stage: str) -> torch.Tensor:
        """[n_users, d] user representations before ``stage`` (row 0 = padding, zeros), computed once per
        (split, stage) and shared by every paradigm that asks. ``split``: the split or a paradigm's view of it
        (anything with ``hash``, ``users`` and ``history(user, stage)``)."""
        key = (split.hash, stage)
        if key not in self._stage_cache:
            users = split.users
            reps = self.user_representations([split.history(int(u), stage) for u in users])
            self._stage_cache[key] = torch.cat([torch.zeros(1, reps.shape[1], device=reps.device), reps])
        return self._stage_cache[key]


class _ItemCount:
    """The one thing RecBole's sequential models read from a dataset at construction: id counts."""

    def __init__(self, n_users: int, n_items: int):
        self._counts = {"user_id": n_users, "item_id": n_items}

    def num(self, field_name: str) -> int:
        if field_name not in self._counts:
            raise BenchError(f"this encoder needs dataset feature '{field_name}'; bench supports ID-only models "
                             "such as SASRec and GRU4Rec")
        return self._counts[field_name]


class _CountingLoader:
    """A RecBole train loader that reports each batch (for a progress bar); everything else is delegated."""

    def __init__(self, loader, on_batch):
        self._loader, self._on_batch = loader, on_batch

    def __iter__(self):
        for batch in self._loader:
            yield batch
            if self._on_batch:
                self._on_batch(1)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def encoder_precision(cfg: Config, device: str) -> Precision:
    """The precision of the encoder's training passes (``encoder.dtype``; see :mod:`bench.precision`)."""
    if "enable_amp" in cfg["encoder.params"]:
        raise BenchError("config key 'encoder.params.enable_amp': set the training precision with "
                         "encoder.dtype (auto, float32 or bfloat16) instead")
    return resolve_dtype(cfg["encoder.dtype"], torch.device(device), "encoder.dtype", ("float32", "bfloat16"))


def fuse_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Swap RecBole's element-wise GELU (``FeedForward.gelu``) for PyTorch's fused exact GELU, in place."""
    for module in model.modules():
        act = getattr(module, "intermediate_act_fn", None)
        if getattr(act, "__func__", None) is getattr(type(module), "gelu", object()):
            module.intermediate_act_fn = torch.nn.functional.gelu
    return model


class MaskDropout(torch.nn.Module):
    """Inverted dropout with a cheaper mask than ``torch.dropout``'s: each element keeps with probability
    ``1 - p`` rounded to a multiple of 2^-15, decided by 15 bits of a 64-bit draw from torch's default generator
    (four elements per draw, so RecBole's ``init_seed`` still fixes every mask); kept elements are scaled by the
    inverse of that probability, so the expectation is unchanged. The identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self._keep = p, round((1 - p) * 32768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        keep = (bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF) < self._keep
        return x * (keep.to(x.dtype) * (32768 / self._keep))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def speed_up(model: torch.nn.Module) -> torch.nn.Module:
    """The harness's training-time swaps in a RecBole model, in place: fused GELU (:func:`fuse_activations`) and
    :class:`MaskDropout` for every ``nn.Dropout``. The model's parameters and class are unchanged."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is torch.nn.Dropout:
                setattr(module, name, MaskDropout(child.p))
    return fuse_activations(model)


@contextlib.contextmanager
def _autocast_dtype(device: torch.device, dtype: torch.dtype):
    """Make ``torch.autocast`` on ``device`` (RecBole's ``enable_amp``) use ``dtype``; restored afterwards."""
    previous = torch.get_autocast_dtype(device.type)
    torch.set_autocast_dtype(device.type, dtype)
    try:
        yield
    finally:
        torch.set_autocast_dtype(device.type, previous)


def _config_dict(split: Split, enc: dict, workdir: Path) -> dict[str, Any]:
    return {**recbole_settings(enc["max_seq_len"]), **enc["params"],
            "data_path": split.recbole_path, "epochs": enc["epochs"], "learning_rate": enc["learning_rate"],
            "train_batch_size": enc["train_batch_size"], "eval_batch_size": 4096,
            "stopping_step": enc["stopping_step"], "seed": enc["seed"], "reproducibility": True,
            "checkpoint_dir": str(workdir / "checkpoints"), "metrics": ["Hit", "NDCG"], "topk": [10],
            "valid_metric": "NDCG@10", "eval_step": 1}


def recbole_data(split: Split, cfg: Config, device: str, workdir: Path):
    """RecBole config and (train, valid, test) data loaders rebuilt from the split's prepared files.

    Checks that RecBole rebuilds exactly the cached split (same hash); anything else is a stale cache.
    """
    from recbole.data import create_dataset, data_preparation

    enc = thaw(cfg["encoder"])
    rb_config = recbole_config(enc["model"], split.recbole_name, _config_dict(split, enc, workdir), device)
    dataset = create_dataset(rb_config)
    loaders = data_preparation(rb_config, dataset)
    titles = {str(split.item_ids[i]): t for i, t in enumerate(split.titles) if i}
    rebuilt = split_from_recbole(split.dataset, dataset, [ld.dataset for ld in loaders], titles,
                                 split.recbole_path, split.recbole_name)
    if rebuilt.hash != split.hash:
        raise BenchError(f"RecBole rebuilt a different split from {split.recbole_path} (hash {rebuilt.hash}, "
                         f"expected {split.hash}); delete that folder and rerun")
    return rb_config, loaders


def encoder_key(split: Split, cfg: Config, device: str = "cpu") -> str:
    """Cache key of the encoder: model name + hash of (split hash, encoder config, the training dtype that
    ``encoder.dtype`` resolves to on ``device``, versions), so ``auto`` on a machine without bfloat16 never reads
    an encoder trained in bfloat16."""
    from recbole import __version__ as recbole_version

    parts = {"split": split.hash, "encoder": thaw(cfg["encoder"]), "version": ENCODER_VERSION,
             "recbole": recbole_version, "dtype": str(encoder_precision(cfg, device).dtype)}
    return f"{cfg['encoder.model']}-{stable_hash(parts, 16)}"


def load_or_train(split: Split, cfg: Config, cache_root: Path, device: str = "cpu", progress=None,
                  pinned: Path | None = None, train: bool = True) -> Encoder | None:
    """The frozen encoder for (split, encoder config): from the cache, or trained now and cached.

    ``pinned``: a folder that keeps a verified copy of the encoder a run started with (a run's working folder).
    When it holds one, that copy is loaded whatever the cache holds, so a run resumed on another machine (or
    after the cache was cleared) finishes with the encoder its first jobs used instead of a retrained one;
    otherwise the encoder is copied there. ``train=False`` (reading a run, not running it): ``None`` instead of
    training one, and nothing is copied to ``pinned``.
    """
    kept = kept_entry(pinned)
    if kept is not None:
        problem = kept.problem()  # a bad copy is kept, so no later resume silently trains another encoder
        if problem:
            raise BenchError(f"{kept.path}: the run's saved encoder is {problem}; start the run again without "
                             "--resume")
        return _load(split, cfg, kept.path, kept.read(), kept.key, device)
    key = encoder_key(split, cfg, device)
    entry = CacheEntry(cache_root, "encoders", key, ENCODER_VERSION)
    meta = entry.read()
    if meta is None and not train:
        return None
    if meta is None:
        with entry.write() as pending:
            pending.data.update(_train(split, cfg, pending.path, cache_root / "recbole-logs" / key, device,
                                       progress))
        meta = entry.read()
    if pinned is not None and train:
        entry.copy_to(Path(pinned) / "encoders" / key)
    return _load(split, cfg, entry.path, meta, key, device)


def kept_entry(pinned: Path | None) -> CacheEntry | None:
    """The encoder entry a run keeps in ``pinned/encoders/`` (at most one; see :func:`load_or_train`), or None."""
    if pinned is None or not (Path(pinned) / "encoders").is_dir():
        return None
    folder = Path(pinned) / "encoders"
    found = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if len(found) > 1:
        raise BenchError(f"{folder}: holds {len(found)} encoders, a run keeps one; start it again without --resume")
    return CacheEntry(folder.parent, "encoders", found[0].name, ENCODER_VERSION) if found else None


def _train(split: Split, cfg: Config, out: Path, logdir: Path, device: str, progress) -> dict:
    from recbole.utils import get_model, get_trainer, init_seed

    start = time.perf_counter()
    with recbole_workdir(logdir):
        rb_config, (train, valid, _) = recbole_data(split, cfg, device, logdir)
        init_seed(rb_config["seed"], rb_config["reproducibility"])
        try:
            model_class = get_model(cfg["encoder.model"])
        except ValueError:
            raise BenchError(f"config key 'encoder.model': RecBole has no model {cfg['encoder.model']!r}; "
                             "use SASRec or GRU4Rec (or another sequential model)") from None
        model = speed_up(model_class(rb_config, train.dataset).to(rb_config["device"]))
        precision = encoder_precision(cfg, device)
        rb_config["enable_amp"] = precision.dtype != torch.float32
        trainer = get_trainer(rb_config["MODEL_TYPE"], cfg["encoder.model"])(rb_config, model)
        with progress_bar(progress, total=cfg["encoder.epochs"] * len(train), desc=f"train {cfg['encoder.model']}",
                          unit="batch") as bar:
            def on_epoch(epoch: int, valid_score: float) -> None:
                bar.set_postfix(epoch=epoch + 1, valid_ndcg10=f"{valid_score:.4f}")

            loader = _CountingLoader(train, bar.update)
            with _autocast_dtype(rb_config["device"], precision.dtype):
                best, _ = trainer.fit(loader, valid, saved=True, show_progress=False, callback_fn=on_epoch)
        checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    torch.save(checkpoint["state_dict"], out / "model.pt")
    return {"model": cfg["encoder.model"], "best_valid_ndcg@10": float(best), "best_epoch": checkpoint["epoch"],
            "train_seconds": round(time.perf_counter() - start, 2), "n_items": split.n_items,
            "n_users": split.n_users, "dtype": str(precision.dtype), "dtype_reason": precision.reason}


def _load(split: Split, cfg: Config, path: Path, meta: dict, key: str, device: str) -> Encoder:
    from recbole.utils import get_model

    enc = thaw(cfg["encoder"])
    rb_config = recbole_config(enc["model"], split.recbole_name, _config_dict(split, enc, path), device)
    model = speed_up(get_model(enc["model"])(rb_config, _ItemCount(split.n_users, split.n_items)))
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return Encoder(enc["model"], model, enc["max_seq_len"], key, dict(meta))
