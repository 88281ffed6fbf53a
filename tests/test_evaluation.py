"""One (paradigm, seed) job: the typed result of ``run_job`` and the one context ``bench run`` and ``bench tune`` fit
with."""
import dataclasses
import json

import optuna
import pandas as pd
import pytest
import torch

from bench import plan, registry, tune
from bench.config import load_config
from bench.evaluation import JobResult, job_context, run_job
from bench.resources import Resources, Timings
from bench.rundir import ID_COLUMNS

CONTEXTS = []


class _Recorder(registry.Paradigm):
    version = "3"
    description = "records the context it is fitted with"

    def fit(self, split, context):
        CONTEXTS.append(context)
        self._n = split.n_items
        self.info = {"fitted": True}

    def score(self, users, stage):
        return torch.arange(self._n, dtype=torch.float32).expand(len(users), -1).clone()

    def token_usage(self, users, stage):
        return None


@pytest.fixture
def shared(isolated_paradigms, slice_overrides):
    registry.register("recorder")(type("Recorder", (_Recorder,), {}))
    cfg = load_config("smoke", overrides=[*slice_overrides, "seeds=[4, 5]"])
    CONTEXTS.clear()
    return plan.arms("recorder", cfg)[0], Resources(cfg, torch.device("cpu"), None, Timings())


def test_run_job_returns_a_typed_result_with_ids_and_ranks_only(shared):
    arm, resources = shared
    job = run_job(arm, 4, resources, Timings())
    assert isinstance(job, JobResult) and (job.label, job.seed, job.version) == ("recorder", 4, "3")
    assert job.rows.columns.tolist() == list(ID_COLUMNS)  # metrics are computed from the ranks by the report
    assert len(job.rows) == 2 * len(resources.split.users) and set(job.rows["stage"]) == {"valid", "test"}
    assert set(job.info) == {"trainable_parameters", "fit_seconds", "score_seconds", "training"}
    assert job.info["training"] == {"fitted": True} and job.tokens == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.rows = None
    again = JobResult.from_record(job.rows, json.loads(json.dumps(job.record())))
    assert (again.label, again.seed, again.version, again.tokens, again.info) == \
        (job.label, job.seed, job.version, job.tokens, job.info)
    pd.testing.assert_frame_equal(again.rows, job.rows)


def test_bench_tune_fits_with_the_context_bench_run_builds(shared, monkeypatch):
    arm, resources = shared
    built = []
    monkeypatch.setattr(tune, "job_context", lambda *args: built.append(args) or job_context(*args))
    run_job(arm, 4, resources, Timings())
    tune._objective(optuna.trial.FixedTrial({}), arm, arm.config, resources, 4)
    assert len(built) == 1 and built[0][1:] == (4, resources)  # tune asked the runner's function
    expected = job_context(arm, 4, resources)
    by_run, by_tune = CONTEXTS
    for context in (by_run, by_tune):
        assert context.config.hash == expected.config.hash and dict(context.options) == dict(expected.options)
        assert (context.seed, context.device, context.cache_dir) == (4, expected.device, expected.cache_dir)
        assert (context.encoder, context.llm, context.progress) == (expected.encoder, expected.llm, None)
        assert torch.equal(context.generator.get_state(), expected.generator.get_state())
