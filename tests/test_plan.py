"""Sweeps: parsing, the arms they create, and a sweep run end to end."""
import json

import pandas as pd
import pytest

from bench import plan
from bench.config import load_config
from bench.errors import BenchError
from conftest import run_cli


def test_parse_sweep_reads_typed_values():
    sweep = plan.parse_sweep("paradigms.ra-rec.train_fraction=0.05,0.5,1")
    assert sweep.key == "paradigms.ra-rec.train_fraction" and sweep.values == (0.05, 0.5, 1)
    assert sweep.short == "train_fraction" and sweep.swept_paradigm() == "ra-rec"
    assert plan.parse_sweep(None) is None


@pytest.mark.parametrize("text, message", [
    ("train.epochs=1", "at least two values"),
    ("train.epochs", "KEY=V1,V2"),
    ("data.max_users=100,200", "only paradigms.*, train.*"),
    ("train.epochs=1,1", "repeated"),
])
def test_bad_sweeps_are_refused(text, message):
    with pytest.raises(BenchError, match=message):
        plan.parse_sweep(text)


def test_paradigm_sweep_sweeps_only_that_paradigm():
    cfg = load_config("smoke")
    arms = plan.arms("pop,id-direct", cfg, plan.parse_sweep("paradigms.id-direct.dim=8,16"))
    assert [a.label for a in arms] == ["pop", "id-direct[dim=8]", "id-direct[dim=16]"]
    assert [a.options.get("dim") for a in arms] == [None, 8, 16]
    assert arms[2].config["paradigms.id-direct.dim"] == 16 and arms[0].config is cfg
    record = plan.sweep_record(plan.parse_sweep("paradigms.id-direct.dim=8,16"), arms)
    assert record["labels"]["id-direct[dim=8]"] == {"paradigm": "id-direct", "value": 8}


def test_sweep_errors_name_the_problem():
    cfg = load_config("smoke")
    with pytest.raises(BenchError, match="'ra-rec' is not among --paradigms"):
        plan.arms("pop", cfg, plan.parse_sweep("paradigms.ra-rec.train_fraction=0.1,0.2"))
    with pytest.raises(BenchError, match="unknown config key 'train.epoch'"):
        plan.arms("pop", cfg, plan.parse_sweep("train.epoch=1,2"))
    with pytest.raises(BenchError, match="paradigms.id-direct.dims"):
        plan.arms("id-direct", cfg, plan.parse_sweep("paradigms.id-direct.dims=1,2"))


def test_sweep_run_writes_one_directory_with_every_arm(tmp_path, fixtures_dir, cache_root):
    out = tmp_path / "sweep"
    result = run_cli("run", "--paradigms", "pop,id-direct", "--dataset", "ml-slice", "--data-dir", str(fixtures_dir),
                     "--preset", "smoke", "--sweep", "paradigms.id-direct.dim=8,32", "--out", str(out), "--quiet",
                     env={"BENCH_CACHE": str(cache_root)})
    assert result.returncode == 0, result.stderr
    per_user = pd.read_csv(out / "per_user.csv")
    assert list(dict.fromkeys(per_user["paradigm"])) == ["pop", "id-direct[dim=8]", "id-direct[dim=32]"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sweep"]["key"] == "paradigms.id-direct.dim"
    assert manifest["paradigms"]["id-direct[dim=8]"]["options"]["dim"] == 8
    params = {k: v["seeds"]["0"]["trainable_parameters"] for k, v in manifest["paradigms"].items()}
    assert params["id-direct[dim=8]"] < params["id-direct[dim=32]"]
    assert (out / "efficiency.png").stat().st_size > 20_000
