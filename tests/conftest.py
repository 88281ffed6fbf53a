"""Shared fixtures: tiny real data (a slice of ml-100k) and a per-session cache folder."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = FIXTURES.parent.parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """One cache for the whole session, so the tiny encoder is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def slice_overrides(cache_root) -> list:
    """Config overrides that point a run at the ml-100k slice and the session cache."""
    return [{"data": {"dataset": "ml-slice", "data_dir": str(FIXTURES)}, "cache_dir": str(cache_root)}]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m bench ARGS`` in a subprocess and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)


@pytest.fixture(scope="session")
def canary_data(tmp_path_factory, fixtures_dir):
    """ml-slice with every user's validation item replaced by VALIDBIRD and test item by CANARY."""
    root = tmp_path_factory.mktemp("canary-data")
    frame = pd.read_csv(fixtures_dir / "ml-slice" / "ml-slice.inter", sep="\t", dtype=str)
    frame.columns = ["user", "item", "rating", "time"]
    frame = frame.iloc[np.lexsort((frame["time"].astype(float).to_numpy(), frame["user"].to_numpy()))]
    position_from_end = frame.groupby("user").cumcount(ascending=False)
    frame.loc[(position_from_end == 0).to_numpy(), "item"] = "CANARY"
    frame.loc[(position_from_end == 1).to_numpy(), "item"] = "VALIDBIRD"
    (root / "birds").mkdir()
    frame[["user", "item", "time"]].to_csv(root / "birds" / "birds.inter", sep="\t", index=False,
                                           header=["user_id:token", "item_id:token", "timestamp:float"])
    items = pd.read_csv(fixtures_dir / "ml-slice" / "ml-slice.item", sep="\t", dtype=str)
    extra = pd.DataFrame({items.columns[0]: ["CANARY", "VALIDBIRD"],
                          items.columns[1]: ["Canary Movie", "Valid Bird Film"]})
    pd.concat([items[items.columns[:2]], extra]).to_csv(root / "birds" / "birds.item", sep="\t", index=False)
    return root


@pytest.fixture
def isolated_paradigms():
    """Paradigms registered during the test are forgotten after it (the built-ins stay)."""
    from bench import registry

    with registry.PARADIGMS.isolated() as paradigms:
        yield paradigms


def fit_paradigms(names, cfg, split, llm, cache_root) -> dict:
    """Fit each named paradigm (seed 0, CPU) on ``split`` with the frozen ``llm``; name -> fitted paradigm."""
    import torch

    from bench import registry, resources
    from bench.evaluation import fit_paradigm
    from bench.registry import Context

    out = {}
    for name in names:
        cls = registry.get(name)
        paradigm = cls()
        context = Context(config=cfg, options=registry.options_for(cls, cfg), seed=0, device=torch.device("cpu"),
                          cache_dir=cache_root, llm=llm, generator=resources.seed_everything(0))
        fit_paradigm(paradigm, split, context)
        out[name] = paradigm
    return out


def tiny_frozen_llm(model, name: str, is_decoder: bool, cache_root, prompt_tokens: int = 64):
    """A randomly initialised ``model`` frozen behind the real MiniLM tokenizer, as paradigms receive an LLM."""
    from transformers import AutoTokenizer

    from bench.features import FeatureStore, FrozenLLM
    from bench.llm import BACKBONES, Backbone, _package_file

    tokenizer = AutoTokenizer.from_pretrained(str(_package_file(*BACKBONES.get("minilm"))))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = Backbone(name, model, tokenizer, is_decoder=is_decoder, fingerprint=f"{name}-test")
    return FrozenLLM(backbone, FeatureStore(backbone, cache_root, prompt_tokens), FeatureStore(backbone, cache_root, 16),
                     prompt_tokens)


def minilm_vocab_size() -> int:
    """Vocabulary size of the MiniLM tokenizer the tiny test models share."""
    from transformers import AutoTokenizer

    from bench.llm import BACKBONES, _package_file

    return AutoTokenizer.from_pretrained(str(_package_file(*BACKBONES.get("minilm")))).vocab_size


def assert_no_prompt_leak(paradigm, test_marker: str, valid_marker: str) -> None:
    """A fitted text paradigm's training and validation prompts hold neither marker; every test-stage prompt holds
    the validation item (test-stage history) exactly once and never the test item."""
    train_texts = [p.text for p in paradigm.train_prompts]
    valid_texts = [p.text for p in paradigm.stage_prompts("valid")]
    test_texts = [p.text for p in paradigm.stage_prompts("test")]
    assert len(train_texts) > 0
    assert not any(test_marker in t or valid_marker in t for t in train_texts + valid_texts)
    assert all(test_marker not in t and t.count(valid_marker) == 1 for t in test_texts)


def load_script(name: str):
    """Import ``scripts/NAME.py`` as a module (the scripts folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def uninterrupted(cfg, name: str, n: int) -> list[dict]:
    """The values a tune that never stopped tries in its ``n`` trials, the default first (TPE samples at random
    there, as a random sampler with the same seed does)."""
    import optuna

    from bench import plan, registry
    from bench.tune import default_values, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg["seeds"][0]))
    study.enqueue_trial(default_values(plan.arms(name, cfg)[0]))
    for _ in range(n):
        trial = study.ask()
        suggest(trial, registry.get(name).search_space)
        study.tell(trial, 0.0)
    return [t.params for t in study.trials]


def best_of(fns: dict, repeats: int = 5) -> dict:
    """Fastest of ``repeats`` timed calls of each function (seconds, by key), the functions interleaved so that
    other work on the machine slows them alike; one warm-up call each first (oneDNN picks its kernels on the
    first call). For ``tests/perf``: ratios of these, never absolute times, go into assertions."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - start)
    return best
