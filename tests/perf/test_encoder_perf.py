"""The ID encoder's training step (``make perf``): SASRec on real ml-100k training batches through RecBole's own
path as it ran before (autograd anomaly detection on, as RecBole's ``sine.py`` leaves it; RecBole's element-wise
GELU; float32) against the harness's (anomaly detection off, fused GELU, ``encoder.dtype`` auto). Ratios in one
run only; the issue's goal is 5x for the whole training."""
import copy
import json
from pathlib import Path

import pytest
import torch

from bench.cache import default_cache_root
from bench.compat import recbole_workdir
from bench.config import load_config
from bench.encoders import _autocast_dtype, encoder_precision, fuse_activations, recbole_data
from bench.split import build_split
from conftest import best_of

BATCHES = 3


@pytest.fixture(scope="module")
def model_and_batches(tmp_path_factory):
    from recbole.utils import get_model

    cfg = load_config("default")
    split = build_split(cfg, default_cache_root(cfg["cache_dir"]))
    work = tmp_path_factory.mktemp("recbole")
    with recbole_workdir(work):
        rb_config, (train, _, _) = recbole_data(split, cfg, "cpu", Path(work))
    batches = [batch for _, batch in zip(range(BATCHES), train)]
    return get_model("SASRec")(rb_config, train.dataset), batches, encoder_precision(cfg, "cpu")


def _steps(model, batches, anomaly: bool, dtype: torch.dtype):
    """One closure: a training step (forward, CE loss, backward, Adam) over each batch."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run():
        for batch in batches:
            optimizer.zero_grad()
            with torch.autograd.set_detect_anomaly(anomaly), _autocast_dtype(torch.device("cpu"), dtype), \
                    torch.autocast("cpu", enabled=dtype != torch.float32):
                loss = model.calculate_loss(batch)
            with torch.autograd.set_detect_anomaly(anomaly):
                loss.backward()
            optimizer.step()
    return run


def test_encoder_training_step_against_recboles_own_path(model_and_batches):
    base, batches, precision = model_and_batches
    fns = {"recbole": _steps(copy.deepcopy(base), batches, True, torch.float32),
           "no_anomaly": _steps(copy.deepcopy(base), batches, False, torch.float32),
           "fused_gelu": _steps(fuse_activations(copy.deepcopy(base)), batches, False, torch.float32),
           "harness": _steps(fuse_activations(copy.deepcopy(base)), batches, False, precision.dtype)}
    best = best_of(fns, repeats=3)
    report = {"dtype": str(precision.dtype), "sequences_per_batch": len(batches[0]),
              "speedup_vs_recbole": {k: round(best["recbole"] / v, 2) for k, v in best.items()}, "goal": 5.0}
    print("\nSASRec training step on ml-100k:", json.dumps(report))
    assert best["harness"] < best["no_anomaly"] < best["recbole"]
