"""The one training loop every trainable paradigm shares: BPR over (prefix -> next item) samples.

Same epochs, batch size, learning rate, negatives and early stopping (config section ``train``) for every
paradigm, so differences in results come from the representation, not the budget. Each batch draws
``train.negatives`` items uniformly over real items, shared by all its samples, and every sample also
takes the other samples' targets as in-batch negatives. Sharing keeps the item side of a batch small
(batch + negatives items), which matters for paradigms whose item vectors go through the LLM.
Functions typed ``split: Split`` read only what a paradigm's ``SplitView`` also offers, and take either.
"""
from __future__ import annotations

import copy
import hashlib
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from bench.cache import atomic_file
from bench.config import Config
from bench.distributed import world
from bench.progress import progress_bar
from bench.split import Split


class TrainingTask:
    """What :func:`train_bpr` trains (a paradigm subclasses it beside :class:`bench.contract.Paradigm`).

    ``parameters()`` are the trainable parameters (the loop optimises those with ``requires_grad``);
    ``sample_vectors(samples [b]) -> [b, k]`` are the user-side vectors of training samples (indices into the
    sample list) and ``item_vectors(items [m]) -> [m, k]`` the item-side vectors of item ids. ``micro_batch``
    bounds the sequences one backbone pass of a training step holds (``None``: the whole batch at once).
    """

    micro_batch: int | None = None

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        raise NotImplementedError

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_vectors(self, side: str, ids: torch.Tensor,
                         batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Vectors of ``ids`` during training (``side`` ``"user"``: sample ids, ``"item"``: the batch's target
        items) and each row's auxiliary loss ``[len(ids)]``, or ``None`` for none (the default).

        ``batch`` holds the whole batch's ids of that side (``ids`` is a part of it when the step is micro-batched);
        a row's loss may read the batch only as constants. The loop adds ``sum(row losses) / len(batch)``, so the
        auxiliary loss is a mean over the batch and micro-batching does not change it.
        """
        return (self.sample_vectors if side == "user" else self.item_vectors)(ids), None


def training_samples(split: Split, per_user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``per_user`` most recent (prefix -> next item) pairs of every user's training history.

    Returns ``(users, prefix_lengths, targets)``: sample s predicts ``train_history(users[s])[prefix_lengths[s]]``
    from the first ``prefix_lengths[s]`` items. Only training items are used, never validation or test targets.
    """
    users, lengths, targets = [], [], []
    for user in split.users:
        history = split.train_history(int(user))
        for position in range(len(history) - 1, max(0, len(history) - 1 - per_user), -1):
            users.append(int(user))
            lengths.append(position)
            targets.append(int(history[position]))
    return np.array(users, dtype=np.int64), np.array(lengths, dtype=np.int64), np.array(targets, dtype=np.int64)


def count_training_samples(split: Split, per_user: int) -> int:
    """How many samples :func:`training_samples` yields, without building them."""
    return int(np.minimum(np.maximum(split.train_lengths()[1:] - 1, 0), per_user).sum())


_STOPWORDS = frozenset("a an and the of for with in on to by from at is it its this that or as be".split())


def title_words(title: str | None) -> frozenset[str]:
    """Lower-case word set of a title without stop words (used by denoising)."""
    if not title:
        return frozenset()
    return frozenset(w for w in re.findall(r"[a-z0-9]+", title.lower()) if w not in _STOPWORDS and len(w) > 1)


def denoise(split: Split, users: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Boolean mask of samples to keep: drop those whose target title shares no word with the history titles
    (samples whose target has no title are kept)."""
    words = [title_words(t) for t in split.titles]
    keep = np.ones(len(targets), dtype=bool)
    for s, (user, length, target) in enumerate(zip(users, lengths, targets)):
        if not words[target]:
            continue
        history = split.train_history(int(user))[:length]
        seen = frozenset().union(*(words[i] for i in history))
        keep[s] = bool(words[target] & seen)
    return keep


def diversity_sample(lengths: np.ndarray, popularity: np.ndarray, size: int, rng: np.random.Generator,
                     bins: int = 4) -> np.ndarray:
    """Indices of ``size`` samples drawn as evenly as possible from the buckets of history-length quantile x
    target-popularity quantile (``bins`` x ``bins`` buckets)."""
    def quantile_bin(values: np.ndarray) -> np.ndarray:
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        return np.searchsorted(edges, values, side="right")

    bucket = quantile_bin(lengths) * (bins + 1) + quantile_bin(popularity)
    groups = [rng.permutation(np.flatnonzero(bucket == b)) for b in np.unique(bucket)]
    groups.sort(key=len)
    chosen, remaining = [], size
    for position, group in enumerate(groups):
        share = min(len(group), remaining // (len(groups) - position))
        chosen.append(group[:share])
        remaining -= share
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def select_samples(split: Split, opts: dict, seed: int, users: np.ndarray, lengths: np.ndarray,
                   targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training samples an RA-Rec paradigm trains on: denoised (``opts['denoise']``), then
    ``opts['train_fraction']`` of them, drawn by diversity sampling (``opts['diversity']``) or uniformly."""
    keep = denoise(split, users, lengths, targets) if opts["denoise"] else np.ones(len(targets), dtype=bool)
    users, lengths, targets = users[keep], lengths[keep], targets[keep]
    size = max(1, int(round(opts["train_fraction"] * len(targets))))
    if size < len(targets):
        rng = np.random.default_rng(seed)
        index = diversity_sample(lengths, split.popularity[targets], size, rng) if opts["diversity"] \
            else np.sort(rng.choice(len(targets), size, replace=False))
        users, lengths, targets = users[index], lengths[index], targets[index]
    return users, lengths, targets


def bpr_loss(user: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Mean BPR loss. ``user``/``positive``: [b, k]; ``negatives``: [n, k] sampled negatives shared by the
    batch; the other rows' positives act as in-batch negatives."""
    pos = (user * positive).sum(-1, keepdim=True)                       # [b, 1]
    sampled = user @ negatives.T                                        # [b, n]
    in_batch = user @ positive.T                                        # [b, b]
    off_diagonal = ~torch.eye(len(user), dtype=torch.bool, device=user.device)
    diffs = torch.cat([pos - sampled, (pos - in_batch)[off_diagonal].view(len(user), -1)], dim=1)
    return -F.logsigmoid(diffs).mean()


def train_bpr(task: TrainingTask, targets: np.ndarray, n_items: int, cfg: Config, generator: torch.Generator,
              validate: Callable[[], float], progress=None, desc: str = "train", learning_rate: float | None = None,
              warmup_steps: int = 0, checkpoint: Path | None = None) -> dict:
    """Train ``task`` on samples ``0..len(targets)-1`` with BPR; early-stop on ``validate()`` (higher = better)
    and restore the best parameters. In a distributed run every rank draws the same batches and the rows of
    each batch are shared out over the ranks (:func:`_chunked_step`): the global batch is ``train.batch_size``.

    The starting point is validated first (epoch 0), so when no epoch beats it the initial parameters are kept.
    The batch loss is BPR plus the task's auxiliary row losses (:meth:`TrainingTask.training_vectors`); a task
    whose ``micro_batch`` is smaller than the batch runs in micro-batches with the same gradients.
    ``learning_rate`` overrides ``train.learning_rate`` (a paradigm option); the rate rises linearly over the
    first ``warmup_steps`` optimiser steps. With ``checkpoint`` (a file; a resumable run's working folder gives
    one per job) the loop's whole state is saved after every epoch and a later call with the same file and the
    same training continues after the last saved epoch, to the same result as a run never stopped
    (:class:`_Checkpoint`). Returns the training samples (per epoch), epochs trained, the best epoch and its
    validation score, seconds and the per-epoch history.
    """
    if not isinstance(task, TrainingTask):
        raise TypeError(f"train_bpr trains a bench.training.TrainingTask, got {type(task).__name__}")
    params = [p for p in task.parameters() if p.requires_grad]
    lr = cfg["train.learning_rate"] if learning_rate is None else learning_rate
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=cfg["train.weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    target_t = torch.as_tensor(targets, dtype=torch.long)
    saved = _Checkpoint(checkpoint, desc, targets, n_items, cfg, lr, warmup_steps, params)
    loop = saved.load(task, optimizer, schedule, generator)
    start = time.perf_counter() - (loop["seconds"] if loop else 0.0)
    n_batches = -(-len(targets) // cfg["train.batch_size"])
    with progress_bar(progress, total=cfg["train.epochs"] * n_batches, desc=desc, unit="batch", leave=False,
                      initial=(len(loop["history"]) - 1) * n_batches if loop else 0) as bar:
        if loop is None:
            bar.set_postfix(now="validating the start")  # minutes for an LLM paradigm on a large catalogue
            best = validate()
            loop = {"best": best, "best_state": copy.deepcopy(_state(task)), "best_epoch": 0, "bad_epochs": 0,
                    "history": [{"epoch": 0, "loss": None, "valid_ndcg@10": best}], "stopped": False}
            bar.set_postfix(epoch=0, valid_ndcg10=f"{best:.4f}")
        history = loop["history"]
        for epoch in range(len(history), cfg["train.epochs"] + 1):
            if loop["stopped"]:
                break
            loss = _epoch(task, target_t, n_items, cfg, generator, (optimizer, schedule), bar)
            bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", now="validating")
            score = validate()
            history.append({"epoch": epoch, "loss": loss, "valid_ndcg@10": score})
            bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", valid_ndcg10=f"{score:.4f}")
            if score > loop["best"]:
                loop.update(best=score, best_state=copy.deepcopy(_state(task)), best_epoch=epoch, bad_epochs=0)
            else:
                loop["bad_epochs"] += 1
                loop["stopped"] = loop["bad_epochs"] >= cfg["train.stopping_step"]
            saved.save(loop, task, optimizer, schedule, generator, time.perf_counter() - start)
    _restore(task, loop["best_state"])
    return {"training_samples": len(targets), "epochs": len(history) - 1, "best_epoch": loop["best_epoch"],
            "best_valid_ndcg@10": loop["best"], "train_seconds": round(time.perf_counter() - start, 2),
            "history": history}


class _Checkpoint:
    """The training loop's state after an epoch, in one file: the task's trainable parameters and the best ones
    so far, the optimiser and schedule, the batch generator and every global RNG (python, numpy, torch), the
    history, patience count and seconds spent. It is used only by the same training: a key over the loop's
    description, samples, catalogue size, config hash, learning rate, warm-up and parameter shapes must match;
    another key or an unreadable file is reported on stderr and training starts again. Written atomically
    (:func:`bench.cache.atomic_file`), so an interruption leaves the previous epoch's state. Distributed runs keep
    none: every rank would have to read it back at the same point."""

    def __init__(self, path: Path | None, desc: str, targets: np.ndarray, n_items: int, cfg: Config, lr: float,
                 warmup_steps: int, params: list[torch.nn.Parameter]):
        self.path = None if world().distributed else path
        key = hashlib.sha256(np.ascontiguousarray(targets, dtype=np.int64).tobytes())
        key.update(repr([desc, n_items, cfg.hash, lr, warmup_steps, [tuple(p.shape) for p in params]]).encode())
        self.key = key.hexdigest()[:16]
        self.desc = desc

    def load(self, task, optimizer, schedule, generator: torch.Generator) -> dict | None:
        """Restore a saved state into the objects given and return the loop's bookkeeping, or ``None``."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            data = torch.load(self.path, weights_only=True)
            if data["key"] != self.key:
                raise ValueError("it was saved by another training (samples, config or parameters differ)")
            _restore(task, data["state"])
            optimizer.load_state_dict(data["optimizer"])
            schedule.load_state_dict(data["schedule"])
            generator.set_state(data["generator"])
            torch.set_rng_state(data["torch_rng"])
            np.random.set_state(("MT19937", data["numpy_rng"].numpy().astype(np.uint32), *data["numpy_rng_rest"]))
            random.setstate((data["python_rng"][0], tuple(data["python_rng"][1]), data["python_rng"][2]))
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means: train from the start
            print(f"warning: {self.desc}: ignoring the checkpoint {self.path} ({type(exc).__name__}: {exc}); "
                  "training from the start", file=sys.stderr)
            return None
        print(f"{self.desc}: continuing after epoch {len(data['loop']['history']) - 1} from {self.path.name}",
              file=sys.stderr)
        return {**data["loop"], "best_state": data["best_state"], "seconds": data["seconds"]}

    def save(self, loop: dict, task, optimizer, schedule, generator: torch.Generator, seconds: float) -> None:
        """Write the state after an epoch (nothing without a path)."""
        if self.path is None:
            return
        numpy_rng = np.random.get_state()
        python_rng = random.getstate()
        data = {"key": self.key, "state": _state(task), "best_state": loop["best_state"],
                "loop": {k: v for k, v in loop.items() if k not in ("best_state", "seconds")},
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": torch.from_numpy(numpy_rng[1].astype(np.int64)), "numpy_rng_rest": list(numpy_rng[2:]),
                "python_rng": [python_rng[0], list(python_rng[1]), python_rng[2]], "seconds": seconds}
        with atomic_file(self.path) as handle:
            torch.save(data, handle)


def _epoch(task: TrainingTask, targets: torch.Tensor, n_items: int, cfg: Config, generator: torch.Generator,
           optim: tuple, bar) -> float:
    """One pass over the samples in a seeded random order, ``train.negatives`` fresh uniform negatives per batch;
    returns the mean batch loss."""
    optimizer, schedule = optim
    batch = cfg["train.batch_size"]
    order = torch.randperm(len(targets), generator=generator)
    losses = []
    for begin in range(0, len(order), batch):
        idx = order[begin:begin + batch]
        negatives = torch.randint(1, n_items, (cfg["train.negatives"],), generator=generator)
        optimizer.zero_grad()
        losses.append(_step(task, idx, targets[idx], negatives))
        optimizer.step()
        schedule.step()
        bar.update(1)
    return float(np.mean(losses))


def _step(task: TrainingTask, samples: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """Gradients of one batch's loss on the task's parameters; returns the loss value."""
    step = task.micro_batch
    if world().distributed or (step and max(len(samples), len(positives) + len(negatives)) > step):
        return _chunked_step(task, samples, positives, negatives, step)
    user, user_rows = task.training_vectors("user", samples, samples)
    positive, item_rows = task.training_vectors("item", positives, positives)
    loss = bpr_loss(user, positive, task.item_vectors(negatives))
    for rows in (user_rows, item_rows):
        if rows is not None:
            loss = loss + rows.mean()
    loss.backward()
    return loss.item()


def _chunked_step(task: TrainingTask, samples: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                  step: int | None) -> float:
    """The same gradients as one whole-batch pass, with at most ``step`` sequences in memory at a time, and with
    the rows shared out over the ranks of a distributed run.

    Pass 1 computes this rank's rows of every vector without a graph and gathers all rows on every rank; the
    whole batch's BPR loss gives the gradient with respect to each vector; pass 2 recomputes this rank's rows,
    ``step`` at a time, with a graph and back-propagates that gradient plus the rows' own auxiliary losses; the
    parameter gradients are then summed over ranks. One process: the one-pass gradient at the cost of one extra
    forward pass; N processes: the same gradient up to float summation order, each rank doing 1/N of the rows.
    """
    ranks = world()
    parts = [("user", samples, True), ("item", positives, True), ("item", negatives, False)]
    plain = {"user": task.sample_vectors, "item": task.item_vectors}
    shares = [ranks.shard(len(ids)) for _, ids, _ in parts]
    with torch.no_grad():
        cached = [ranks.gather_rows(_rows(plain[side], ids[share], step)) for (side, ids, _), share in zip(parts, shares)]
    leaves = [c.detach().requires_grad_() for c in cached]
    loss = bpr_loss(*leaves)
    loss.backward()
    own_rows = 0.0
    for (side, ids, with_aux), share, leaf in zip(parts, shares, leaves):
        width = step or max(1, share.stop - share.start)
        for i in range(share.start, share.stop, width):
            j = min(i + width, share.stop)
            vectors, rows = task.training_vectors(side, ids[i:j], ids) if with_aux else (plain[side](ids[i:j]), None)
            surrogate = (vectors * leaf.grad[i:j]).sum()
            if rows is not None:
                row_loss = rows.sum() / len(ids)
                surrogate, own_rows = surrogate + row_loss, own_rows + row_loss.item()
            surrogate.backward()
    ranks.sum_gradients([p for p in task.parameters() if p.requires_grad])
    return loss.item() + ranks.all_sum(own_rows)


def _rows(fn: Callable, ids: torch.Tensor, step: int | None) -> torch.Tensor | None:
    """``fn`` over ``ids``, ``step`` at a time; ``None`` for no ids (a rank with an empty share)."""
    if len(ids) == 0:
        return None
    step = step or len(ids)
    return torch.cat([fn(ids[i:i + step]) for i in range(0, len(ids), step)])


def _state(task) -> list[torch.Tensor]:
    return [p.detach().clone() for p in task.parameters() if p.requires_grad]


def _restore(task, state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, saved in zip([p for p in task.parameters() if p.requires_grad], state, strict=True):
            param.copy_(saved)
