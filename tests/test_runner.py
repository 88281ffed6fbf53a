import pytest
import torch

from bench import registry, runner
from bench.config import load_config

SEEN = []


class _Spy(registry.Paradigm):
    version = "1"
    description = "records what it is given"

    def fit(self, split, context):
        SEEN.append((self.name, id(split), split.hash, context.seed, context.encoder))
        self._n = split.n_items

    def score(self, users, stage):
        return torch.arange(self._n, dtype=torch.float32).expand(len(users), -1).clone()

    def token_usage(self, users, stage):
        return None


class _Exploding(_Spy):
    def fit(self, split, context):
        raise RuntimeError("boom")


@pytest.fixture
def spies(monkeypatch):
    for name in registry.BUILTIN:
        registry.get(name)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ORIGIN", dict(registry._ORIGIN))
    registry.register("spy-a")(type("SpyA", (_Spy,), {}))
    registry.register("spy-b")(type("SpyB", (_Spy,), {"needs_encoder": True}))
    registry.register("exploding")(type("Exploding", (_Exploding,), {"in_all": False}))
    SEEN.clear()


def test_every_paradigm_and_seed_sees_the_same_split_and_encoder(spies, slice_overrides, tmp_path):
    cfg = load_config("smoke", overrides=[*slice_overrides, "seeds=[3, 4]"])
    out = runner.run("spy-*", cfg, tmp_path / "run")
    assert {(name, seed) for name, _, _, seed, _ in SEEN} == {
        ("spy-a", 3), ("spy-b", 3), ("spy-a", 4), ("spy-b", 4)}
    assert len({(split_id, split_hash) for _, split_id, split_hash, _, _ in SEEN}) == 1
    encoders = {id(enc) for _, _, _, _, enc in SEEN}
    assert len(encoders) == 1 and None not in encoders  # built once because spy-b needs it, shared with spy-a
    assert (out / "per_user.csv").is_file()


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
