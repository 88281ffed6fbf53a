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
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import Config
from bench.metrics import evaluate_ranks, metrics_from_ranks
from bench.split import Split


class TwoTowerTask(Protocol):
    """What the loop trains: vectors for training samples and for items, plus an optional extra loss."""

    def parameters(self): ...

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        """[b, k] user-side vectors of training samples (indices into the sample list)."""

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """[m, k] item-side vectors of item ids."""


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


@torch.no_grad()
def validation_ndcg(split: Split, score: Callable[[np.ndarray, str], torch.Tensor], chunk_mb: int) -> float:
    """Mean NDCG@10 on the validation stage (full ranking, history masked): the early-stopping signal."""
    users = split.users
    ranks = evaluate_ranks(lambda chunk: score(chunk, "valid"), users, split.valid_target[users],
                           [split.history(int(u), "valid") for u in users], split.n_items, chunk_mb)
    return float(metrics_from_ranks(ranks, ["ndcg"], [10])["ndcg@10"].mean())


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
              desc: str = "train") -> dict:
    """Train ``task`` on samples ``0..len(targets)-1`` with BPR; early-stop on ``validate()`` (higher = better)
    and restore the best parameters. ``extra_loss(items, item_vectors)``, if given, is added to every batch's
    loss (it receives the batch's target items and their vectors). Returns epochs run, best validation score,
    seconds and the per-epoch history."""
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg["train.learning_rate"], weight_decay=cfg["train.weight_decay"])
    target_t = torch.as_tensor(targets, dtype=torch.long)
    batch, n_neg = cfg["train.batch_size"], cfg["train.negatives"]
    best, best_state, bad_epochs, history = -1.0, None, 0, []
    start = time.perf_counter()
    n_batches = (len(targets) + batch - 1) // batch
    bar = progress(total=cfg["train.epochs"] * n_batches, desc=desc, unit="batch", leave=False) if progress else None
    for epoch in range(cfg["train.epochs"]):
        order = torch.randperm(len(targets), generator=generator)
        losses = []
        for begin in range(0, len(order), batch):
            idx = order[begin:begin + batch]
            negatives = torch.randint(1, n_items, (n_neg,), generator=generator)
            user = task.sample_vectors(idx)
            positive = task.item_vectors(target_t[idx])
            loss = bpr_loss(user, positive, task.item_vectors(negatives))
            if extra_loss is not None:
                loss = loss + extra_loss(target_t[idx], positive)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if bar:
                bar.update(1)
        score = validate()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "valid_ndcg@10": score})
        if bar:
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.4f}", valid_ndcg10=f"{score:.4f}")
        if score > best:
            best, best_state, bad_epochs = score, copy.deepcopy(_state(task)), 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg["train.stopping_step"]:
                break
    if bar:
        bar.close()
    if best_state is not None:
        _restore(task, best_state)
    return {"epochs": len(history), "best_valid_ndcg@10": best, "train_seconds": round(time.perf_counter() - start, 2),
            "history": history}


def _state(task) -> list[torch.Tensor]:
    return [p.detach().clone() for p in task.parameters() if p.requires_grad]


def _restore(task, state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, saved in zip([p for p in task.parameters() if p.requires_grad], state):
            param.copy_(saved)
