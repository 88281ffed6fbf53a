"""Equal-effort tuning: the same number of Optuna trials for every paradigm, scored on validation only.

Each paradigm declares its ``search_space`` (option names, or shared ``train`` keys it may set for itself). One
study per paradigm (TPE, seeded with the run's first seed) is kept in ``DIR/study.db`` (SQLite), so an
interrupted tune continues where it stopped: the trial cut off runs again, and the sampler skips the values
earlier trials drew, so the continued study tries what an uninterrupted one would (exactly so while TPE samples
at random, its first 10 complete trials), never the same values twice. The first trial of every study is the
paradigm's default configuration, so the tuned configuration is never worse than the default on validation. A
trial fits the paradigm once (first seed) on the run's split, encoder and backbone and scores it by validation
NDCG@10; the test stage is never looked at. Paradigms with nothing to tune get their default trial only.

Writes ``DIR/tuned.yaml`` (the best values, a file ``bench run --config`` reads), ``DIR/trials.csv``
(``paradigm,trial,params,valid_ndcg@10,seconds``) and ``DIR/tuning.png`` (best-so-far validation NDCG@10 per trial).
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from bench import estimate, plan
from bench.cache import atomic_write_text
from bench.config import Config, with_overrides
from bench.errors import BenchError
from bench.evaluation import fit_paradigm, job_context, validation_ndcg
from bench.progress import progress_bar
from bench.resources import Resources, Timings, pick_device

STARTUP_TRIALS = 10  # TPE draws at random until this many trials completed (Optuna's default)


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    """One value per key of ``space`` drawn by the Optuna ``trial``."""
    values = {}
    for key, spec in space.items():
        if spec[0] == "choice":
            values[key] = trial.suggest_categorical(key, list(spec[1]))
        elif spec[0] == "int":
            values[key] = trial.suggest_int(key, spec[1], spec[2], log=spec[3:] == ("log",))
        else:
            values[key] = trial.suggest_float(key, spec[1], spec[2], log=spec[3:] == ("log",))
    return values


def default_values(arm: plan.Arm) -> dict[str, Any]:
    """The values the paradigm runs with by default, for every key of its search space."""
    return {key: arm.config[key] if key.startswith("train.") else arm.options[key] for key in arm.cls.search_space}


def as_config(name: str, values: dict[str, Any]) -> dict:
    """``{"paradigms": {name: {option: value, "train": {key: value}}}}`` for ``values`` of a search space."""
    section: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith("train."):
            section.setdefault("train", {})[key.split(".", 1)[1]] = value
        else:
            section[key] = value
    return {"paradigms": {name: section}} if section else {}


def tune(spec: str, cfg: Config, trials: int, out: Path, progress: Callable | None = None) -> Path:
    """Tune every paradigm of ``spec`` with ``trials`` trials each; write ``out`` (see the module docstring)."""
    import optuna

    if trials < 1:
        raise BenchError(f"--trials {trials}: give at least 1 (the default configuration)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = plan.arms(spec, cfg)
    shared = Resources(cfg, pick_device(cfg["device"]), progress, Timings())
    print(_plan_line(shared, arms, trials), file=sys.stderr)
    shared.prepare(arms)
    storage, seed = f"sqlite:///{(out / 'study.db').resolve()}", cfg["seeds"][0]
    studies = {}
    for arm in arms:
        objective = functools.partial(_objective, arm=arm, cfg=cfg, shared=shared, seed=seed)
        studies[arm.label] = _tune_arm(arm, trials, storage, objective, seed, progress)
        _write(out, studies, arms[:len(studies)])  # after every paradigm: a long tune shows its progress
    return out


def _tune_arm(arm: plan.Arm, trials: int, storage: str, objective: Callable, seed: int, progress: Callable | None):
    """``arm``'s stored study, continued until it has ``trials`` complete trials (1 with nothing to tune)."""
    import optuna

    study = optuna.create_study(study_name=arm.label, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS))
    _queue_default(study, default_values(arm))
    _skip_drawn(study, arm.cls.search_space)
    budget = trials if arm.cls.search_space else 1
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    if done < budget:
        with progress_bar(progress, total=budget, initial=done, desc=f"tune {arm.label}", unit="trial") as bar:
            def advance(study, _trial):
                bar.update(1)
                bar.set_postfix(best_valid_ndcg10=f"{study.best_value:.4f}")

            study.optimize(objective, n_trials=budget - done, callbacks=[advance])
    return study


def _plan_line(shared: Resources, arms: list, trials: int) -> str:
    """The run's plan line for ``trials`` fits of every paradigm at its default settings (an upper bound for the
    paradigms with nothing to tune, which get one)."""
    line = estimate.estimate(arms, trials, shared.split, shared.llms(arms), shared.encoder_cached(arms), shared.device,
                             1).line()
    return line.replace("plan:", f"tune plan, {trials} trials per paradigm at default settings:", 1).replace(
        " jobs;", " fits;", 1)


def _queue_default(study, default: dict[str, Any]) -> None:
    """Make the default configuration the next trial unless it completed or waits already, and run again any
    trial a killed tune left RUNNING (marked failed here; it would otherwise stay RUNNING forever)."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
    complete = [t.params for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if default not in complete and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.enqueue_trial(default)
    for trial in stale:
        params = trial.system_attrs.get("fixed_params", trial.params)
        if params != default and params.keys() == default.keys() and params not in complete:
            study.enqueue_trial(params)


def _skip_drawn(study, space: dict[str, tuple]) -> None:
    """Advance the study's freshly seeded sampler past every value its stored trials drew at random (enqueued
    trials drew none); TPE draws at random until ``STARTUP_TRIALS`` trials completed, and a continued study would
    otherwise draw the same values again."""
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= STARTUP_TRIALS:
        return  # TPE's own proposals follow the trials' scores: they do not repeat the random ones
    for trial in study.get_trials(deepcopy=False):
        if "fixed_params" in trial.system_attrs:
            continue
        for key in space:  # in the order the objective suggests them
            distribution = trial.distributions.get(key)
            if distribution is not None and not distribution.single():
                study.sampler.sample_independent(study, trial, key, distribution)


def _objective(trial, arm: plan.Arm, cfg: Config, shared: Resources, seed: int) -> float:
    """Validation NDCG@10 of ``arm`` with the trial's values."""
    values = suggest(trial, arm.cls.search_space)
    variant = plan.arms(arm.cls.name, with_overrides(cfg, [as_config(arm.cls.name, values)]))[0]
    start = time.perf_counter()
    paradigm = variant.cls()
    fit_paradigm(paradigm, shared.split, job_context(variant, seed, shared))  # as bench run builds it
    score = validation_ndcg(shared.split, paradigm.score, variant.config)
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
    return score


def _write(out: Path, studies: dict, arms: list) -> None:
    rows, tuned = [], {}
    for arm in arms:
        study = studies[arm.label]
        for t in study.trials:
            if t.value is not None:
                rows.append({"paradigm": arm.label, "trial": t.number, "params": json.dumps(t.params, sort_keys=True),
                             "valid_ndcg@10": t.value, "seconds": t.user_attrs.get("seconds")})
        tuned = _merge(tuned, as_config(arm.cls.name, study.best_trial.params))
    trials = pd.DataFrame(rows, columns=["paradigm", "trial", "params", "valid_ndcg@10", "seconds"])
    atomic_write_text(out / "trials.csv", trials.to_csv(index=False, float_format="%.6g"))
    header = "# bench tune: the best values on validation NDCG@10 (trials.csv); use with bench run --config\n"
    atomic_write_text(out / "tuned.yaml", header + yaml.safe_dump(tuned or {"paradigms": {}}, sort_keys=False))
    _plot(trials, out / "tuning.png")


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _plot(trials: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in trials.groupby("paradigm", sort=False):
        group = group.sort_values("trial")
        ax.step(range(1, len(group) + 1), group["valid_ndcg@10"].cummax(), where="post", marker="o", label=label)
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation NDCG@10 so far")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

