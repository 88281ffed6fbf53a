"""The plan line: what a run will compute, timed on this machine, and `--dry-run`."""
from __future__ import annotations

import re

import pytest
from bench import runner
from bench.config import load_config, with_overrides
from bench.contract import SplitView
from bench.contract import Workload
from bench.estimate import LONG_S, Estimate
from bench.llm import Backbone
from bench.registry import get
from bench.split import build_split
from bench.training import count_training_samples, training_samples
from conftest import run_cli


@pytest.fixture(scope="module")
def slice_split(fixtures_dir, cache_root):
    cfg = load_config("smoke", None, [{"data": {"dataset": "ml-slice", "data_dir": str(fixtures_dir)},
                                       "cache_dir": str(cache_root)}])
    return cfg, build_split(cfg, cache_root)


@pytest.mark.parametrize("per_user", [1, 2, 5, 1000])
def test_training_samples_are_counted_without_building_them(slice_split, per_user):
    _, split = slice_split
    assert count_training_samples(SplitView(split), per_user) == len(training_samples(split, per_user)[0])


def test_dry_run_prints_the_plan_and_computes_nothing(tmp_path, fixtures_dir, cache_root, slice_split):
    _, split = slice_split
    result = run_cli("run", "--paradigms", "pop,id-translation,ra-rec", "--dataset", "ml-slice", "--data-dir",
                     str(fixtures_dir), "--preset", "smoke", "--seeds", "0,1", "--dry-run", "--quiet",
                     env={"BENCH_CACHE": str(cache_root)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"plan: {split.n_users - 1:,} users x {split.n_items - 1:,} items, 6 jobs; ")
    assert re.search(r"estimate on 1 x cpu: features .*, LLM passes .*, ranking .*, total ~", line), line
    assert not list(tmp_path.iterdir())  # no run directory, no partial folder


def test_the_prompt_count_is_the_number_of_texts_a_fresh_run_encodes(slice_split, tmp_path, monkeypatch):
    cfg, split = slice_split
    cfg = load_config("smoke", None, [{"data": {"dataset": "ml-slice", "data_dir": cfg["data.data_dir"]},
                                       "cache_dir": str(tmp_path / "fresh")}])
    encoded = []
    original = Backbone.encode
    monkeypatch.setattr(Backbone, "encode", lambda self, texts, *a, **k: encoded.append(len(texts))
                        or original(self, texts, *a, **k))
    runner.run("id-translation", cfg, tmp_path / "out")
    work = get("id-translation").workload(SplitView(split), cfg, get("id-translation").defaults)
    assert sum(encoded) <= work.prompts  # prompts that repeat a text are encoded once
    assert sum(encoded) >= 0.9 * work.prompts


def test_ra_rec_counts_the_samples_it_trains_on(slice_split):
    cfg, split = slice_split
    cls = get("ra-rec")
    work = cls.workload(SplitView(split), cfg, cls.defaults)
    assert work.training_samples == count_training_samples(split, cfg["train.samples_per_user"])
    assert work.llm_sequences > 4 * cfg["train.epochs"] * work.training_samples
    untrained = get("ra-rec-untrained").workload(SplitView(split), cfg, get("ra-rec-untrained").defaults)
    assert untrained.llm_sequences < work.llm_sequences and untrained.training_samples == 0
    items = get("ra-rec-items").workload(SplitView(split), cfg, get("ra-rec-items").defaults)  # the earlier reading
    assert items.training_samples == work.training_samples and items.prompts == split.n_items - 1
    assert items.llm_sequences > 4 * cfg["train.epochs"] * items.training_samples


def test_zero_shot_scores_count_once_per_run_and_trained_ones_per_seed(slice_split):
    """id-direct-lm keeps its scores for the run's other seeds (nothing trained), ra-rec-lm scores anew per seed."""
    cfg, split = slice_split
    cfg = with_overrides(cfg, ["eval.protocols=[uni19]"])
    view = SplitView(split)
    zero = get("id-direct-lm").workload(view, cfg, get("id-direct-lm").defaults)
    trained = get("ra-rec-lm").workload(view, cfg, get("ra-rec-lm").defaults)
    assert zero.cached_tokens > 0 and zero.llm_tokens == 0
    assert zero.times(3) == zero and trained.times(3).llm_tokens == 3 * trained.llm_tokens
    assert trained.cached_tokens == 0 and trained.llm_tokens > zero.cached_tokens  # its scoring, then training


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_long_run_is_told_how_to_shorten_it(device):
    plan = Estimate(users=80_000, items=1_000_000, jobs=5, device=device, processes=1,
                    seconds={"features": 3 * LONG_S, "LLM passes": 7 * LONG_S, "ranking": 0.0})
    line = plan.line()
    assert "total ~10.0 h" in line and "-- long:" in line
    users = int(re.search(r"data\.max_users=(\d+)", line).group(1))
    assert users <= 80_000 * LONG_S / plan.total
    assert ("--device cuda" in line) == (device == "cpu")
    assert "accelerate launch" in line
    short = Estimate(users=100, items=10, jobs=1, device="cpu", processes=1, seconds={"ranking": 1.0})
    assert "-- long" not in short.line()


def test_a_resumed_run_estimates_only_the_jobs_still_to_go(slice_split):
    """On --resume the plan line counts the unfinished (paradigm, seed) jobs, says how many are finished, and
    calls a training estimate an upper bound (early stopping)."""
    import torch
    from bench import plan
    from bench.estimate import estimate

    cfg, split = slice_split
    arms = plan.arms("pop,sasrec", cfg)
    fresh = estimate(arms, 3, split, {}, True, torch.device("cpu"), 1)
    resumed = estimate(arms, 3, split, {}, True, torch.device("cpu"), 1, to_go={"pop": 0, "sasrec": 1})
    assert (fresh.jobs, fresh.finished, resumed.jobs, resumed.finished) == (6, 0, 1, 5)
    sasrec_alone = estimate(plan.arms("sasrec", cfg), 1, split, {}, True, torch.device("cpu"), 1)
    assert resumed.work == sasrec_alone.work and resumed.work.rankings < fresh.work.rankings
    assert ", 1 job to go (5 finished);" in resumed.line() and "6 jobs;" in fresh.line()
    assert "at most" not in fresh.line()  # nothing trains
    trained = Estimate(users=10, items=10, jobs=1, device="cpu", processes=1, seconds={"LLM passes": 60.0},
                       work=Workload(training_samples=5))
    assert "total ~60 s at most (early stopping" in trained.line()
