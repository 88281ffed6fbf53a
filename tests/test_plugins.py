"""Paradigms from outside: real packages with their own pyproject.toml, installed with pip into a temporary
folder and run through the command line next to the built-in paradigms."""
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from conftest import run_cli

GOOD = '''
import numpy as np
import torch
from bench.registry import Paradigm


class RecentPop(Paradigm):
    """Popularity among the last `window` training items of every user."""

    version = "1"
    description = "Recent popularity (out-of-tree test plugin)."
    defaults = {"window": 5}

    def fit(self, split, context):
        counts = np.zeros(split.n_items)
        for user in split.users:
            np.add.at(counts, split.train_history(int(user))[-context.options["window"]:], 1)
        self.scores = torch.as_tensor(counts, dtype=torch.float32)

    def score(self, users, stage):
        return self.scores.expand(len(users), -1).clone()

    def token_usage(self, users, stage):
        return None


class NoScore:
    version = "1"

    def fit(self, split, context):
        pass

    def token_usage(self, users, stage):
        return None
'''


def make_package(root, name, module, source, entry_points):
    folder = root / name
    folder.mkdir()
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    points = "\n".join(f'"{key}" = "{value}"' for key, value in entry_points.items())
    (folder / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "0.1"

        [tool.setuptools]
        py-modules = ["{module}"]

        [project.entry-points."bench.paradigms"]
        ''') + points + "\n")
    return folder


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    good = make_package(root, "bench-recent-pop", "bench_recent_pop", GOOD,
                        {"recent-pop": "bench_recent_pop:RecentPop"})
    broken = make_package(root, "bench-broken-plugins", "bench_broken", "from bench_recent_pop import *\n", {
        "no-score": "bench_broken:NoScore",            # missing method
        "missing-module": "bench_not_there:Thing",     # import error
        "pop": "bench_broken:RecentPop",               # duplicate of a built-in name
    })
    site = root / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                             "--no-build-isolation", "--target", str(site), str(good), str(broken)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(root / "bench-recent-pop" / "build", ignore_errors=True)
    return site


def test_bench_list_shows_the_plugin_and_names_broken_packages(plugin_path):
    result = run_cli("list", env={"PYTHONPATH": str(plugin_path)})
    assert result.returncode == 0, result.stderr
    assert "recent-pop" in result.stdout and "Recent popularity (out-of-tree test plugin)." in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 3 and all("from package bench-broken-plugins" in w for w in warnings)
    assert any("'no-score'" in w and "no method score()" in w for w in warnings)
    assert any("'missing-module'" in w and "bench_not_there" in w for w in warnings)
    assert any("'pop'" in w and "built-in paradigm" in w for w in warnings)


def test_plugin_runs_through_the_cli_next_to_built_ins(plugin_path, tmp_path, fixtures_dir, cache_root):
    out = tmp_path / "run"
    result = run_cli("run", "--paradigms", "recent-pop,pop", "--dataset", "ml-slice", "--data-dir", str(fixtures_dir),
                     "--preset", "smoke", "--set", "paradigms.recent-pop.window=3", "--out", str(out), "--quiet",
                     env={"PYTHONPATH": str(plugin_path), "BENCH_CACHE": str(cache_root)})
    assert result.returncode == 0, result.stderr
    per_user = pd.read_csv(out / "per_user.csv")
    assert list(dict.fromkeys(per_user["paradigm"])) == ["recent-pop", "pop"]
    assert "| a | recent-pop |" in (out / "results.md").read_text()
    result = run_cli("run", "--paradigms", "no-score", "--preset", "smoke", "--out", str(tmp_path / "x"),
                     env={"PYTHONPATH": str(plugin_path)})
    assert result.returncode == 2 and "bench-broken-plugins" in result.stderr.splitlines()[-1]
