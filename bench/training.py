"""The one training loop every trainable paradigm shares: BPR over (prefix -> next item) samples.

Same epochs, batch size, learning rate, negatives and early stopping (config section ``train``) for every
paradigm, so differences in results come from the representation, not the budget. Each batch draws
``train.negatives`` items uniformly over real items, shared by all its samples, and every sample also
takes the other samples' targets as in-batch negatives. Sharing keeps the item side of a batch small
(batch + negatives items), which matters for paradigms whose item vectors go through the LLM.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Protocol, TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import Config
from bench.distributed import world
from bench.progress import progress_bar
from bench.split import Split

if TYPE_CHECKING:
    from bench.contract import SplitView


class TwoTowerTask(Protocol):
    """What the loop trains: vectors for training samples and for items, plus an optional extra loss."""

    def parameters(self): ...

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        """[b, k] user-side vectors of training samples (indices into the sample list)."""

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """[m, k] item-side vectors of item ids."""


def training_samples(split: "Split | SplitView", per_user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def count_training_samples(split: "Split | SplitView", per_user: int) -> int:
    """How many samples :func:`training_samples` yields, without building them."""
    return int(np.minimum(np.maximum(split.train_lengths()[1:] - 1, 0), per_user).sum())


def bpr_loss(user: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Mean BPR loss. ``user``/``positive``: [b, k]; ``negatives``: [n, k] sampled negatives shared by the
    batch; the other rows' positives act as in-batch negatives."""
    pos = (user * positive).sum(-1, keepdim=True)                       # [b, 1]
    sampled = user @ negatives.T                                        # [b, n]
    in_batch = user @ positive.T                                        # [b, b]
    off_diagonal = ~torch.eye(len(user), dtype=torch.bool, device=user.device)
    diffs = torch.cat([pos - sampled, (pos - in_batch)[off_diagonal].view(len(user), -1)], dim=1)
    return -F.logsigmoid(diffs).mean()


def train_bpr(task, targets: np.ndarray, n_items: int, cfg: Config, generator: torch.Generator,
              validate: Callable[[], float], progress=None, extra_loss: Callable | None = None,
              desc: str = "train", learning_rate: float | None = None, warmup_steps: int = 0) -> dict:
    """Train ``task`` on samples ``0..len(targets)-1`` with BPR; early-stop on ``validate()`` (higher = better)
    and restore the best parameters. In a distributed run every rank draws the same batches and the rows of
    each batch are shared out over the ranks (:func:`_chunked_step`): the global batch is ``train.batch_size``.

    The starting point is validated first (epoch 0), so when no epoch beats it the initial parameters are kept.
    ``extra_loss(items, item_vectors)``, if given, is added to every batch's loss (it receives the batch's target
    items and their vectors). A task with ``micro_batch`` set is run in micro-batches (see :func:`_chunked_step`)
    and may add per-row auxiliary losses (``row_aux = True``: its vector methods then also take ``aux=``, the
    whole batch's ids, and return ``(vectors, row losses)``). ``learning_rate`` overrides ``train.learning_rate``
    (a paradigm option); the rate rises linearly over the first ``warmup_steps`` optimiser steps.
    Returns the training samples (per epoch), epochs trained, the best epoch and its validation score, seconds and
    the per-epoch history.
    """
    params = [p for p in task.parameters() if p.requires_grad]
    lr = cfg["train.learning_rate"] if learning_rate is None else learning_rate
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=cfg["train.weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    target_t = torch.as_tensor(targets, dtype=torch.long)
    start = time.perf_counter()
    best = validate()
    best_state, best_epoch, bad_epochs = copy.deepcopy(_state(task)), 0, 0
    history = [{"epoch": 0, "loss": None, "valid_ndcg@10": best}]
    n_batches = -(-len(targets) // cfg["train.batch_size"])
    with progress_bar(progress, total=cfg["train.epochs"] * n_batches, desc=desc, unit="batch", leave=False) as bar:
        for epoch in range(1, cfg["train.epochs"] + 1):
            loss = _epoch(task, target_t, n_items, cfg, generator, (optimizer, schedule), extra_loss, bar)
            score = validate()
            history.append({"epoch": epoch, "loss": loss, "valid_ndcg@10": score})
            bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", valid_ndcg10=f"{score:.4f}")
            if score > best:
                best, best_state, best_epoch, bad_epochs = score, copy.deepcopy(_state(task)), epoch, 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg["train.stopping_step"]:
                    break
    _restore(task, best_state)
    return {"training_samples": len(targets), "epochs": len(history) - 1, "best_epoch": best_epoch,
            "best_valid_ndcg@10": best, "train_seconds": round(time.perf_counter() - start, 2), "history": history}


def _epoch(task, targets: torch.Tensor, n_items: int, cfg: Config, generator: torch.Generator, optim: tuple,
           extra_loss: Callable | None, bar) -> float:
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
        losses.append(_step(task, idx, targets[idx], negatives, extra_loss))
        optimizer.step()
        schedule.step()
        bar.update(1)
    return float(np.mean(losses))


def _step(task, samples: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
          extra_loss: Callable | None) -> float:
    """Gradients of one batch's loss on the task's parameters; returns the loss value."""
    step = getattr(task, "micro_batch", None)
    if world().distributed or (step and max(len(samples), len(positives) + len(negatives)) > step):
        return _chunked_step(task, samples, positives, negatives, step, extra_loss)
    aux = getattr(task, "row_aux", False)
    user, user_aux = _vectors(task.sample_vectors, samples, samples if aux else None)
    positive, item_aux = _vectors(task.item_vectors, positives, positives if aux else None)
    loss = bpr_loss(user, positive, task.item_vectors(negatives))
    if aux:
        loss = loss + user_aux.mean() + item_aux.mean()
    if extra_loss is not None:
        loss = loss + extra_loss(positives, positive)
    loss.backward()
    return loss.item()


def _vectors(fn: Callable, ids: torch.Tensor, batch: torch.Tensor | None):
    """``fn(ids)``, or with ``batch`` (the whole batch's ids, of which ``ids`` is a part) the pair
    ``(vectors, row losses)`` from ``fn(ids, aux=batch)``."""
    return fn(ids, aux=batch) if batch is not None else (fn(ids), None)


def _chunked_step(task, samples: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                  step: int | None, extra_loss: Callable | None = None) -> float:
    """The same gradients as one whole-batch pass, with at most ``step`` sequences in memory at a time, and with
    the rows shared out over the ranks of a distributed run.

    Pass 1 computes this rank's rows of every vector without a graph and gathers all rows on every rank; the
    whole batch's loss (BPR plus ``extra_loss``, a function of the gathered vectors) gives the gradient with
    respect to each vector; pass 2 recomputes this rank's rows, ``step`` at a time, with a graph and
    back-propagates that gradient (plus the rows' own losses, when the task has ``row_aux``); the parameter
    gradients are then summed over ranks. One process: the one-pass gradient at the cost of one extra forward
    pass; N processes: the same gradient up to float summation order, each rank doing 1/N of the rows.
    """
    ranks = world()
    aux = getattr(task, "row_aux", False)
    parts = [(task.sample_vectors, samples, aux), (task.item_vectors, positives, aux),
             (task.item_vectors, negatives, False)]
    shares = [ranks.shard(len(ids)) for _, ids, _ in parts]
    with torch.no_grad():
        cached = [ranks.gather_rows(_rows(fn, ids[share], step)) for (fn, ids, _), share in zip(parts, shares)]
    leaves = [c.detach().requires_grad_() for c in cached]
    loss = bpr_loss(*leaves)
    if extra_loss is not None:
        loss = loss + extra_loss(positives, leaves[1])
    loss.backward()
    own_rows = 0.0
    for (fn, ids, with_aux), share, leaf in zip(parts, shares, leaves):
        width = step or max(1, share.stop - share.start)
        for i in range(share.start, share.stop, width):
            j = min(i + width, share.stop)
            vectors, rows = _vectors(fn, ids[i:j], ids if with_aux else None)
            surrogate = (vectors * leaf.grad[i:j]).sum()
            if with_aux:
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
