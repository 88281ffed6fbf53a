"""RecBole 1.2.1 compatibility shims, applied once before any ``recbole`` import.

Import :func:`recbole_ready` (or this module) before importing anything from ``recbole``:

* numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``, which RecBole's configurator uses;
* torch >= 2.6 loads checkpoints with ``weights_only=True``, but RecBole's trainer saves its config
  inside the checkpoint, so the trainer's own ``torch.load`` must use ``weights_only=False``;
* ``recbole.quick_start`` imports ``ray.tune`` at import time; bench never imports ``quick_start``,
  and registers an inert ``ray`` stub so an accidental import fails clearly instead of at random;
* RecBole's ``Config`` reads ``--key=value`` pairs from ``sys.argv``; bench's flags are not for it;
* ``recbole.model.sequential_recommender.sine`` calls ``torch.autograd.set_detect_anomaly(True)`` at import
  time, and ``get_model`` imports it: anomaly detection then checks every backward output for NaN (``ne`` +
  ``any`` per autograd node: 40-55% of an RA-Rec training step in the profile, and every SASRec step). The
  package is imported here and the mode switched back off;
* RecBole writes ``log/`` and ``log_tensorboard/`` relative to the working directory:
  :func:`recbole_workdir` runs a block with the working directory moved into a cache folder.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np

_APPLIED = False


def _numpy_aliases() -> None:
    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, old):
            setattr(np, old, new)


def _ray_stub() -> None:
    if "ray" in sys.modules:
        return
    try:
        import ray  # noqa: F401  (a real ray installation is fine)
    except ImportError:
        stub = types.ModuleType("ray")
        stub.__doc__ = "Stub installed by bench.compat: RecBole's hyper-parameter tuning is not supported."
        tune = types.ModuleType("ray.tune")
        stub.tune = tune
        sys.modules["ray"] = stub
        sys.modules["ray.tune"] = tune


class _TorchWithFullLoad(types.ModuleType):
    """The torch module as RecBole's trainer sees it: identical except ``load`` unpickles fully."""

    def __init__(self, torch_module):
        super().__init__("torch")
        self._torch = torch_module

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def load(self, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return self._torch.load(*args, **kwargs)


def recbole_ready() -> None:
    """Apply every shim (idempotent). Call before importing from ``recbole``."""
    global _APPLIED
    if _APPLIED:
        return
    _numpy_aliases()
    _ray_stub()
    import torch
    import recbole.trainer.trainer as trainer_module

    trainer_module.torch = _TorchWithFullLoad(torch)
    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py, which turns anomaly mode on)

    torch.autograd.set_detect_anomaly(False)
    # RecBole's Config parses sys.argv for --key=value pairs: bench's own flags must never reach it.
    from recbole.config.configurator import Config

    Config._load_cmd_line = lambda self: {}
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\..*")
    warnings.filterwarnings("ignore", message=r".*amp\.GradScaler.*", category=FutureWarning)
    # RecBole logs every epoch at INFO through the root logger; bench shows its own progress.
    logging.getLogger("recbole").setLevel(logging.WARNING)
    _APPLIED = True


@contextlib.contextmanager
def recbole_workdir(path: Path):
    """Run a block with the working directory in ``path`` so RecBole's relative log folders land there."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(previous)


def recbole_config(model: str, dataset: str, config_dict: dict, device: str = "cpu"):
    """A RecBole ``Config`` on ``device`` that leaves the process's CUDA_VISIBLE_DEVICES as it was.

    RecBole's configurator overwrites CUDA_VISIBLE_DEVICES and picks the device itself; bench decides.
    """
    recbole_ready()
    import torch
    from recbole.config import Config as RecBoleConfig

    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        config = RecBoleConfig(model=model, dataset=dataset,
                               config_dict={**config_dict, "use_gpu": device.startswith("cuda")})
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    config["device"] = torch.device(device)
    return config
