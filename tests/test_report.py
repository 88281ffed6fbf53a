"""Result tables (markdown, CSV, LaTeX) and plots built from a constructed run directory."""
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from bench import report
from bench.config import load_config
from bench.rundir import Manifest, write_json
from test_cli import png_size

USERS = 200


def make_run(path, means: dict[str, float], seeds=(0, 1), sweep=None):
    """A run directory whose paradigms have per-user NDCG/HR around ``means`` (seeded noise)."""
    rng = np.random.default_rng(0)
    rows, tokens = [], []
    for name, mean in means.items():
        for seed in seeds:
            values = np.clip(mean + rng.normal(0, 0.05, USERS), 0, 1)
            for stage in ("valid", "test"):
                for user in range(USERS):
                    rows.append({"paradigm": name, "seed": seed, "stage": stage, "user": str(user + 1), "rank": 5,
                                 "hit@100": values[user], "ndcg@10": values[user] / 2, "hit@10": values[user] / 3})
        tokens += [(name, str(u + 1), 20 + u % 40, 4, 5 + u, min(5 + u, 30)) for u in range(USERS)]
    path.mkdir()
    pd.DataFrame(rows).to_csv(path / "per_user.csv", index=False)
    pd.DataFrame(tokens, columns=["paradigm", "user", "hard_tokens", "soft_tokens", "history_len",
                                  "history_kept"]).to_csv(path / "tokens.csv", index=False)
    info = {name: {"version": "1", "seeds": {str(s): {"trainable_parameters": 1000, "fit_seconds": 2.5}
                                             for s in seeds}} for name in means}
    manifest = Manifest(created="2026-01-01T00:00:00+00:00", command="bench run --toy", git_commit=None,
                        config_hash="c" * 12, dataset="toy", split_hash="ab" * 8, split_stats={}, encoder=None,
                        llm={"token_budget": 64}, seeds=list(seeds), versions={}, hardware={}, timings_seconds={},
                        paradigms=info, sweep=sweep)
    write_json(path / "manifest.json", manifest.to_dict())
    (path / "config.yaml").write_text(load_config("smoke", overrides=["seeds=[0, 1]"]).to_yaml())
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = make_run(tmp_path_factory.mktemp("report") / "run", {"strong": 0.6, "weak": 0.3, "weak-twin": 0.3})
    report.build(path)
    return path


def test_table_marks_a_clear_winner_and_not_a_tie(built):
    table = pd.read_csv(built / "results.csv", keep_default_na=False)
    rows = table.set_index("paradigm")
    assert list(table["letter"]) == ["a", "b", "c"]
    assert rows.loc["strong", "hit@100_beats"] == "bc" and rows.loc["strong", "ndcg@10_beats"] == "bc"
    assert rows.loc["weak", "hit@100_beats"] == "" and rows.loc["weak-twin", "hit@100_beats"] == ""
    assert rows.loc["strong", "hit@100_std"] > 0 and rows.loc["strong", "mean_prompt_tokens"] == pytest.approx(43.5)
    md = (built / "results.md").read_text()
    assert "| a | strong | **0.5982 ± 0.0037**<sup>bc</sup> |" in md
    assert md.index("HR@100") < md.index("NDCG@10") < md.index("HR@10 |")  # main metrics first
    significance = pd.read_csv(built / "significance.csv")
    assert len(significance) == 3 * 3  # 3 pairs x 3 measured report metrics


def test_latex_table_is_well_formed_and_compiles(built, tmp_path):
    tex = (built / "results.tex").read_text()
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len({line.count("&") for line in body}) == 1 and len(body) == 4  # header + 3 rows, same columns
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"$^{\mathrm{bc}}$" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed; the structure was checked above")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n" + tex +
                   "\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]


def test_latex_escapes_special_characters():
    assert report.tex_escape("my_paradigm 50% & more") == r"my\_paradigm 50\% \& more"


def test_plots_are_drawn_with_readable_sizes(built):
    for name in ("metrics.png", "tokens.png"):
        width, height = png_size(built / name)
        assert width >= 800 and height >= 300, name
    assert not (built / "efficiency.png").exists()  # no sweep in this run


def test_sweep_runs_get_the_data_efficiency_plot(tmp_path):
    labels = {f"m[train_fraction={v}]": {"paradigm": "m", "value": v} for v in (0.1, 0.5, 1.0)}
    means = {label: 0.2 + 0.2 * info["value"] for label, info in labels.items()} | {"pop": 0.25}
    path = make_run(tmp_path / "run", means, sweep={"key": "paradigms.m.train_fraction", "values": [0.1, 0.5, 1.0],
                                                     "labels": labels})
    report.build(path)
    width, height = png_size(path / "efficiency.png")
    assert width >= 800 and height >= 300


def test_missing_file_is_a_one_line_error(tmp_path):
    path = make_run(tmp_path / "run", {"x": 0.1})
    (path / "manifest.json").unlink()
    with pytest.raises(report.BenchError, match="manifest.json is missing"):
        report.build(path)


def test_results_md_has_a_validation_table_from_the_valid_stage_only(tmp_path):
    """Settings are chosen on validation, so results.md shows it apart from the test table, per paradigm."""
    path = make_run(tmp_path / "run", {"strong": 0.6, "weak": 0.3})
    table = pd.read_csv(path / "per_user.csv")
    valid = table["stage"] == "valid"
    table.loc[valid, "hit@100"] = np.where(table.loc[valid, "paradigm"] == "strong", 0.125, 0.25)
    table.to_csv(path / "per_user.csv", index=False)
    report.build(path)
    md = (path / "results.md").read_text()
    validation = md.split("## Validation", 1)[1].split("\n## ", 1)[0]
    assert "| strong | 0.1250 ± 0.0000 |" in validation and "| weak | 0.2500 ± 0.0000 |" in validation
    assert "0.1250" not in md.split("## Validation", 1)[0]  # the test table is untouched by validation values


def test_training_samples_get_a_column_once_recorded(tmp_path):
    """Accuracy per training sample needs the count: recorded per seed by the training loop, shown when known."""
    old = make_run(tmp_path / "old", {"strong": 0.6, "weak": 0.3})
    report.build(old)
    assert "training samples" not in (old / "results.md").read_text()  # runs from before the record: unchanged
    path = make_run(tmp_path / "run", {"strong": 0.6, "weak": 0.3})
    manifest = json.loads((path / "manifest.json").read_text())
    for info in manifest["paradigms"]["strong"]["seeds"].values():
        info["training"] = {"training_samples": 1234, "epochs": 2}
    write_json(path / "manifest.json", manifest)
    report.build(path)
    md = (path / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("|  | paradigm"))
    assert header.endswith("| trainable params | training samples | mean prompt tokens | train time (s) |")
    assert "| 1,000 | 1,234 | 43.5 | 2.5 |" in md and "| 1,000 | - | 43.5 | 2.5 |" in md
    assert pd.read_csv(path / "results.csv").set_index("paradigm").loc["strong", "training_samples"] == 1234
    assert r"& Params & Samples & Tokens" in (path / "results.tex").read_text()


def test_budget_note_names_only_values_that_differ_from_the_shared_train_section(tmp_path):
    path = make_run(tmp_path / "run", {"strong": 0.6, "weak": 0.3})
    shared = load_config("smoke")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["paradigms"]["strong"]["options"] = {"train": {"learning_rate": shared["train.learning_rate"],
                                                            "negatives": shared["train.negatives"] * 2}}
    manifest["paradigms"]["weak"]["options"] = {"train": {"learning_rate": shared["train.learning_rate"]}}
    write_json(path / "manifest.json", manifest)
    report.build(path)
    md = (path / "results.md").read_text()
    assert f"Training budgets differ: strong: train.negatives={shared['train.negatives'] * 2} (every" in md
    assert "weak: train" not in md  # a tuned config that restates the shared value is the shared budget
