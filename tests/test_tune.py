"""`bench tune`: equal trials per paradigm on validation, the default first, a config `bench run` reads, resumable;
per-paradigm training budgets recorded and reported."""
import json

import pandas as pd
import pytest
import yaml

from bench import plan, registry
from bench.config import load_config
from bench.errors import BenchError
from bench.rundir import Run
from bench.tune import as_config, default_values, suggest, tune
from conftest import run_cli, uninterrupted

SPEC = "pop,id-translation"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, slice_overrides):
    cfg = load_config("smoke", overrides=[*slice_overrides, "train.epochs=1"])
    out = tmp_path_factory.mktemp("tune") / "t"
    tune(SPEC, cfg, 2, out)
    first = pd.read_csv(out / "trials.csv")
    bars = []
    tune(SPEC, cfg, 3, out, progress=lambda **kw: bars.append(Bar(**kw)) or bars[-1])  # one more trial each
    return cfg, out, first, pd.read_csv(out / "trials.csv"), bars


class Bar:
    """Records what a progress bar is told."""

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.postfix = kwargs, 0, None

    def update(self, n=1):
        self.updates += n

    def set_postfix(self, *args, **kwargs):
        self.postfix = kwargs

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_every_paradigm_gets_the_same_trials_with_the_default_first(tuned):
    cfg, _, first, _, _ = tuned
    counts = first.groupby("paradigm").size().to_dict()
    assert counts == {"id-translation": 2, "pop": 1}  # pop has nothing to tune: its default trial only
    default = default_values(plan.arms("id-translation", cfg)[0])
    row = first[(first.paradigm == "id-translation") & (first.trial == 0)].iloc[0]
    assert json.loads(row["params"]) == default


def test_the_tuned_config_is_never_worse_on_validation_and_bench_run_reads_it(tuned, fixtures_dir, cache_root,
                                                                                tmp_path):
    cfg, out, _, trials, _ = tuned
    best = yaml.safe_load((out / "tuned.yaml").read_text())
    for label, group in trials.groupby("paradigm"):
        assert group["valid_ndcg@10"].max() >= group[group.trial == 0]["valid_ndcg@10"].iloc[0]
    winner = trials[trials.paradigm == "id-translation"].sort_values("valid_ndcg@10").iloc[-1]
    assert best == as_config("id-translation", json.loads(winner["params"]))
    result = run_cli("run", "--paradigms", SPEC, "--dataset", "ml-slice", "--data-dir", str(fixtures_dir), "--preset",
                     "smoke", "--set", "train.epochs=1", "--config", str(out / "tuned.yaml"), "--out",
                     str(tmp_path / "run"), "--quiet", env={"BENCH_CACHE": str(cache_root)})
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    own = best["paradigms"]["id-translation"].get("train")
    assert manifest["paradigms"]["id-translation"]["options"].get("train") == own
    per_user = Run.from_disk(tmp_path / "run").per_user
    valid = per_user[(per_user.stage == "valid") & (per_user.seed == cfg["seeds"][0])].groupby("paradigm")["ndcg@10"]
    for label, group in trials.groupby("paradigm"):  # the tuned run reproduces the best trial: never below default
        assert valid.mean()[label] == pytest.approx(group["valid_ndcg@10"].max(), rel=1e-5, abs=1e-7)
        assert valid.mean()[label] >= group[group.trial == 0]["valid_ndcg@10"].iloc[0] - 1e-6
    differ = {k for k, v in (own or {}).items() if v != cfg[f"train.{k}"]}  # restated shared values do not count
    md = (tmp_path / "run" / "results.md").read_text()
    assert ("Training budgets differ: id-translation: train." in md) == bool(differ)


def test_a_tune_shows_its_trials_per_paradigm(tuned):
    *_, trials, bars = tuned
    bar = next(b for b in bars if b.kwargs.get("unit") == "trial")
    assert bar.kwargs["desc"] == "tune id-translation" and bar.kwargs["total"] == 3 and bar.kwargs["initial"] == 2
    assert bar.updates == 1
    best = trials[trials.paradigm == "id-translation"]["valid_ndcg@10"].max()
    assert bar.postfix == {"best_valid_ndcg10": f"{best:.4f}"}
    assert not any(b.kwargs.get("desc") == "tune pop" for b in bars)  # its one trial was done


def test_an_interrupted_tune_continues_where_it_stopped(tuned):
    cfg, out, first, trials, _ = tuned
    assert trials.groupby("paradigm").size().to_dict() == {"id-translation": 3, "pop": 1}
    tried = [json.loads(p) for p in trials[trials.paradigm == "id-translation"].sort_values("trial")["params"]]
    assert tried == uninterrupted(cfg, "id-translation", 3)  # not the first draws again
    kept = trials.merge(first, on=["paradigm", "trial"], suffixes=("", "_first"))
    assert len(kept) == len(first) and (kept["valid_ndcg@10"] == kept["valid_ndcg@10_first"]).all()
    assert (out / "study.db").is_file() and (out / "tuning.png").is_file()


@pytest.mark.parametrize("name", sorted(registry.names()))
def test_every_default_lies_inside_its_search_space(name):
    cls = registry.get(name)
    arm = plan.arms(name, load_config("smoke"))[0]
    for key, value in default_values(arm).items():
        spec = cls.search_space[key]
        assert value in spec[1] if spec[0] == "choice" else spec[1] <= value <= spec[2], (name, key)


def test_a_paradigm_sets_its_own_training_values_and_only_the_shared_ones():
    cfg = load_config("smoke", overrides=["paradigms.id-translation.train.learning_rate=0.003"])
    arms = {a.label: a for a in plan.arms("pop,id-translation", cfg)}
    assert arms["id-translation"].config["train.learning_rate"] == 0.003
    assert arms["pop"].config["train.learning_rate"] == cfg["train.learning_rate"]
    with pytest.raises(BenchError, match="train.epochs' cannot differ per paradigm"):
        plan.arms("id-translation", load_config("smoke", overrides=["paradigms.id-translation.train.epochs=3"]))
    with pytest.raises(BenchError, match="paradigms.id-translation.train: .*must be > 0"):
        plan.arms("id-translation", load_config("smoke", overrides=["paradigms.id-translation.train.learning_rate=0"]))


def test_a_search_space_that_names_no_option_is_rejected_at_registration(isolated_paradigms):
    from bench.registry import Paradigm, register

    with pytest.raises(TypeError, match="search_space\\['widht'\\] names no option"):
        @register("bad-space")
        class Bad(Paradigm):
            defaults = {"width": 3}
            search_space = {"widht": ("int", 1, 9)}

            def fit(self, split, context): ...

            def score(self, users, stage): ...


def test_a_tune_killed_during_its_default_trial_still_runs_the_default_first(tmp_path, slice_overrides):
    import optuna

    cfg = load_config("smoke", overrides=[*slice_overrides, "train.epochs=1"])
    default = default_values(plan.arms("id-translation", cfg)[0])
    out = tmp_path / "t"
    out.mkdir()
    study = optuna.create_study(study_name="id-translation", storage=f"sqlite:///{out / 'study.db'}",
                                direction="maximize")
    study.enqueue_trial(default)
    study.ask()  # the killed process: trial 0 took the default and never finished
    tune("id-translation", cfg, 1, out)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 1 and json.loads(trials["params"].iloc[0]) == default


def test_a_tune_killed_during_a_trial_runs_that_trial_again(tmp_path, slice_overrides):
    import optuna

    cfg = load_config("smoke", overrides=[*slice_overrides, "train.epochs=1"])
    out = tmp_path / "t"
    out.mkdir()
    study = optuna.create_study(study_name="id-translation", storage=f"sqlite:///{out / 'study.db'}",
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg["seeds"][0]))
    study.enqueue_trial(default_values(plan.arms("id-translation", cfg)[0]))
    space = registry.get("id-translation").search_space
    default = study.ask()
    suggest(default, space)
    study.tell(default, 0.5)  # the default trial finished (with a made-up score)
    suggest(study.ask(), space)  # trial 1 drew its values, then was killed
    tune("id-translation", cfg, 3, out)
    trials = pd.read_csv(out / "trials.csv")
    assert trials["trial"].tolist() == [0, 2, 3]  # trial 1 failed, trial 2 ran its values again
    assert [json.loads(p) for p in trials["params"]] == uninterrupted(cfg, "id-translation", 3)


def test_a_tune_prints_its_plan_first(tmp_path, slice_overrides, capsys):
    tune("pop", load_config("smoke", overrides=slice_overrides), 4, tmp_path / "t")
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("tune plan, 4 trials per paradigm at default settings: 60 users x ") and "4 fits;" in line
