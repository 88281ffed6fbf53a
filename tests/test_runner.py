import json

import pandas as pd
import pytest
import torch

from bench import registry, runner
from bench.config import load_config
from bench.rundir import ID_COLUMNS

SEEN = []


class _Spy(registry.Paradigm):
    version = "1"
    description = "records what it is given"

    def fit(self, split, context):
        SEEN.append((self.name, type(split).__name__, split.hash, context.seed, context.encoder))
        self._n = split.n_items

    def score(self, users, stage):
        return torch.arange(self._n, dtype=torch.float32).expand(len(users), -1).clone()

    def token_usage(self, users, stage):
        return None


class _Exploding(_Spy):
    def fit(self, split, context):
        raise RuntimeError("boom")


@pytest.fixture
def spies(isolated_paradigms):
    registry.register("spy-a")(type("SpyA", (_Spy,), {}))
    registry.register("spy-b")(type("SpyB", (_Spy,), {"needs_encoder": True}))
    registry.register("exploding")(type("Exploding", (_Exploding,), {"in_all": False}))
    SEEN.clear()


def test_every_paradigm_and_seed_sees_the_same_split_and_encoder(spies, slice_overrides, tmp_path):
    cfg = load_config("smoke", overrides=[*slice_overrides, "seeds=[3, 4]"])
    out = runner.run("spy-*", cfg, tmp_path / "run")
    assert {(name, seed) for name, _, _, seed, _ in SEEN} == {
        ("spy-a", 3), ("spy-b", 3), ("spy-a", 4), ("spy-b", 4)}
    assert {(view, split_hash) for _, view, split_hash, _, _ in SEEN} == {("SplitView", SEEN[0][2])}
    encoders = {id(enc) for _, _, _, _, enc in SEEN}
    assert len(encoders) == 1 and None not in encoders  # built once because spy-b needs it, shared with spy-a
    assert pd.read_csv(out / "per_user.csv").columns.tolist() == list(ID_COLUMNS)


def test_a_failing_paradigm_leaves_no_run_directory_only_resumable_jobs(spies, slice_overrides, tmp_path):
    cfg = load_config("smoke", overrides=slice_overrides)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run("exploding,pop", cfg, tmp_path / "first")
    assert list(tmp_path.iterdir()) == []  # nothing finished: nothing kept
    with pytest.raises(RuntimeError, match="boom"):
        runner.run("pop,exploding", cfg, tmp_path / "run")
    assert [p.name for p in tmp_path.iterdir()] == [".run.partial"]  # hidden, holds pop's finished job
    assert sorted(p.name for p in (tmp_path / ".run.partial" / "jobs").iterdir()) == ["0000.csv", "0000.json"]


def test_existing_output_folder_is_not_overwritten(spies, slice_overrides, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    cfg = load_config("smoke", overrides=slice_overrides)
    with pytest.raises(Exception, match="already exists"):
        runner.run("pop", cfg, tmp_path / "run")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


class _Base(registry.Paradigm):
    """Fixed pseudo-random scores per (user, item), the same for both stages."""

    version = "1"

    def fit(self, split, context):
        self._split = split
        self._scores = torch.rand(split.n_users, split.n_items, generator=torch.Generator().manual_seed(7))

    def score(self, users, stage):
        return self._scores[torch.as_tensor(users)].clone()

    def token_usage(self, users, stage):
        return None


class _HistoryFirst(_Base):
    """The same scores, but every history item of the stage (the validation item too, for test) on top."""

    def score(self, users, stage):
        scores = super().score(users, stage)
        for row, user in enumerate(users):
            scores[row, torch.as_tensor(self._split.history(int(user), stage))] = 100.0
        return scores


def test_history_items_are_masked_end_to_end_for_both_stages(spies, slice_overrides, tmp_path):
    """Through the runner: a scorer that puts history items (validation item included) first gets exactly the
    ranks of the same scorer without them; with masking off it does worse."""
    registry.register("mask-base")(type("MaskBase", (_Base,), {}))
    registry.register("mask-history-first")(type("MaskHistoryFirst", (_HistoryFirst,), {}))
    cfg = load_config("smoke", overrides=slice_overrides)
    ranks = pd.read_csv(runner.run("mask-*", cfg, tmp_path / "run") / "per_user.csv").pivot(
        index=["stage", "user"], columns="paradigm", values="rank")
    assert (ranks["mask-base"] == ranks["mask-history-first"]).all()
    assert set(ranks.index.get_level_values("stage")) == {"valid", "test"}
    unmasked = load_config("smoke", overrides=[*slice_overrides, "eval.mask_history=false"])
    ranks = pd.read_csv(runner.run("mask-*", unmasked, tmp_path / "off") / "per_user.csv").pivot(
        index=["stage", "user"], columns="paradigm", values="rank")
    assert (ranks["mask-history-first"] >= ranks["mask-base"]).all()
    assert (ranks["mask-history-first"] > ranks["mask-base"]).mean() > 0.9


class _UsesLLM(_Base):
    needs_llm = True

    def fit(self, split, context):
        super().fit(split, context)
        self.info = {"budget": context.llm.token_budget, "backbone": id(context.llm.backbone)}


def test_a_token_budget_sweep_loads_the_backbone_once_and_records_each_arms_budget(spies, slice_overrides,
                                                                                   tmp_path, monkeypatch):
    from bench import resources

    loads = []
    real = resources.load_backbone
    monkeypatch.setattr(resources, "load_backbone", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    registry.register("llm-spy")(type("LLMSpy", (_UsesLLM,), {}))
    cfg = load_config("smoke", overrides=slice_overrides)
    out = runner.run("llm-spy", cfg, tmp_path / "run", sweep="llm.token_budget=32,48")
    assert loads == ["minilm"]
    manifest = json.loads((out / "manifest.json").read_text())
    arms = sorted(manifest["paradigms"].values(), key=lambda entry: entry["llm"]["token_budget"])
    assert [entry["llm"]["token_budget"] for entry in arms] == [32, 48]
    assert [entry["seeds"]["0"]["training"]["budget"] for entry in arms] == [32, 48]
    assert len({entry["seeds"]["0"]["training"]["backbone"] for entry in arms}) == 1
