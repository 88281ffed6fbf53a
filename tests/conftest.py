"""Shared fixtures: tiny real data (a slice of ml-100k) and a per-session cache folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = FIXTURES.parent.parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """One cache for the whole session, so the tiny encoder is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def slice_overrides(cache_root) -> list:
    """Config overrides that point a run at the ml-100k slice and the session cache."""
    return [{"data": {"dataset": "ml-slice", "data_dir": str(FIXTURES)}, "cache_dir": str(cache_root)}]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m bench ARGS`` in a subprocess and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)
