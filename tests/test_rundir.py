"""The run directory's typed manifest and its format version."""
import json
import shutil
from pathlib import Path

import pytest

from bench import report
from bench.errors import BenchError
from bench.rundir import FORMAT_VERSION, Manifest, Run

COMMITTED = Path(__file__).resolve().parent.parent / "results" / "ml-100k-default"


def _copy(tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(COMMITTED, copy)
    return copy


def test_a_committed_run_reads_back_typed(tmp_path):
    run = Run.from_disk(_copy(tmp_path))
    assert run.manifest.dataset == "ml-100k" and run.manifest.format_version == FORMAT_VERSION
    assert run.manifest.version("sasrec") == run.manifest.paradigms["sasrec"]["version"]
    assert run.manifest.trainable_parameters("pop") == 0
    assert set(run.paradigms) == set(run.manifest.paradigms)


def test_another_format_version_is_a_one_line_error_naming_both(tmp_path):
    path = _copy(tmp_path)
    data = json.loads((path / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BenchError, match=rf"format version {FORMAT_VERSION + 1}, but this bench reads version "
                                         rf"{FORMAT_VERSION}") as err:
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
