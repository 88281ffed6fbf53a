"""The README stays true: its plugin example runs through the harness, and its reference results are the committed
run directories, whose tables `bench report` reproduces byte for byte."""
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench import plan, registry, report, runner
from bench.config import load_config
from bench.tune import as_config
from conftest import uninterrupted

README = Path(__file__).resolve().parent.parent / "README.md"
COMMITTED_RUNS = [p.name for p in (README.parent / "results").iterdir() if (p / "manifest.json").is_file()]


def test_readme_paradigm_example_runs_through_the_harness(isolated_paradigms, slice_overrides, tmp_path):
    section = README.read_text().split("## Adding a paradigm", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.splitlines()) < 40
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    cfg = load_config("smoke", overrides=[*slice_overrides, "paradigms.my-paradigm.alpha=2.0"])
    out = runner.run("my-paradigm,pop", cfg, tmp_path / "run")
    table = pd.read_csv(out / "per_user.csv")
    mine, pop = (table[table["paradigm"] == p]["rank"].to_numpy() for p in ("my-paradigm", "pop"))
    assert (mine == pop).all()  # scaled popularity ranks exactly like popularity


def _reference_section() -> str:
    return README.read_text().split("## Reference results", 1)[1].split("\n## ", 1)[0]


def test_readme_reference_tables_match_the_committed_results():
    """The section's tables quote committed runs row for row (header, rule and the paradigms): ml-100k default
    (11) and its beyond-accuracy table (11), ml-100k tuned (7) and Amazon Beauty (11)."""
    rows = [line for line in _reference_section().splitlines() if line.startswith("|")]
    committed = "\n".join((README.parent / "results" / name / "results.md").read_text() for name in COMMITTED_RUNS)
    assert len(rows) == 13 + 13 + 9 + 13 and [row for row in rows if row not in committed.splitlines()] == []


def test_readme_prose_figures_are_in_the_committed_runs():
    """Every 4-decimal figure the reference section's prose quotes is in a run's tables or per-seed means
    (test or validation), or a committed tune's scores and tuned values."""
    prose = "\n".join(line for line in _reference_section().splitlines() if not line.startswith("|"))
    known = ""
    for name in COMMITTED_RUNS:
        run = README.parent / "results" / name
        known += (run / "results.md").read_text() + (run / "significance.csv").read_text()
        metrics = json.loads((run / "metrics.json").read_text())["paradigms"]
        known += " ".join(f"{v:.4f}" for p in metrics.values() for stage in p["stages"].values()
                          for cell in stage.values() for v in cell["per_seed"])
        stats = json.loads((run / "manifest.json").read_text())["split_stats"]
        known += " ".join(f"{v:,}" for v in stats.values() if isinstance(v, int) and not isinstance(v, bool))
    for tuning in (README.parent / "results").glob("*/trials.csv"):  # committed tunes: scores and tuned values
        scores = pd.read_csv(tuning)["valid_ndcg@10"]
        known += " ".join(f"{v:.4f}" for v in scores) + (tuning.parent / "tuned.yaml").read_text()
    figures = re.findall(r"\b\d\.\d{4}\b|\b\d{1,3},\d{3}\b", prose)
    assert len(figures) > 10 and [f for f in figures if f not in known] == []


def test_committed_reference_tables_are_what_report_makes_of_them(tmp_path):
    assert "ml-100k-default" in COMMITTED_RUNS
    for name in COMMITTED_RUNS:
        committed = README.parent / "results" / name
        copy = tmp_path / name
        shutil.copytree(committed, copy)
        report.build(copy)
        for table in ("results.md", "results.csv", "results.tex", "significance.csv", "metrics.json"):
            assert (copy / table).read_bytes() == (committed / table).read_bytes(), f"{name}/{table}"


def test_the_committed_tuning_is_equal_effort_and_its_tuned_yaml_is_the_best_trial():
    """results/ml-100k-tuning: every paradigm with a search space got the same number of complete trials, the ones
    `bench tune` tries from scratch (the default first), and tuned.yaml holds each one's best trial."""
    tuning = README.parent / "results" / "ml-100k-tuning"
    trials = pd.read_csv(tuning / "trials.csv")
    tuned = yaml.safe_load((tuning / "tuned.yaml").read_text())["paradigms"]
    cfg, counts = load_config(), {}
    for arm in plan.arms(",".join(trials.paradigm.unique()), cfg):
        group = trials[trials.paradigm == arm.label].sort_values("trial")
        counts[arm.label] = len(group)
        assert [json.loads(p) for p in group.params] == uninterrupted(cfg, arm.label, len(group))
        best = json.loads(group.loc[group["valid_ndcg@10"].idxmax(), "params"])
        assert as_config(arm.label, best).get("paradigms", {}).get(arm.label) == tuned.get(arm.label), arm.label
    searched = {label: n for label, n in counts.items() if registry.get(label).search_space}
    assert len(searched) >= 4 and set(searched.values()) == {6} and set(counts.values()) <= {1, 6}


def test_the_tuned_run_reproduces_each_best_trial_on_seed_0():
    """results/ml-100k-tuned runs tuned.yaml for every tuned paradigm: its seed-0 validation NDCG@10 is the best
    trial's score (the tune's seed), so the tuned run is what the tune chose."""
    results = README.parent / "results"
    trials = pd.read_csv(results / "ml-100k-tuning" / "trials.csv")
    metrics = json.loads((results / "ml-100k-tuned" / "metrics.json").read_text())["paradigms"]
    assert set(metrics) == set(trials.paradigm)
    for label, group in trials.groupby("paradigm"):
        seed0 = metrics[label]["stages"]["valid"]["ndcg@10"]["per_seed"][0]
        assert seed0 == pytest.approx(group["valid_ndcg@10"].max(), rel=1e-5), label
