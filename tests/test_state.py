"""The resumable working folder: saved jobs are reused only when they are intact and current."""
import numpy as np
import pandas as pd
import pytest

from bench.config import load_config
from bench.rundir import ID_COLUMNS
from bench.errors import BenchError
from bench.evaluation import JobResult
from bench.state import RunState


@pytest.fixture
def state(tmp_path):
    state = RunState(tmp_path / "run")
    state.start(load_config("smoke"), {"spec": "pop", "sweep": None, "argv": None})
    frame = pd.DataFrame({"paradigm": ["pop"], "seed": [0], "stage": ["test"], "user": ["7"], "rank": [3]})
    state.save(0, JobResult("pop", 0, "1", frame, (("pop", "7", 5, 0, 2, 2),), {"fit_seconds": 0.5},
                            {"test": np.array([[4, 2, 9]], dtype=np.int32)}))
    return state


def test_saved_job_is_reused(state):
    job = state.load(0, "pop", 0, "1")
    assert job.rows["user"].tolist() == ["7"] and (job.label, job.seed, job.version) == ("pop", 0, "1")
    assert job.tokens == (("pop", "7", 5, 0, 2, 2),) and job.info == {"fit_seconds": 0.5}
    assert list(job.top_items) == ["test"] and job.top_items["test"].tolist() == [[4, 2, 9]]
    cfg, plan = state.resume()
    assert plan["spec"] == "pop" and cfg.hash == load_config("smoke").hash


@pytest.mark.parametrize("damage, message", [
    ("corrupt", "corrupt"), ("version", "version changed"), ("other", "another job"),
    ("lists", "top-K lists are missing or corrupt")])
def test_stale_or_corrupt_jobs_are_recomputed_with_a_warning(state, damage, message):
    if damage == "corrupt":
        path = state.dir / "jobs" / "0000.csv"
        path.write_text(path.read_text().replace("7", "8"))
    if damage == "lists":  # a job saved before lists were kept, or a damaged one
        (state.dir / "jobs" / "0000.npz").unlink()
    with pytest.warns(UserWarning, match=message):
        version, label = ("2", "pop") if damage == "version" else ("1", "sasrec" if damage == "other" else "pop")
        assert state.load(0, label, 0, version) is None


def test_a_second_start_to_the_same_place_points_at_resume(state):
    with pytest.raises(BenchError, match="--resume"):
        state.start(load_config("smoke"), {"spec": "pop"})


def test_resume_refuses_a_config_from_another_bench_version(state):
    path = state.dir / "config.yaml"
    path.write_text(path.read_text().replace("max_users: 100", "max_users: 101"))
    with pytest.raises(BenchError, match="another version of bench"):
        state.resume()


def test_a_job_saved_by_an_older_bench_keeps_only_its_ids_and_ranks(tmp_path):
    """Format-1 jobs saved metric columns beside the ranks; a resumed run writes ids and ranks only."""
    state = RunState(tmp_path / "run")
    state.start(load_config("smoke"), {"spec": "pop", "sweep": None, "argv": None})
    frame = pd.DataFrame({"paradigm": ["pop"], "seed": [0], "stage": ["test"], "user": ["7"], "rank": [3],
                          "hit@10": [1.0]})
    state.save(0, JobResult("pop", 0, "1", frame))
    assert state.load(0, "pop", 0, "1").rows.columns.tolist() == list(ID_COLUMNS)  # an older job reads as "full"


def test_a_discarded_start_removes_the_folders_it_created_and_only_those(tmp_path):
    """A run that fails before any job leaves no ``results/DATASET/`` behind; a folder that held something
    already, or existed before, stays."""
    state = RunState(tmp_path / "results" / "book" / "run")
    state.start(load_config("smoke"), {"spec": "pop", "sweep": None, "argv": None})
    assert state.dir.is_dir()
    state.discard()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "other-run").mkdir()
    state = RunState(tmp_path / "results" / "book" / "run")
    state.start(load_config("smoke"), {"spec": "pop", "sweep": None, "argv": None})
    state.discard()
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["other-run"]


def test_a_resume_on_different_inputs_is_refused(state):
    """The first job records the split and candidate hashes; a resume that builds different ones (another data
    file or RecBole version) stops with the names of what changed instead of mixing inputs in one run."""
    inputs = {"split": "aa", "candidate lists": {"uni99": "bb"}}
    state.check_inputs(inputs)
    state.check_inputs(dict(inputs))  # the same inputs: resumed
    with pytest.raises(BenchError, match=r"the candidate lists, split changed since .*start the run again"):
        state.check_inputs({"split": "cc", "candidate lists": {"uni99": "dd"}})
