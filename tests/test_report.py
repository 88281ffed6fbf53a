"""Result tables (markdown, CSV, LaTeX) and plots built from a constructed run directory."""
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from bench import report
from bench.config import load_config
from bench.errors import BenchError
from bench.metrics import metrics_from_ranks
from bench.rundir import FORMAT_VERSION, ID_COLUMNS, Manifest, write_json
from conftest import run_cli
from test_cli import png_size

USERS = 200


def make_run(path, means: dict[str, float], seeds=(0, 1), sweep=None, format_version=FORMAT_VERSION):
    """A run directory whose paradigms rank each user's target within the top 100 with a chance around ``means``
    (seeded noise), and then mostly near the top; ``format_version=1`` writes an old run, whose ``per_user.csv``
    also held the metric columns (as the runner wrote them: ``%.10g``)."""
    rng = np.random.default_rng(0)
    rows, tokens = [], []
    for name, mean in means.items():
        for seed in seeds:
            chance = np.clip(mean + rng.normal(0, 0.05, USERS), 0, 1)
            for stage in ("valid", "test"):
                ranks = np.where(rng.random(USERS) < chance, 1 + (100 * rng.random(USERS) ** 3).astype(int),
                                 101 + rng.integers(0, 900, USERS))
                rows.append(pd.DataFrame({"paradigm": name, "seed": seed, "stage": stage,
                                          "user": [str(u + 1) for u in range(USERS)], "rank": ranks}))
        tokens += [(name, str(u + 1), 20 + u % 40, 4, 5 + u, min(5 + u, 30)) for u in range(USERS)]
    path.mkdir()
    per_user = pd.concat(rows, ignore_index=True)
    if format_version >= 3:
        per_user.insert(3, "protocol", "full")
    if format_version == 1:
        per_user = per_user.assign(**metrics_from_ranks(per_user["rank"], ["hit", "ndcg", "mrr"], [10, 20, 50, 100]))
    per_user.to_csv(path / "per_user.csv", index=False, float_format="%.10g")
    pd.DataFrame(tokens, columns=["paradigm", "user", "hard_tokens", "soft_tokens", "history_len",
                                  "history_kept"]).to_csv(path / "tokens.csv", index=False)
    info = {name: {"version": "1", "seeds": {str(s): {"trainable_parameters": 1000, "fit_seconds": 2.5}
                                             for s in seeds}} for name in means}
    manifest = Manifest(created="2026-01-01T00:00:00+00:00", command="bench run --toy", git_commit=None,
                        config_hash="c" * 12, dataset="toy", split_hash="ab" * 8, split_stats={}, encoder=None,
                        llm={"token_budget": 64}, seeds=list(seeds), versions={}, hardware={}, timings_seconds={},
                        paradigms=info, sweep=sweep, format_version=format_version)
    write_json(path / "manifest.json", manifest.to_dict())
    (path / "config.yaml").write_text(load_config("smoke", overrides=["seeds=[0, 1]"]).to_yaml())
    return path


def edit_config(path, **changes) -> None:
    """Set dotted keys of a run directory's ``config.yaml`` (as an old bench might have written them)."""
    tree = yaml.safe_load((path / "config.yaml").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[last] = value
    (path / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def stage_means(path, metric: str, stage: str = "test") -> dict[str, float]:
    """``{"PARADIGM/SEED_INDEX": mean}`` of ``metric`` in ``metrics.json``."""
    data = json.loads((path / "metrics.json").read_text())["paradigms"]
    return {f"{name}/{i}": v for name, entry in data.items()
            for i, v in enumerate(entry["stages"][stage][metric]["per_seed"])}


def expected_means(path, metric: str, stage: str = "test") -> dict[str, float]:
    """The same, computed here from the ranks in ``per_user.csv``."""
    rows = pd.read_csv(path / "per_user.csv")
    rows = rows[rows["stage"] == stage]
    name, k = metric.split("@")
    rows = rows.assign(value=metrics_from_ranks(rows["rank"], [name], [int(k)])[metric])
    means = rows.groupby(["paradigm", "seed"], sort=False)["value"].mean()
    return {f"{p}/{i}": v for p in dict.fromkeys(rows["paradigm"]) for i, v in enumerate(means[p])}


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
    assert "| a | strong | **0.6050 ± 0.0495**<sup>bc</sup> |" in md
    assert md.index("HR@100") < md.index("NDCG@10") < md.index("HR@10 |")  # main metrics first
    significance = pd.read_csv(built / "significance.csv")
    assert len(significance) == 3 * 5  # 3 pairs x every report metric (each computed from the ranks)


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
    valid, user = table["stage"] == "valid", table["user"].astype(int)
    every = np.where(table["paradigm"] == "strong", 8, 4)  # in the top 100: 1 user in 8 (strong), in 4 (weak)
    table.loc[valid, "rank"] = np.where(user % every == 0, 50, 500)[valid]
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


def test_per_user_metrics_are_computed_from_the_ranks_when_the_report_is_built(built):
    """per_user.csv holds ids and ranks only; metrics.json holds every eval metric at every K, from the ranks."""
    assert list(pd.read_csv(built / "per_user.csv").columns) == list(ID_COLUMNS)
    for metric in ("hit@100", "ndcg@10", "mrr@20", "ndcg@50"):
        assert stage_means(built, metric) == pytest.approx(expected_means(built, metric), rel=1e-9), metric  # values carry 10 significant digits (METRIC_DIGITS)


def test_a_format_1_run_is_reported_from_its_ranks_not_its_stored_metric_columns(tmp_path):
    """Format 1 stored metric columns beside the ranks; they are recomputed (rounded as stored), never trusted."""
    path = make_run(tmp_path / "old", {"strong": 0.6, "weak": 0.3}, format_version=1)
    table = pd.read_csv(path / "per_user.csv")
    assert "ndcg@10" in table.columns
    table["hit@100"] = 0.0  # a stored column that disagrees with the ranks
    table.drop(columns=["ndcg@10"]).to_csv(path / "per_user.csv", index=False, float_format="%.10g")
    report.build(path)
    assert stage_means(path, "hit@100") == pytest.approx(expected_means(path, "hit@100"), rel=1e-12)
    assert stage_means(path, "ndcg@10") == pytest.approx(expected_means(path, "ndcg@10"), rel=1e-9)
    assert "| a | strong | **0." in (path / "results.md").read_text()


def test_report_ks_adds_a_k_to_an_old_run_without_rerunning(tmp_path):
    path = make_run(tmp_path / "old", {"strong": 0.6, "weak": 0.3}, format_version=1)
    config = (path / "config.yaml").read_bytes()
    report.build(path)
    assert "ndcg@5" not in json.loads((path / "metrics.json").read_text())["paradigms"]["strong"]["stages"]["test"]
    result = run_cli("report", str(path), "--set", "report.ks=5")
    assert result.returncode == 0, result.stderr
    test = json.loads((path / "metrics.json").read_text())["paradigms"]["strong"]["stages"]["test"]
    assert {"hit@5", "ndcg@5", "mrr@5", "mrr@100"} <= set(test)
    assert stage_means(path, "ndcg@5") == pytest.approx(expected_means(path, "ndcg@5"), rel=1e-9)
    assert (path / "config.yaml").read_bytes() == config  # the run's record is unchanged
    result = run_cli("report", str(path), "--set", "eval.ks=[5]")
    assert result.returncode == 2 and "report.* keys only" in result.stderr


def test_report_metrics_at_any_k_are_computed_and_an_unknown_one_is_an_error_naming_it(tmp_path):
    path = make_run(tmp_path / "run", {"strong": 0.6, "weak": 0.3})
    edit_config(path, **{"report.metrics": ["hit@100", "ndcg@10", "ndcg@7"]})  # 7 is in no eval.ks
    report.build(path)
    assert "| NDCG@7 |" in (path / "results.md").read_text()
    assert set(pd.read_csv(path / "significance.csv")["metric"]) == {"hit@100", "ndcg@10", "ndcg@7"}
    for wanted, named in (("recall@10", "'recall'"), ("ndcg@0", "'ndcg@0'")):
        edit_config(path, **{"report.metrics": ["hit@100", wanted]})
        with pytest.raises(BenchError, match=named) as err:
            report.build(path)
        assert "\n" not in str(err.value)
    with pytest.raises(BenchError, match="'report.ks' must be >= 1, got 0"):
        report.build(path, ["report.ks=0"])


def test_compare_refuses_runs_that_rank_with_different_history_masking(tmp_path):
    a = make_run(tmp_path / "a", {"strong": 0.6, "weak": 0.3})
    b = make_run(tmp_path / "b", {"strong": 0.6, "weak": 0.3})
    table, _ = report.compare_runs(a, b)
    assert len(table) == 2 * 5 and (table["diff"] == 0).all()
    edit_config(b, **{"eval.mask_history": False})
    with pytest.raises(BenchError, match=r"not comparable: eval.mask_history differs \(True vs False\)") as err:
        report.compare_runs(a, b)
    assert "\n" not in str(err.value)
    manifest = json.loads((b / "manifest.json").read_text())
    write_json(b / "manifest.json", {**manifest, "split_hash": "0" * 16})
    with pytest.raises(BenchError, match="not comparable: split hash differs"):
        report.compare_runs(a, b)  # the first field that differs is named


def keep_seeds(path, seeds) -> None:
    """Drop every other seed's rows from a run directory's ``per_user.csv``."""
    rows = pd.read_csv(path / "per_user.csv", dtype={"user": str})
    rows[rows["seed"].isin(seeds)].to_csv(path / "per_user.csv", index=False)


def test_compare_pairs_runs_on_the_seeds_they_share(tmp_path):
    """Run B is run A's seed 1 alone: compared on seed 1 the runs are identical, where A's mean over seeds 0 and 1
    would differ from B by seed variance alone. Runs with no seed in common are compared as they are, and said so."""
    a = make_run(tmp_path / "a", {"strong": 0.6, "weak": 0.3})
    b = make_run(tmp_path / "b", {"strong": 0.6, "weak": 0.3})
    keep_seeds(b, [1])
    table, alpha = report.compare_runs(a, b)
    assert (table["diff"] == 0).all() and (table["ties"] == USERS).all()
    assert "seeds: 1 (the seeds both runs have; A has 0, 1, B 1)" in report.compare_md(table, a, b, alpha)
    keep_seeds(a, [0])
    table, alpha = report.compare_runs(a, b)
    assert (table["diff"] != 0).any()
    assert "seeds: none in common (A 0, B 1)" in report.compare_md(table, a, b, alpha)


def test_an_undefined_test_shows_as_nan_not_as_p_1(tmp_path):
    table = pd.DataFrame([{"metric": "ndcg@10", "a": "A:x", "b": "B:x", "mean_a": 0.5, "mean_b": 0.25, "diff": 0.25,
                           "rel_diff_pct": 100.0, "ci_low": 0.25, "ci_high": 0.25, "t_p": np.nan,
                           "wilcoxon_p": 1.0, "p_holm": np.nan, "wins": 1, "ties": 0, "losses": 0}])
    assert report.significance_csv(table).splitlines()[1] == "ndcg@10,A:x,B:x,0.5,0.25,0.25,100,0.25,0.25,nan,1,nan,1,0,0"
    assert "| n/a | 1 | n/a | 1/0/0 |" in report.compare_md(table, tmp_path, tmp_path, 0.05)
