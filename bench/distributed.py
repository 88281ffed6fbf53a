"""The processes of a run: one by default, N under a launcher (``accelerate launch``, ``torchrun``).

A run started by a launcher (``WORLD_SIZE`` > 1 in the environment) joins the launcher's process group through
Hugging Face ``accelerate`` (``PartialState``: gloo on CPU, NCCL on GPUs, one GPU per process). Everything the
harness shares between processes goes through the small :class:`World` surface below, and with one process
every method is the identity, so a single-process run does exactly what it did before distribution existed.

What is split between processes, and how (the callers own the policy, this module the mechanics):

* work over rows (frozen features, RA-Rec's LLM passes, users to rank): each rank takes a contiguous, unpadded
  :meth:`World.shard`, and :meth:`World.gather_rows` concatenates the parts in rank order, so every rank holds
  the same rows in the one-process order;
* training: the same global batch on every rank; each rank computes the vectors of its share of rows and the
  gradient contributions are summed over ranks (:meth:`World.sum_gradients`);
* side effects (caches, the run directory): rank 0 does them, the others wait (:meth:`World.main_first`) or
  receive the outcome (:meth:`World.on_main`, which also carries rank 0's error to every rank).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
from typing import Any, Callable, Iterator, Sequence

import torch

from bench.errors import BenchError

#: Seconds a collective waits for a silent peer before failing (env ``BENCH_DIST_TIMEOUT``); long enough for
#: rank 0 to train an encoder while the others wait, short enough that a hung peer cannot block a run forever.
DEFAULT_TIMEOUT_S = 6 * 3600


class World:
    """This process's place among the run's processes: ``rank`` of ``size`` (one process: 0 of 1)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, device: torch.device | None = None,
                 backend: str | None = None):
        self.rank, self.size, self.local_rank, self.device, self.backend = rank, size, local_rank, device, backend

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, backend={self.backend})"

    # -- splitting work -------------------------------------------------------------------------------------
    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``range(n)``: sizes differ by at most one, no padding, no overlap."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def map_rows(self, compute: Callable[[int, int], torch.Tensor], n: int) -> torch.Tensor:
        """``compute(start, stop)`` -> [stop - start, ...] rows; returns all ``n`` rows on every rank, each rank
        computing only its :meth:`shard`."""
        part = self.shard(n)
        return self.gather_rows(compute(part.start, part.stop))

    # -- collectives ----------------------------------------------------------------------------------------
    def gather_rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        """Concatenate every rank's ``rows`` (same trailing shape and dtype, any length; ``None`` for none) in
        rank order, on every rank; returned on the device the rows came from."""
        if not self.distributed:
            return rows
        import torch.distributed as dist

        described = self.all_gather_object(None if rows is None else (len(rows), tuple(rows.shape[1:]), rows.dtype))
        _, shape, dtype = next(d for d in described if d is not None)
        lengths = [0 if d is None else d[0] for d in described]
        padded = torch.zeros((max(lengths), *shape), dtype=dtype, device=self._comm_device())
        if rows is not None:
            padded[:len(rows)] = rows.detach()
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        gathered = torch.cat([p[:n] for p, n in zip(parts, lengths)])
        return gathered if rows is None else gathered.to(rows.device)

    def all_gather_object(self, obj: Any) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` on the others."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list | None = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and return its result on every rank; when it raises, every rank raises (rank 0
        the original error, the others a :class:`BenchError` with the same message), so no rank is left waiting."""
        if not self.distributed:
            return fn()
        outcome, error = None, None
        if self.is_main:
            try:
                outcome = fn()
            except Exception as exc:  # noqa: BLE001 (re-raised below on every rank)
                error = exc
        message, outcome = self.broadcast((None, outcome) if error is None else (str(error), None))
        if error is not None:
            raise error
        if message is not None:
            raise BenchError(message)
        return outcome

    def check_same(self, value: Any, what: str) -> None:
        """Raise a :class:`BenchError` on every rank unless ``value`` is equal on all ranks (e.g. a split hash:
        ranks on several machines that do not share the cache folder would each build their own)."""
        values = self.all_gather_object(value)
        if any(v != values[0] for v in values):
            raise BenchError(f"the ranks of this run hold different {what} ({', '.join(map(str, values))}): give "
                             "every machine the same cache folder (BENCH_CACHE on a shared filesystem)")

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (building a cache), then the others (reading it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its sum over ranks (one flat all-reduce)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self._comm_device())
        dist.all_reduce(flat)
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = flat[offset:offset + grad.numel()].view_as(grad).to(grad.device)
            offset += grad.numel()

    def all_sum(self, value: float) -> float:
        """``value`` summed over ranks."""
        return float(sum(self.all_gather_object(float(value))))

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


_WORLD = World()


def world() -> World:
    """The process's :class:`World` (one process until :func:`init` joined a launcher's group)."""
    return _WORLD


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(device: str) -> World:
    """Join the launcher's process group when there is one (``device``: the config's ``auto``/``cpu``/``cuda``);
    idempotent. Returns :func:`world`."""
    global _WORLD
    if not launched() or _WORLD.distributed:
        return _WORLD
    from accelerate import PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch sees no GPU here; use --device cpu or auto")
    timeout = dt.timedelta(seconds=float(os.environ.get("BENCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    state = PartialState(cpu=cpu, timeout=timeout)
    if state.num_processes < 2:
        raise BenchError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} but accelerate formed no process group "
                         f"(distributed type {state.distributed_type}); start with accelerate launch or torchrun")
    _WORLD = World(state.process_index, state.num_processes, state.local_process_index, state.device, state.backend)
    return _WORLD


def shutdown() -> None:
    """Leave the process group (at the end of a distributed run)."""
    global _WORLD
    if _WORLD.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _WORLD = World()
