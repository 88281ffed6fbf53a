"""The ID encoder's training step (``make perf``): SASRec on real ml-100k training batches through RecBole's own
path as it ran before (autograd anomaly detection on, as RecBole's ``sine.py`` leaves it; RecBole's element-wise
GELU; float32) against the harness's (anomaly detection off, fused GELU, MaskDropout, ``encoder.dtype`` auto). Ratios in one
run only; the issue's goal is 5x for the whole training."""
import copy
import json
from pathlib import Path

import pytest
import torch

from bench.cache import default_cache_root
from bench.compat import recbole_workdir
from bench.config import load_config
from bench.encoders import _autocast_dtype, encoder_precision, fuse_activations, recbole_data, speed_up
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
           "mask_dropout": _steps(speed_up(copy.deepcopy(base)), batches, False, torch.float32),
           "harness": _steps(speed_up(copy.deepcopy(base)), batches, False, precision.dtype)}
    best = best_of(fns, repeats=3)
    report = {"dtype": str(precision.dtype), "sequences_per_batch": len(batches[0]),
              "speedup_vs_recbole": {k: round(best["recbole"] / v, 2) for k, v in best.items()}, "goal": 5.0}
    print("\nSASRec training step on ml-100k:", json.dumps(report))
    assert best["harness"] < best["no_anomaly"] < best["recbole"]


def _one_epoch(split, cfg, work: Path, harness: bool, dtype: torch.dtype, anomaly: bool) -> tuple[float, float]:
    """Seconds and validation NDCG@10 of one epoch of RecBole's own trainer (training then the per-epoch
    validation pass), data loaders built beforehand and not timed."""
    import time

    from recbole.utils import get_model, get_trainer, init_seed

    with recbole_workdir(work):
        rb_config, (train, valid, _) = recbole_data(split, cfg, "cpu", work)
        rb_config["epochs"] = 1
        rb_config["enable_amp"] = dtype != torch.float32
        init_seed(rb_config["seed"], rb_config["reproducibility"])
        model = get_model(cfg["encoder.model"])(rb_config, train.dataset)
        if harness:
            speed_up(model)
        trainer = get_trainer(rb_config["MODEL_TYPE"], cfg["encoder.model"])(rb_config, model)
        start = time.perf_counter()
        with torch.autograd.set_detect_anomaly(anomaly), _autocast_dtype(torch.device("cpu"), dtype):
            best, _ = trainer.fit(train, valid, saved=False, show_progress=False)
        return time.perf_counter() - start, float(best)


def test_encoder_epoch_against_recboles_own_path(tmp_path):
    """A whole epoch (training and validation), as ``encoder.train_seconds`` counts it: RecBole's path as it ran
    before (anomaly detection on, element-wise GELU, float32) against the harness's, in one run."""
    cfg = load_config("default")
    split = build_split(cfg, default_cache_root(cfg["cache_dir"]))
    precision = encoder_precision(cfg, "cpu")
    old_s, old_ndcg = _one_epoch(split, cfg, tmp_path / "old", False, torch.float32, True)
    new_s, new_ndcg = _one_epoch(split, cfg, tmp_path / "new", True, precision.dtype, False)
    report = {"dtype": str(precision.dtype), "speedup": round(old_s / new_s, 2), "goal": 5.0,
              "valid_ndcg@10_after_one_epoch": {"recbole": round(old_ndcg, 4), "harness": round(new_ndcg, 4)}}
    print("\nSASRec epoch on ml-100k:", json.dumps(report))
    assert old_s / new_s >= 5.0
