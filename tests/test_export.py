"""bench export: TREC and ranx files from which ranx computes the run's own HR@10 and NDCG@10."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench import registry, runner
from bench.cli import main
from bench.config import load_config
from bench.export import ranked_lists
from conftest import load_script


class _CoarsePopularity(registry.Paradigm):
    """Training popularity in steps of 5 interactions: many items tie, the target often among them."""

    def fit(self, split, context):
        self._scores = torch.as_tensor(split.popularity // 5, dtype=torch.float32)

    def score(self, users, stage):
        return self._scores.expand(len(users), -1).clone()


class _Personal(registry.Paradigm):
    """A different, tie-free order per user (so lists differ across users)."""

    def fit(self, split, context):
        self._n = split.n_items

    def score(self, users, stage):
        generator = torch.Generator().manual_seed(int(users[0]))
        return torch.rand(len(users), self._n, generator=generator) + torch.as_tensor(users)[:, None] * 0


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, slice_overrides):
    with registry.PARADIGMS.isolated():
        registry.register("coarse-pop")(type("CoarsePop", (_CoarsePopularity,), {}))
        registry.register("personal")(type("Personal", (_Personal,), {}))
        cfg = load_config("smoke", overrides=[*slice_overrides, "eval.topk=20", "seeds=[0,1]"])
        return runner.run("coarse-pop,personal", cfg, tmp_path_factory.mktemp("export") / "run")


def test_the_target_sits_at_its_harness_rank_and_a_target_below_k_is_absent():
    lists = np.array([[5, 7, 9], [5, 7, 9]])
    assert list(ranked_lists(lists, np.array([9, 4]), np.array([1, 4]))) == [[9, 5, 7], [5, 7, 9]]


@pytest.mark.parametrize("fmt", ["trec", "ranx"])
def test_ranx_reads_the_exported_files_to_the_runs_own_metrics(exported_run, fmt, tmp_path):
    pytest.importorskip("ranx", reason="ranx is not installed (pip install ranx; scripts/setup_env.sh does)")
    table = load_script("ranx_check").check(exported_run, fmt, tmp_path)
    assert len(table) == 2 * 2 * 2  # paradigms x seeds x stages
    assert (table["hr@10"] - table["hr@10 ranx"]).abs().max() < 1e-6
    assert (table["ndcg@10"] - table["ndcg@10 ranx"]).abs().max() < 1e-6
    assert table["ndcg@10"].std() > 0  # the files differ per paradigm, seed and stage


def test_ties_are_resolved_against_the_target_as_in_the_run(exported_run, tmp_path):
    """coarse-pop ties: the stored list may hold the target higher than its rank; the export moves it down."""
    main(["export", str(exported_run), "--format", "ranx", "--out", str(tmp_path)])
    per_user = pd.read_csv(exported_run / "per_user.csv", dtype={"user": str})
    rows = per_user.query("paradigm == 'coarse-pop' and seed == 0 and stage == 'test'").set_index("user")["rank"]
    run = json.loads((tmp_path / "coarse-pop.seed0.test.json").read_text())
    qrels = json.loads((tmp_path / "qrels.test.json").read_text())
    for user, docs in run.items():
        target = next(iter(qrels[user]))
        order = sorted(docs, key=docs.get, reverse=True)
        assert (order.index(target) + 1 if target in order else 21) == min(rows[user], 21)


def test_a_run_without_lists_is_a_one_line_error(exported_run, tmp_path, capsys):
    copy = tmp_path / "old"
    copy.mkdir()
    for path in exported_run.iterdir():
        if path.is_file() and path.name != "topk.npz":
            (copy / path.name).write_bytes(path.read_bytes())
    assert main(["export", str(copy), "--format", "trec"]) == 2
    assert "stored no top-K lists" in capsys.readouterr().err


def test_an_inconsistent_run_directory_writes_no_file(exported_run, tmp_path, capsys):
    """per_user.csv without the last job's rows: refused before the first file, not midway."""
    copy = tmp_path / "edited"
    copy.mkdir()
    for path in exported_run.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    per_user = pd.read_csv(copy / "per_user.csv", dtype={"user": str})
    per_user[~((per_user["paradigm"] == "personal") & (per_user["seed"] == 1))].to_csv(copy / "per_user.csv",
                                                                                         index=False)
    out = tmp_path / "files"
    assert main(["export", str(copy), "--format", "trec", "--out", str(out)]) == 2
    assert "inconsistent" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
