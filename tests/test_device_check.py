"""The prepared GPU check (scripts/device_check.sh) and its report (scripts/device_report.py), on the CPU: the
script is valid bash and stops with one line where no GPU is visible; the report reads a real run directory."""
from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import warnings

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "device_check.sh"


def _report_module():
    spec = importlib.util.spec_from_file_location("device_report", ROOT / "scripts" / "device_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_device_check_stops_with_one_line_without_a_gpu():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("device_check: no GPU visible")


def test_report_measures_a_run_and_tabulates_its_manifest(fixtures_dir, cache_root, tmp_path, monkeypatch):
    report = _report_module()
    out, memory = tmp_path / "run", tmp_path / "memory.json"
    # bench's main (run in-process here) sets signal handlers and the warning format: put them back after
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = report.main(["run", str(memory), "--", "run", "--paradigms", "pop", "--dataset", "ml-slice",
                              "--data-dir", str(fixtures_dir), "--preset", "smoke", "--device", "cpu",
                              "--set", f"cache_dir={cache_root}", "--out", str(out), "--quiet"])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert status == 0
    recorded = json.loads(memory.read_text())
    assert recorded["exit_status"] == 0 and recorded["wall_seconds"] > 0
    assert recorded["peak_allocated_bytes"] is None  # CUDA unused on the CPU
    text = report.table(out, memory)
    assert "| split |" in text and "| pop/seed0 score |" in text and "whole run (wall clock)" in text
    assert "peak GPU memory: not measured" in text
    assert "| pop | 120 |" in text  # 60 users x 2 stages x 1 seed
