"""The run directory's typed manifest, its format version, and per-user metrics computed from the ranks."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench import report
from bench.errors import BenchError
from bench.rundir import FORMAT_VERSION, ID_COLUMNS, Manifest, Run

COMMITTED = Path(__file__).resolve().parent.parent / "results" / "ml-100k-tuned"  # a committed run of format 1


def _copy(tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(COMMITTED, copy)
    return copy


def test_a_committed_run_reads_back_typed(tmp_path):
    run = Run.from_disk(_copy(tmp_path))
    assert run.manifest.dataset == "ml-100k" and run.manifest.format_version == 1  # committed before version 2
    assert run.manifest.version("sasrec") == run.manifest.paradigms["sasrec"]["version"]
    assert run.manifest.trainable_parameters("pop") == 0
    assert set(run.paradigms) == set(run.manifest.paradigms)


def test_another_format_version_is_a_one_line_error_naming_both(tmp_path):
    path = _copy(tmp_path)
    data = json.loads((path / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BenchError, match=rf"format version {FORMAT_VERSION + 1}, but this bench reads versions "
                                         rf"1, 2, {FORMAT_VERSION}") as err:
        report.build(path)
    assert "\n" not in str(err.value)


def test_a_manifest_missing_a_field_names_it(tmp_path):
    data = Run.from_disk(_copy(tmp_path)).manifest.to_dict()
    del data["split_hash"]
    with pytest.raises(BenchError, match="m.json: field 'split_hash' is missing"):
        Manifest.from_dict(data, "m.json")


def test_manifest_round_trips_through_its_dict(tmp_path):
    manifest = Run.from_disk(_copy(tmp_path)).manifest
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def test_a_format_1_runs_metrics_are_recomputed_from_its_ranks_exactly_as_it_stored_them():
    """Format 1 stored the metric columns (10 significant digits) and its tables were computed from them: the
    recomputed columns are those values exactly, in the same order, so its tables rebuild byte for byte."""
    stored = pd.read_csv(COMMITTED / "per_user.csv", dtype={"user": str})
    run = Run.from_disk(COMMITTED)
    columns = [c for c in stored.columns if c not in ID_COLUMNS]
    assert run.metrics == ["hit@100", "ndcg@10"] + [c for c in columns if c not in ("hit@100", "ndcg@10")]
    assert list(run.per_user.columns) == [*ID_COLUMNS, *run.metrics]
    for column in columns:
        assert (run.per_user[column].to_numpy() == stored[column].to_numpy()).all(), column


def test_a_new_run_directory_keeps_ids_and_ranks_only(tmp_path):
    run = Run.from_disk(COMMITTED)
    manifest = Manifest.from_dict({**run.manifest.to_dict(), "format_version": FORMAT_VERSION})
    Run.write(tmp_path, run.per_user, [], manifest)  # rows that carry metric columns: only ids and ranks are kept
    assert pd.read_csv(tmp_path / "per_user.csv").columns.tolist() == list(ID_COLUMNS)
    assert json.loads((tmp_path / "manifest.json").read_text())["format_version"] == FORMAT_VERSION == 3


def test_a_gzipped_per_user_file_reads_back_the_same_run(tmp_path):
    """A large run may keep per_user.csv as per_user.csv.gz: the report rebuilds the same numbers from it, and
    --resume still sees a finished run."""
    import gzip

    from bench.state import RunState

    plain, packed = _copy(tmp_path / "a"), _copy(tmp_path / "b")
    (packed / "per_user.csv.gz").write_bytes(gzip.compress((packed / "per_user.csv").read_bytes()))
    (packed / "per_user.csv").unlink()
    report.build(plain)
    report.build(packed)
    assert (packed / "metrics.json").read_text() == (plain / "metrics.json").read_text()
    assert not (packed / "per_user.csv").exists()
    with pytest.raises(BenchError, match="already finished"):
        RunState(packed).resume()
