"""The shared BPR loop: the starting point is validated first, the best parameters are restored, and
micro-batched steps give the whole batch's gradients."""
import numpy as np
import pytest
import torch

from bench.config import load_config
from bench.training import TrainingTask, _chunked_step, _step, train_bpr


class LinearTask(torch.nn.Module, TrainingTask):
    """Towers of two embedding tables; validation is scripted (a list of scores, one per call). With ``row_aux``
    every training row also carries an auxiliary loss that reads the whole batch (as constants)."""

    def __init__(self, n_samples=40, n_items=30, dim=8, row_aux=False):
        super().__init__()
        torch.manual_seed(0)
        self.users = torch.nn.Embedding(n_samples, dim)
        self.items = torch.nn.Embedding(n_items, dim)
        self.row_aux = row_aux

    def sample_vectors(self, samples):
        return self.users(samples)

    def item_vectors(self, items):
        return self.items(items)

    def training_vectors(self, side, ids, batch):
        vectors, _ = super().training_vectors(side, ids, batch)
        if not self.row_aux:
            return vectors, None
        if side == "item":
            return vectors, 0.5 * vectors.abs().sum(-1)
        whole = self.users(batch)
        return vectors, vectors.pow(2).sum(-1) + (vectors @ whole.detach().T).logsumexp(-1)


def _cfg(epochs=5, stopping=2, batch=16):
    return load_config("default", overrides=[f"train.epochs={epochs}", f"train.stopping_step={stopping}",
                                             f"train.batch_size={batch}"])


def _scripted(scores):
    calls = iter(scores)
    return lambda: next(calls)


def test_initialisation_is_kept_when_no_epoch_beats_it():
    task = LinearTask()
    start = [p.detach().clone() for p in task.parameters()]
    info = train_bpr(task, np.arange(40) % 29 + 1, 30, _cfg(), torch.Generator().manual_seed(0),
                     _scripted([0.5, 0.4, 0.3]))
    assert info["best_epoch"] == 0 and info["epochs"] == 2 and info["best_valid_ndcg@10"] == 0.5
    assert info["history"][0] == {"epoch": 0, "loss": None, "valid_ndcg@10": 0.5}
    assert all(torch.equal(a, b) for a, b in zip(start, task.parameters()))


def test_best_epoch_is_restored_and_patience_stops_training():
    task = LinearTask()
    snapshots = []

    def validate(scores=iter([0.1, 0.2, 0.6, 0.5, 0.4, 0.9])):
        snapshots.append([p.detach().clone() for p in task.parameters()])
        return next(scores)

    info = train_bpr(task, np.arange(40) % 29 + 1, 30, _cfg(epochs=5), torch.Generator().manual_seed(0), validate)
    assert info["epochs"] == 4 and info["best_epoch"] == 2  # epochs 3 and 4 were worse: stopped before epoch 5
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], task.parameters()))
    assert [h["epoch"] for h in info["history"]] == [0, 1, 2, 3, 4]


def test_zero_epochs_only_validates_the_start():
    info = train_bpr(LinearTask(), np.arange(40) % 29 + 1, 30, _cfg(epochs=0), torch.Generator(), lambda: 0.25)
    assert info["epochs"] == 0 and info["best_epoch"] == 0 and len(info["history"]) == 1


@pytest.mark.parametrize("row_aux", [False, True])
def test_micro_batched_step_gives_the_whole_batch_gradient(row_aux):
    task = LinearTask(row_aux=row_aux)
    samples, positives, negatives = torch.arange(16), torch.arange(1, 17) % 29 + 1, torch.tensor([3, 5, 7, 9, 11])
    whole = _step(task, samples, positives, negatives)
    expected = [p.grad.clone() for p in task.parameters()]
    task.zero_grad()
    chunked = _chunked_step(task, samples, positives, negatives, step=5)
    assert chunked == pytest.approx(whole, rel=1e-5)
    for grad, p in zip(expected, task.parameters()):
        assert torch.allclose(grad, p.grad, atol=1e-6)


def test_learning_rate_override_and_warm_up():
    task = LinearTask()
    seen = []
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        train_bpr(task, np.arange(40) % 29 + 1, 30, _cfg(epochs=1), torch.Generator().manual_seed(0),
                  lambda: 0.0, learning_rate=0.04, warmup_steps=3)
    finally:
        torch.optim.Adam.step = original
    assert seen == pytest.approx([0.01, 0.02, 0.03])  # 3 batches of 16 over 40 samples, still warming up


def test_micro_batch_is_read_from_the_task_contract():
    """``micro_batch`` on the task decides whether a step is micro-batched: same loss and gradients either way."""
    task = LinearTask(row_aux=True)
    samples, positives, negatives = torch.arange(16), torch.arange(1, 17) % 29 + 1, torch.tensor([3, 5, 7, 9, 11])
    whole = _step(task, samples, positives, negatives)
    expected = [p.grad.clone() for p in task.parameters()]
    task.zero_grad()
    task.micro_batch = 4
    assert _step(task, samples, positives, negatives) == pytest.approx(whole, rel=1e-5)
    assert all(torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(expected, task.parameters()))


def test_a_task_outside_the_contract_is_refused():
    class Untyped(torch.nn.Module):
        def sample_vectors(self, samples):
            return samples

    with pytest.raises(TypeError, match="TrainingTask"):
        train_bpr(Untyped(), np.arange(4), 5, _cfg(epochs=0), torch.Generator(), lambda: 0.0)


class NoisyTask(LinearTask):
    """A LinearTask whose training vectors draw noise from torch's global RNG (as dropout would)."""

    def training_vectors(self, side, ids, batch):
        vectors, rows = super().training_vectors(side, ids, batch)
        return vectors + 0.05 * torch.randn_like(vectors), rows


def _train(validate, checkpoint, epochs=6):
    """A NoisyTask trained from the same start (batch generator and global RNG seeded alike) for ``epochs``."""
    task, generator = NoisyTask(), torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    info = train_bpr(task, np.arange(40) % 29 + 1, 30, _cfg(epochs=epochs, stopping=2), generator, validate,
                     checkpoint=checkpoint)
    return task, info


def test_an_interrupted_training_continues_from_its_checkpoint_to_the_same_result(tmp_path, capsys):
    """Stopped during epoch 3 and called again with the same checkpoint: epochs 3-6 run from epoch 2's saved
    state (parameters, Adam, generator, global RNG) and end exactly where an uninterrupted training ends."""
    scores = [0.1, 0.2, 0.3, 0.25, 0.35, 0.3, 0.2]  # epochs 0-6: best at 4, patience runs out at 6
    whole_task, whole = _train(_scripted(scores), None)

    def stopped_in_epoch_3(calls=iter(scores[:3])):
        value = next(calls, None)
        if value is None:
            raise KeyboardInterrupt
        return value

    with pytest.raises(KeyboardInterrupt):
        _train(stopped_in_epoch_3, tmp_path / "job.pt")
    assert (tmp_path / "job.pt").is_file() and not list(tmp_path.glob(".*.tmp"))
    task, resumed = _train(_scripted(scores[3:]), tmp_path / "job.pt")  # epoch 0-2 scores are not asked again
    assert "continuing after epoch 2" in capsys.readouterr().err
    drop = lambda info: {k: v for k, v in info.items() if k != "train_seconds"}  # noqa: E731
    assert drop(resumed) == drop(whole) and whole["best_epoch"] == 4 and whole["epochs"] == 6
    assert all(torch.equal(a, b) for a, b in zip(whole_task.parameters(), task.parameters()))
    _, again = _train(lambda: pytest.fail("a finished training validated again"), tmp_path / "job.pt")
    assert drop(again) == drop(whole)  # early stopping had ended it: nothing more is trained


def test_a_checkpoint_of_another_training_is_ignored_with_a_warning(tmp_path, capsys):
    _train(_scripted([0.1, 0.2, 0.3]), tmp_path / "job.pt", epochs=2)
    _, info = _train(_scripted([0.1, 0.2, 0.3, 0.4]), tmp_path / "job.pt", epochs=3)  # another config
    assert "ignoring the checkpoint" in capsys.readouterr().err and info["epochs"] == 3
    (tmp_path / "job.pt").write_bytes(b"not a checkpoint")
    _, info = _train(_scripted([0.1, 0.2, 0.3]), tmp_path / "job.pt", epochs=2)
    assert "ignoring the checkpoint" in capsys.readouterr().err and info["epochs"] == 2
