import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from bench import registry, runner
from bench.config import load_config
from bench.errors import BenchError
from bench.rundir import ID_COLUMNS, TopLists
from bench.split import build_split

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


def _register_flaky(needs_encoder: bool = False) -> dict:
    """Register paradigm "flaky", whose fit fails while the returned ``{"yes": True}`` says so."""
    failing = {"yes": True}

    class Flaky(_Spy):
        in_all = False

        def fit(self, split, context):
            if failing["yes"]:
                raise RuntimeError("boom")
            super().fit(split, context)

    Flaky.needs_encoder = needs_encoder
    registry.register("flaky")(Flaky)
    return failing


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
    assert sorted(p.name for p in (tmp_path / ".run.partial" / "jobs").iterdir()) == ["0000.csv", "0000.json",
                                                                                     "0000.npz"]


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


def test_every_job_stores_its_top_k_lists_and_a_resumed_run_keeps_them(spies, slice_overrides, cache_root,
                                                                       tmp_path):
    """topk.npz holds, per paradigm, seed and stage, each user's best items under full ranking in per_user.csv's
    user order: for a scorer that prefers high item ids, the highest ids outside the user's history; a run
    resumed from saved jobs writes the same lists; the report adds the beyond-accuracy section from them."""
    too_short = load_config("smoke", overrides=[*slice_overrides, "eval.topk=7"])
    with pytest.raises(BenchError, match="'itemcoverage@10' needs top-10 lists.*eval.topk=10"):
        runner.run("spy-a", too_short, tmp_path / "refused")
    cfg = load_config("smoke", overrides=[*slice_overrides, "eval.topk=7", "seeds=[0,1]",
                                          "report.beyond_metrics=[itemcoverage@5,giniindex@7]"])
    failing = _register_flaky()
    with pytest.raises(RuntimeError, match="boom"):
        runner.run("spy-a,flaky", cfg, tmp_path / "run")
    failing["yes"] = False
    out = runner.resume(tmp_path / "run")
    lists = TopLists.from_disk(out)
    split = build_split(cfg, cache_root)
    assert sorted(lists.lists) == [(name, seed, stage) for name in ("flaky", "spy-a") for seed in (0, 1)
                                   for stage in ("test", "valid")]
    users = pd.read_csv(out / "per_user.csv", dtype={"user": str}).query("stage == 'test'")["user"].tolist()
    assert lists.users.tolist() == users[:len(lists.users)] and lists.items.tolist() == split.item_ids.tolist()
    for index, user in enumerate(split.users):
        history = set(split.history(int(user), "test").tolist())
        expected = [i for i in range(split.n_items - 1, 0, -1) if i not in history][:7]
        assert lists.get("spy-a", 1, "test")[index].tolist() == expected
    assert (lists.get("spy-a", 0, "valid") == lists.get("spy-a", 1, "valid")).all()
    assert "## Beyond accuracy" in (out / "results.md").read_text()
    columns = set(pd.read_csv(out / "results.csv").columns)
    assert {"itemcoverage@5_mean", "giniindex@7_low"} <= columns and not any("per_seed" in c for c in columns)
    cell = json.loads((out / "metrics.json").read_text())["beyond"]["spy-a"]["test"]["itemcoverage@5"]
    assert set(cell) == {"mean", "std", "low", "high", "per_seed"} and len(cell["per_seed"]) == 2
    assert cell["low"] <= cell["mean"] <= cell["high"] and cell["mean"] == pytest.approx(np.mean(cell["per_seed"]))


def test_a_resumed_run_uses_the_encoder_its_first_jobs_used_even_without_the_cache(spies, slice_overrides,
                                                                                  monkeypatch, tmp_path):
    """The working folder keeps a verified copy of the encoder: resumed where the cache lacks that encoder
    (another machine, a cleared cache), the run loads the copy instead of training a different one; a corrupt
    copy is refused; the finished run directory does not carry it."""
    from bench import encoders

    cfg = load_config("smoke", overrides=slice_overrides)
    failing = _register_flaky(needs_encoder=True)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run("spy-b,flaky", cfg, tmp_path / "run")
    first = SEEN[0][4].item_embeddings.clone()
    kept = list((tmp_path / ".run.partial" / "encoders").iterdir())
    assert len(kept) == 1 and (kept[0] / "model.pt").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("the resumed run trained a new encoder")

    shutil.copytree(tmp_path / ".run.partial", tmp_path / ".copy.partial")
    monkeypatch.setattr(encoders, "_train", no_training)
    monkeypatch.setattr(encoders, "encoder_key", lambda *args, **kwargs: "SASRec-elsewhere")  # not in the cache
    failing["yes"] = False
    out = runner.resume(tmp_path / "run")
    assert SEEN[-1][0] == "flaky" and torch.equal(SEEN[-1][4].item_embeddings, first)
    assert json.loads((out / "manifest.json").read_text())["encoder"]["key"] == kept[0].name
    assert not (out / "encoders").exists()
    copy = tmp_path / ".copy.partial" / "encoders" / kept[0].name
    (copy / "model.pt").write_bytes(b"not a model")
    for _ in range(2):  # the bad copy stays: a second resume does not train another encoder either
        with pytest.raises(BenchError, match="saved encoder is corrupt .model.pt does not match its checksum"):
            runner.resume(tmp_path / "copy")


def test_an_interim_report_shows_the_finished_jobs_and_leaves_the_run_resumable(spies, slice_overrides, tmp_path):
    """`bench report OUT --partial`: the saved jobs become a run directory OUT.interim whose manifest and
    results.md name the missing jobs; nothing is computed, the working folder (a write in flight included) is
    untouched, and the run then resumes to the same rows."""
    from bench import report
    from bench.cli import main

    cfg = load_config("smoke", overrides=[*slice_overrides, "seeds=[0,1]"])
    failing = _register_flaky(needs_encoder=True)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run("spy-a,flaky", cfg, tmp_path / "run")
    work = tmp_path / ".run.partial"
    shutil.rmtree(work / "encoders")  # as in a run started before runs kept their encoder: the peek adds none
    in_flight = work / "jobs" / ".0003.json.abc.tmp"  # another process may be writing a job right now
    in_flight.write_text("{")
    before = sorted(p.name for p in work.rglob("*"))
    fitted = len(SEEN)
    assert main(["report", str(tmp_path / "run"), "--partial", "--html"]) == 0
    interim = tmp_path / "run.interim"
    assert "1 of 4 (paradigm, seed) jobs have finished; still to run: flaky/seed0" in (
        interim / "report.html").read_text()
    assert len(SEEN) == fitted and sorted(p.name for p in work.rglob("*")) == before
    manifest = json.loads((interim / "manifest.json").read_text())
    assert manifest["partial"] == {"finished": 1, "jobs": 4, "missing": ["flaky/seed0", "spy-a/seed1",
                                                                         "flaky/seed1"]}
    assert "Interim: 1 of 4 (paradigm, seed) jobs" in (interim / "results.md").read_text()
    rows = pd.read_csv(interim / "per_user.csv", dtype={"user": str})
    assert set(zip(rows["paradigm"], rows["seed"])) == {("spy-a", 0)}
    report.build(interim)  # a run directory like any other
    failing["yes"] = False
    out = runner.resume(tmp_path / "run")
    final = pd.read_csv(out / "per_user.csv", dtype={"user": str}).query("paradigm == 'spy-a' and seed == 0")
    pd.testing.assert_frame_equal(final.reset_index(drop=True), rows)
    assert json.loads((out / "manifest.json").read_text())["partial"] is None
