"""Tables, significance tests and plots of a run, rebuilt from its saved files alone.

Inputs: ``per_user.csv`` (ranks), ``tokens.csv``, ``manifest.json`` and ``config.yaml`` (its ``eval`` metrics and
``report`` section); every metric is computed from the ranks here (:meth:`bench.rundir.Run.from_disk`).
Outputs: ``metrics.json`` (every computed metric), ``significance.csv``, ``results.md``, ``results.csv``,
``results.tex`` and the plots. ``bench report RUN_DIR`` calls :func:`build`, so what a run writes and what a later
re-analysis writes are produced by the same code and are byte-identical; ``bench report RUN_DIR --set
report.ks=5`` reports the same ranks with more (``report.*``) settings, without rerunning anything.
An undefined test (a NaN p-value) is written as ``nan`` in ``significance.csv`` and ``n/a`` in ``bench compare``.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import plots, stats
from bench.cache import atomic_write_text
from bench.errors import BenchError
from bench.rundir import Run, display_name, incomparable, write_json

LETTERS = string.ascii_lowercase + string.ascii_uppercase


def summarise(per_user: pd.DataFrame, metrics: list[str]) -> dict[str, dict[str, dict[str, dict]]]:
    """``{paradigm: {stage: {metric: {"mean", "std", "per_seed"}}}}`` for each of ``metrics`` (columns of
    ``per_user``): mean over users per seed, then the mean and sample standard deviation (0 for one seed) over
    seeds."""
    out: dict = {}
    seed_means = per_user.groupby(["paradigm", "stage", "seed"], sort=False)[metrics].mean()
    for (paradigm, stage), table in seed_means.groupby(level=[0, 1], sort=False):
        stage_out = out.setdefault(paradigm, {}).setdefault(stage, {})
        for metric in metrics:
            values = table[metric].to_numpy(dtype=np.float64)
            stage_out[metric] = {"mean": float(values.mean()),
                                 "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                 "per_seed": [float(v) for v in values]}
    return out


def significance_csv(tests: pd.DataFrame) -> str:
    """A significance table as CSV; an undefined test's NaN p-value is written ``nan``, never left blank."""
    return tests.to_csv(index=False, float_format="%.6g", na_rep="nan")


def significance(run: Run) -> pd.DataFrame:
    """Pairwise tests of every paradigm pair of the run on ``report.metrics`` (test stage)."""
    cfg = run.config
    return stats.compare(run.per_user, run.report_metrics, "test", cfg["report.bootstrap"], cfg["report.seed"],
                         cfg["report.test"])


def build(run_dir: Path, overrides=()) -> None:
    """(Re)write every table and plot of ``run_dir`` from its saved files; ``overrides`` (``report.*`` keys,
    ``--set``-style) change this report's settings, not the run's saved ``config.yaml``."""
    run = Run.from_disk(run_dir, overrides)
    summary = summarise(run.per_user, run.metrics)
    write_json(run.path / "metrics.json", {
        "dataset": run.manifest.dataset, "split_hash": run.manifest.split_hash,
        "paradigms": {name: {"version": run.manifest.version(name), "stages": stages}
                      for name, stages in summary.items()}})
    tests = significance(run)
    atomic_write_text(run.path / "significance.csv", significance_csv(tests))
    table = results_table(run, summary, tests)
    atomic_write_text(run.path / "results.csv", table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(run.path / "results.md", results_md(run, table, summary))
    atomic_write_text(run.path / "results.tex", results_tex(run, table))
    plots.draw_all(run)


# -- the results table ---------------------------------------------------------------------------------------
def results_table(run: Run, summary: dict, tests: pd.DataFrame) -> pd.DataFrame:
    """One row per paradigm: letter, mean/std (over seeds) of each report metric and the letters of the
    paradigms it beats significantly, trainable parameters, mean prompt tokens, mean fit seconds."""
    metrics = run.report_metrics
    letters = dict(zip(run.paradigms, LETTERS))
    wins = stats.beaten(tests, run.config["report.alpha"])
    prompt = (run.tokens["hard_tokens"] + run.tokens["soft_tokens"]).groupby(run.tokens["paradigm"]).mean()
    rows = []
    for name in run.paradigms:
        row: dict[str, Any] = {"letter": letters[name], "paradigm": name,
                               "version": run.manifest.version(name)}
        for metric in metrics:
            cell = summary[name].get("test", {}).get(metric, {})
            row[f"{metric}_mean"], row[f"{metric}_std"] = cell.get("mean"), cell.get("std")
            row[f"{metric}_beats"] = "".join(sorted(letters[b] for b in wins.get(metric, {}).get(name, [])))
        row["trainable_parameters"] = run.manifest.trainable_parameters(name)
        row["training_samples"] = run.manifest.training_samples(name)
        row["mean_prompt_tokens"] = float(prompt[name]) if name in prompt.index else None
        row["fit_seconds"] = run.manifest.fit_seconds(name)
        rows.append(row)
    return pd.DataFrame(rows)


def _best(table: pd.DataFrame, metric: str) -> set[str]:
    means = table[f"{metric}_mean"]
    return set(table.loc[means == means.max(), "paradigm"]) if means.notna().any() else set()


def _caption(run: Run) -> str:
    n_paradigms = len(run.paradigms)
    n_tests = len(run.report_metrics) * n_paradigms * (n_paradigms - 1) // 2
    seeds = run.seeds
    spread = f", then mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1 \
        else f" (seed {seeds[0]})"
    test = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}[run.config["report.test"]]
    return (f"Test stage, full ranking over all items; mean over users{spread}. A superscript lists the "
            f"paradigms (by letter) that a paradigm beats significantly: {test} on per-user values averaged "
            f"over seeds, Holm-corrected over all {n_tests} comparisons of the run, "
            f"p < {run.config['report.alpha']:g}. Best value per column in bold.")


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _with_samples(table: pd.DataFrame) -> bool:
    """Whether the tables get a training-samples column (runs made before it was recorded have none)."""
    return bool(table["training_samples"].notna().any())


def _extra_headers(table: pd.DataFrame) -> list[str]:
    return ["trainable params", *(["training samples"] if _with_samples(table) else []), "mean prompt tokens",
            "train time (s)"]


def _extras(row: pd.Series, with_samples: bool) -> list[str]:
    params = "" if pd.isna(row["trainable_parameters"]) else f"{int(row['trainable_parameters']):,}"
    samples = ["-" if pd.isna(row["training_samples"]) else f"{int(row['training_samples']):,}"] if with_samples \
        else []
    tokens = "-" if pd.isna(row["mean_prompt_tokens"]) else f"{row['mean_prompt_tokens']:.1f}"
    seconds = "" if pd.isna(row["fit_seconds"]) else f"{row['fit_seconds']:.1f}"
    return [params, *samples, tokens, seconds]


def results_md(run: Run, table: pd.DataFrame, summary: dict) -> str:
    """Markdown results table with superscript letters, the run's identity, the validation table and the
    prompt-cost table."""
    metrics = run.report_metrics
    manifest, multi = run.manifest, len(run.seeds) > 1
    lines = [f"# Results: {manifest.dataset}", "",
             _caption(run), "",
             f"- split `{manifest.split_hash}`, config `{manifest.config_hash}`, "
             f"encoder `{(manifest.encoder or {}).get('key', 'none')}`",
             f"- command: `{manifest.command}`",
             "- every pairwise test (p-values, bootstrap 95% CI, wins/ties/losses): `significance.csv`", ""]
    header, with_samples = ["", "paradigm", *map(display_name, metrics), *_extra_headers(table)], _with_samples(table)
    lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    best = {m: _best(table, m) for m in metrics}
    for _, row in table.iterrows():
        cells = [row["letter"], row["paradigm"]]
        for metric in metrics:
            text = _number(row[f"{metric}_mean"]) + (f" ± {_number(row[f'{metric}_std'])}" if multi else "")
            text = f"**{text}**" if row["paradigm"] in best[metric] else text
            beats = row[f"{metric}_beats"]
            cells.append(text + (f"<sup>{beats}</sup>" if isinstance(beats, str) and beats else ""))
        lines.append("| " + " | ".join(cells + _extras(row, with_samples)) + " |")
    lines.append("")
    own = _own_budgets(manifest, run.config)
    if own:
        lines += ["Training budgets differ: " + "; ".join(own) + " (every other paradigm: the shared `train` "
                  "section).", ""]
    lines += _validation_md(run, summary)
    if len(run.tokens):
        lines += _token_md(run.tokens)
    return "\n".join(lines)


def _validation_md(run: Run, summary: dict) -> list[str]:
    """The report metrics on the validation stage (what early stopping, tuning and defaults are chosen on)."""
    metrics, multi = run.report_metrics, len(run.seeds) > 1
    lines = ["## Validation", "", "The same metrics on the validation stage (each user's second-to-last item), "
             "where early stopping, `bench tune` and the defaults choose; compare settings here, not on the test "
             "table.", "", "| paradigm | " + " | ".join(map(display_name, metrics)) + " |",
             "|---|" + "---:|" * len(metrics)]
    for name in run.paradigms:
        cells = []
        for metric in metrics:
            cell = summary[name].get("valid", {}).get(metric)
            cells.append("" if cell is None else _number(cell["mean"]) + (f" ± {_number(cell['std'])}" if multi
                                                                          else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _own_budgets(manifest, config) -> list[str]:
    """``"NAME: train.KEY=VALUE, ..."`` for every paradigm that set its own training values, where they differ
    from the shared ``train`` section (a tuned configuration may restate the shared values)."""
    out = []
    for label, entry in manifest.paradigms.items():
        own = {k: v for k, v in ((entry.get("options") or {}).get("train") or {}).items() if v != config[f"train.{k}"]}
        if own:
            out.append(f"{label}: " + ", ".join(f"train.{k}={v}" for k, v in own.items()))
    return out


def _token_md(tokens: pd.DataFrame) -> list[str]:
    lines = ["## Prompt cost", "", "First seed, test-stage prompts; soft positions (RA-Rec) count as tokens.", "",
             "| paradigm | mean prompt tokens | p95 prompt tokens | mean history carried | users with history cut |",
             "|---|---:|---:|---:|---:|"]
    for name, table in tokens.groupby("paradigm", sort=False):
        length = table["hard_tokens"] + table["soft_tokens"]
        carried = (table["history_kept"] / table["history_len"].clip(lower=1)).mean()
        cut = (table["history_kept"] < table["history_len"]).mean()
        lines.append(f"| {name} | {length.mean():.1f} | {np.percentile(length, 95):.0f} | {carried:.1%} | "
                     f"{cut:.1%} |")
    return lines + [""]


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def results_tex(run: Run, table: pd.DataFrame) -> str:
    """A ``table`` environment of the results table (needs ``\\usepackage{booktabs,graphicx}``), scaled to the
    line width."""
    metrics = run.report_metrics
    multi = len(run.seeds) > 1
    best = {m: _best(table, m) for m in metrics}
    with_samples = _with_samples(table)
    header = ["", "Paradigm", *(tex_escape(display_name(m)) for m in metrics), "Params",
              *(["Samples"] if with_samples else []), "Tokens", "Time (s)"]
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(run.manifest.dataset)}: {tex_escape(_caption(run))}}}",
             rf"\label{{tab:bench-{tex_escape(run.manifest.dataset)}}}",
             r"\resizebox{\linewidth}{!}{%", r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        cells = [row["letter"], tex_escape(row["paradigm"])]
        for metric in metrics:
            value = _number(row[f"{metric}_mean"])
            value = rf"\textbf{{{value}}}" if row["paradigm"] in best[metric] else value
            if multi:
                value += rf"{{\scriptsize$\pm${_number(row[f'{metric}_std'])}}}"
            beats = row[f"{metric}_beats"]
            cells.append(value + (rf"$^{{\mathrm{{{beats}}}}}$" if isinstance(beats, str) and beats else ""))
        cells += [tex_escape(x) for x in _extras(row, with_samples)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines).replace("±", r"$\pm$")


# -- two runs ------------------------------------------------------------------------------------------------
def compare_runs(dir_a: Path, dir_b: Path) -> tuple[pd.DataFrame, float]:
    """Paired tests of every paradigm present in both runs, run A's against run B's (labels ``A:NAME`` and
    ``B:NAME``), on run A's ``report.metrics`` (computed from each run's ranks); Holm over all rows. The runs must
    be comparable (:func:`bench.rundir.incomparable`: same split, same history masking), else a one-line error
    naming the field that differs. Returns the table and run A's ``report.alpha``."""
    run_a, run_b = Run.from_disk(dir_a), Run.from_disk(dir_b)
    reason = incomparable(run_a, run_b)
    if reason:
        raise BenchError(reason)
    common = [p for p in run_a.paradigms if p in run_b.paradigms]
    if not common:
        raise BenchError(f"{dir_a} and {dir_b} have no paradigm in common; `bench compare` tests the same "
                         "paradigm across two runs")
    metrics = run_a.report_metrics
    rows_b = run_b.with_metrics(metrics)
    matrices = {}
    for metric in metrics:
        left = stats.user_matrix(run_a.per_user, metric)[common].add_prefix("A:")
        right = stats.user_matrix(rows_b, metric)[common].add_prefix("B:")
        matrices[metric] = left.join(right, how="inner")
    cfg = run_a.config
    table = stats.compare_pairs(matrices, [(f"A:{p}", f"B:{p}") for p in common], cfg["report.bootstrap"],
                                cfg["report.seed"], cfg["report.test"])
    return table, cfg["report.alpha"]


def _p(value: float) -> str:
    """A p-value for a table: ``n/a`` when the test is undefined (NaN)."""
    return "n/a" if pd.isna(value) else f"{value:.3g}"


def compare_md(table: pd.DataFrame, dir_a: Path, dir_b: Path, alpha: float) -> str:
    """Markdown view of :func:`compare_runs`' table (``n/a``: a test undefined for these values)."""
    lines = [f"A = {dir_a}", f"B = {dir_b}", "",
             "| metric | paradigm | A | B | A - B | 95% CI | rel. % | t p | Wilcoxon p | Holm p | wins/ties/losses |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for row in table.itertuples(index=False):
        mark = " *" if row.p_holm < alpha and row.diff != 0 else ""
        lines.append(f"| {display_name(row.metric)} | {row.a[2:]} | {row.mean_a:.4f} | {row.mean_b:.4f} | "
                     f"{row.diff:+.4f}{mark} | [{row.ci_low:+.4f}, {row.ci_high:+.4f}] | {row.rel_diff_pct:+.1f} | "
                     f"{_p(row.t_p)} | {_p(row.wilcoxon_p)} | {_p(row.p_holm)} | {row.wins}/{row.ties}/{row.losses} |")
    lines += ["", f"* significant after Holm correction over the {len(table)} tests (p < {alpha:g})", ""]
    return "\n".join(lines)
