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
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import beyond, plots, stats
from bench.cache import atomic_write_text
from bench.errors import BenchError
from bench.protocols import FULL, parse_protocol
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


def significance(run: Run, metrics: list[str] | None = None) -> pd.DataFrame:
    """Pairwise tests of every paradigm pair of the run on ``metrics`` (default ``report.metrics``; test stage).
    ``run`` holds one protocol's rows (:meth:`Run.for_protocol`)."""
    cfg = run.config
    return stats.compare(run.per_user, metrics or run.report_metrics, "test", cfg["report.bootstrap"],
                         cfg["report.seed"], cfg["report.test"])


@dataclass
class ProtocolReport:
    """One protocol's share of a report: its rows, the metrics that say something under it, their summary,
    the pairwise tests and the results table; ``suffix`` names its files (empty for the main protocol);
    ``beyond``: the beyond-accuracy table (:func:`beyond_accuracy_table`) under full ranking, else ``None``."""

    name: str
    view: Run
    metrics: list[str]
    summary: dict
    tests: pd.DataFrame
    table: pd.DataFrame
    suffix: str
    beyond: pd.DataFrame | None = None


def protocol_reports(run: Run) -> list[ProtocolReport]:
    """Every protocol's :class:`ProtocolReport`, the main (first) one first."""
    out = []
    for index, name in enumerate(run.protocols):
        view, metrics = run.for_protocol(name), run.protocol_metrics(name)
        summary = summarise(view.per_user, view.metrics)
        tests = significance(view, metrics)
        out.append(ProtocolReport(name, view, metrics, summary, tests, results_table(view, summary, tests, metrics),
                                  "" if index == 0 else f"-{name}",
                                  beyond_accuracy_table(run) if name == FULL else None))
    return out


def build(run_dir: Path, overrides=()) -> tuple[Run, list[ProtocolReport]]:
    """(Re)write every table and plot of ``run_dir`` from its saved files; ``overrides`` (``report.*`` keys,
    ``--set``-style) change this report's settings, not the run's saved ``config.yaml``. The main protocol's
    files keep their plain names; every other protocol writes ``results-PROTOCOL.csv`` / ``.tex`` and
    ``significance-PROTOCOL.csv``, and ``results.md`` holds a section per protocol."""
    run = Run.from_disk(run_dir, overrides)
    parts = protocol_reports(run)
    write_json(run.path / "metrics.json", _metrics_json(run, parts))
    for part in parts:
        atomic_write_text(run.path / f"significance{part.suffix}.csv", significance_csv(part.tests))
        table = part.table if part.beyond is None else part.table.merge(
            part.beyond.drop(columns=[c for c in part.beyond if c.endswith("_per_seed")]), on="paradigm", how="left")
        atomic_write_text(run.path / f"results{part.suffix}.csv", table.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(run.path / f"results{part.suffix}.tex", results_tex(part.view, part.table, part.metrics))
    atomic_write_text(run.path / "results.md", results_md(run, parts))
    plots.draw_all(run)
    return run, parts


def _metrics_json(run: Run, parts: list[ProtocolReport]) -> dict:
    """``metrics.json``: the main protocol's metrics under ``paradigms`` (as runs before protocols existed),
    every protocol's under ``protocols`` when the run has any but full ranking, and the beyond-accuracy metrics
    of the stored top-K lists under ``beyond`` (``{NAME: {"test": {METRIC@K: {"mean", "std", "low", "high",
    "per_seed"}}}}``) when the report computes them."""
    def paradigms(summary: dict) -> dict:
        return {name: {"version": run.manifest.version(name), "stages": stages} for name, stages in summary.items()}

    out = {"dataset": run.manifest.dataset, "split_hash": run.manifest.split_hash,
           "paradigms": paradigms(parts[0].summary)}
    if run.protocols != [FULL]:
        out["protocols"] = {part.name: paradigms(part.summary) for part in parts}
    table = next((part.beyond for part in parts if part.beyond is not None), None)
    if table is not None:
        out["beyond"] = {row["paradigm"]: {"test": {column: {part: row[f"{column}_{part}"] for part in BEYOND_PARTS}
                                                    for column in run.config["report.beyond_metrics"]}}
                         for row in table.to_dict("records")}
    return out


# -- the results table ---------------------------------------------------------------------------------------
def results_table(run: Run, summary: dict, tests: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per paradigm: letter, mean/std (over seeds) of each of ``metrics`` (default ``report.metrics``)
    and the letters of the paradigms it beats significantly, trainable parameters, mean prompt tokens, mean fit
    seconds."""
    metrics = metrics or run.report_metrics
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


def _caption(run: Run, metrics: list[str], family: str = "the run") -> str:
    """What a results table shows: stage, protocol (``run`` holds one protocol's rows), averaging and tests."""
    n_paradigms = len(run.paradigms)
    n_tests = len(metrics) * n_paradigms * (n_paradigms - 1) // 2
    seeds = run.seeds
    spread = f", then mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1 \
        else f" (seed {seeds[0]})"
    test = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}[run.config["report.test"]]
    protocol = parse_protocol(run.protocols[0])
    return (f"Test stage, {protocol.describe()}; mean over users{spread}. A superscript lists the "
            f"paradigms (by letter) that a paradigm beats significantly: {test} on per-user values averaged "
            f"over seeds, Holm-corrected over all {n_tests} comparisons of {family}, "
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


def _interim_md(manifest) -> list[str]:
    """The warning atop an interim report of an unfinished run (``bench report OUT --partial``)."""
    partial = manifest.partial
    if not partial:
        return []
    missing = partial["missing"]
    shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
    return [f"**Interim: {partial['finished']} of {partial['jobs']} (paradigm, seed) jobs have finished.** "
            "Paradigms with fewer seeds are averaged over the seeds they have; numbers change as the run goes on."
            + (f" Still to run: {shown}." if missing else ""), ""]


def results_md(run: Run, parts: list[ProtocolReport]) -> str:
    """Markdown results: the main protocol's table with superscript letters and the run's identity, a section per
    other protocol, where the protocols order the paradigms differently, the validation table and the prompt-cost
    table."""
    manifest, main = run.manifest, parts[0]
    family = "the run" if len(parts) == 1 else "the protocol"
    lines = [f"# Results: {manifest.dataset}", ""] + _interim_md(manifest) + [
             _caption(main.view, main.metrics, family), "",
             f"- split `{manifest.split_hash}`, config `{manifest.config_hash}`, "
             f"encoder `{(manifest.encoder or {}).get('key', 'none')}`",
             f"- command: `{manifest.command}`",
             "- every pairwise test (p-values, bootstrap 95% CI, wins/ties/losses): `significance.csv`", ""]
    lines += _table_md(main.view, main.table, main.metrics)
    own = _own_budgets(manifest, run.config)
    if own:
        lines += ["Training budgets differ: " + "; ".join(own) + " (every other paradigm: the shared `train` "
                  "section).", ""]
    for part in parts[1:]:
        lines += [f"## Protocol {part.name}", "", _caption(part.view, part.metrics, family), "",
                  f"Pairwise tests: `significance{part.suffix}.csv`; candidate lists: `candidates.npz` (hash "
                  f"`{manifest.protocols.get(part.name, {}).get('hash', '?')}`).", ""]
        lines += _table_md(part.view, part.table, part.metrics)
    if len(parts) > 1:
        lines += _agreement_md(parts)
    lines += _beyond_md(run, next((part.beyond for part in parts if part.beyond is not None), None))
    lines += _validation_md(main.view, main.summary, main.metrics)
    if len(run.tokens):
        lines += _token_md(run.tokens)
    return "\n".join(lines)


def _table_md(run: Run, table: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The Markdown lines of one results table: mean ± std, superscript letters, best value in bold, extras."""
    multi = len(run.seeds) > 1
    header, with_samples = ["", "paradigm", *map(display_name, metrics), *_extra_headers(table)], _with_samples(table)
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    best = {m: _best(table, m) for m in metrics}
    for _, row in table.iterrows():
        cells = [row["letter"], row["paradigm"]]
        for metric in metrics:
            text = _number(row[f"{metric}_mean"]) + (f" ± {_number(row[f'{metric}_std'])}" if multi else "")
            text = f"**{text}**" if row["paradigm"] in best[metric] else text
            beats = row[f"{metric}_beats"]
            cells.append(text + (f"<sup>{beats}</sup>" if isinstance(beats, str) and beats else ""))
        lines.append("| " + " | ".join(cells + _extras(row, with_samples)) + " |")
    return lines + [""]


# -- beyond accuracy -------------------------------------------------------------------------------------------
BEYOND_PARTS = ("mean", "std", "low", "high", "per_seed")


def beyond_accuracy_table(run: Run, stage: str = "test") -> pd.DataFrame | None:
    """One row per paradigm with stored top-K lists: each ``report.beyond_metrics`` metric's mean and std over
    seeds, its 95% bootstrap interval over users and its value per seed (``_mean``, ``_std``, ``_low``,
    ``_high``, ``_per_seed``: a list in ``run.seeds`` order); ``None`` when the run stored no lists or the config
    names no such metric."""
    lists, columns = run.top_lists, list(run.config["report.beyond_metrics"])
    if lists is None or not columns:
        return None
    beyond.check_k(columns, lists.k, str(run.path))
    catalogue = beyond.Catalogue(lists.popularity, run.config["report.tail_ratio"])
    rows = []
    for name in run.paradigms:
        by_seed = {seed: found for seed in run.seeds if (found := lists.get(name, seed, stage)) is not None}
        if not by_seed:
            continue
        found = beyond.summary(by_seed, columns, catalogue, run.config["report.bootstrap"], run.config["report.seed"])
        rows.append({"paradigm": name, **{f"{c}_{part}": found[c][part] for c in columns for part in BEYOND_PARTS}})
    return pd.DataFrame(rows) if rows else None


def _beyond_md(run: Run, table: pd.DataFrame | None) -> list[str]:
    """The beyond-accuracy section: per run, not per user, so an interval instead of significance letters."""
    if table is None:
        return []
    columns = list(run.config["report.beyond_metrics"])
    multi = len(run.seeds) > 1
    lines = ["## Beyond accuracy", "",
             f"What each paradigm recommends: its top-K lists on the test stage (full ranking), "
             f"{'mean ± std over seeds' if multi else 'one seed'} and [95% interval over users: ± 1.96 bootstrap standard errors]; RecBole's "
             f"definitions (Coverage: share of items recommended to anyone; Gini: inequality of exposure, lower "
             f"is more even; AvgPop: training interactions of a recommended item; Tail: share of the "
             f"{run.config['report.tail_ratio']:g} least popular training items). Lists: `topk.npz`.", "",
             "| paradigm | " + " | ".join(map(beyond.display_name, columns)) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in table.to_dict("records"):
        cells = [beyond_number(c, row[f"{c}_mean"]) + (f" ± {beyond_number(c, row[f'{c}_std'])}" if multi else "")
                 + f" [{beyond_number(c, row[f'{c}_low'])}, {beyond_number(c, row[f'{c}_high'])}]" for c in columns]
        lines.append(f"| {row['paradigm']} | " + " | ".join(cells) + " |")
    return lines + [""]


def beyond_number(column: str, value: float) -> str:
    """A share (a metric bounded by 1) with 4 decimals, anything else (average popularity) with 1."""
    return _number(value, 4 if beyond.BEYOND_METRICS.get(beyond.parse(column)[0]).bounds[1] <= 1 else 1)


def protocol_agreement(parts: list[ProtocolReport], metric: str) -> pd.DataFrame:
    """Per protocol after the main one: Kendall's tau between its order of the paradigms by ``metric`` (test
    means) and the main protocol's, and the pairs whose order flips (``"a > b"`` under the main protocol)."""
    from scipy.stats import kendalltau

    def means(part: ProtocolReport) -> pd.Series:
        return part.table.set_index("paradigm")[f"{metric}_mean"]

    base, rows = means(parts[0]), []
    for part in parts[1:]:
        other = means(part).reindex(base.index)
        tau = kendalltau(base.to_numpy(), other.to_numpy()).statistic if len(base) > 1 else float("nan")
        flips = [f"{a} > {b}" if base[a] > base[b] else f"{b} > {a}" for a, b in combinations(base.index, 2)
                 if (base[a] - base[b]) * (other[a] - other[b]) < 0]
        rows.append({"protocol": part.name, "metric": metric, "kendall_tau": tau, "flips": flips})
    return pd.DataFrame(rows)


def _agreement_md(parts: list[ProtocolReport]) -> list[str]:
    """Where the protocols order the paradigms differently: rank correlation with the main protocol's order and
    the pairs that flip, on the first metric every protocol reports."""
    metric = next((m for m in parts[0].metrics if all(m in part.metrics for part in parts)), None)
    if metric is None:
        return []
    table = protocol_agreement(parts, metric)
    lines = ["## Do the protocols agree?", "",
             f"Order of the paradigms by test {display_name(metric)} under each protocol against {parts[0].name} "
             f"(Kendall's tau: 1 = the same order); a flip is a pair ordered one way under {parts[0].name} "
             "and the other way here.", "", f"| protocol | Kendall's tau | pairs that flip ({parts[0].name} order) |",
             "|---|---:|---|"]
    for row in table.itertuples(index=False):
        tau = "n/a" if pd.isna(row.kendall_tau) else f"{row.kendall_tau:.2f}"
        lines.append(f"| {row.protocol} | {tau} | {'; '.join(row.flips) or 'none'} |")
    return lines + [""]


def validation_table(run: Run, summary: dict, metrics: list[str]) -> pd.DataFrame:
    """One row per paradigm: mean and std (over seeds) of each of ``metrics`` on the validation stage (None where
    the paradigm has no validation value)."""
    rows = []
    for name in run.paradigms:
        row: dict[str, Any] = {"paradigm": name}
        for metric in metrics:
            cell = summary[name].get("valid", {}).get(metric) or {}
            row[f"{metric}_mean"], row[f"{metric}_std"] = cell.get("mean"), cell.get("std")
        rows.append(row)
    return pd.DataFrame(rows, columns=["paradigm", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])


def _validation_md(run: Run, summary: dict, metrics: list[str]) -> list[str]:
    """The report metrics on the validation stage (what early stopping, tuning and defaults are chosen on)."""
    multi = len(run.seeds) > 1
    lines = ["## Validation", "", "The same metrics on the validation stage (each user's second-to-last item), "
             "where early stopping, `bench tune` and the defaults choose; compare settings here, not on the test "
             "table.", "", "| paradigm | " + " | ".join(map(display_name, metrics)) + " |",
             "|---|" + "---:|" * len(metrics)]
    for row in validation_table(run, summary, metrics).to_dict("records"):
        cells = ["" if pd.isna(row[f"{m}_mean"]) else _number(row[f"{m}_mean"])
                 + (f" ± {_number(row[f'{m}_std'])}" if multi else "") for m in metrics]
        lines.append(f"| {row['paradigm']} | " + " | ".join(cells) + " |")
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


def token_table(tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per LLM paradigm of ``tokens.csv``: mean and 95th percentile of prompt tokens (hard + soft), the
    mean share of the history the prompt carries and the share of users whose history was cut."""
    rows = []
    for name, table in tokens.groupby("paradigm", sort=False):
        length = table["hard_tokens"] + table["soft_tokens"]
        rows.append({"paradigm": name, "mean_tokens": float(length.mean()),
                     "p95_tokens": float(np.percentile(length, 95)),
                     "history_carried": float((table["history_kept"] / table["history_len"].clip(lower=1)).mean()),
                     "history_cut": float((table["history_kept"] < table["history_len"]).mean())})
    return pd.DataFrame(rows, columns=["paradigm", "mean_tokens", "p95_tokens", "history_carried", "history_cut"])


def _token_md(tokens: pd.DataFrame) -> list[str]:
    lines = ["## Prompt cost", "", "First seed, test-stage prompts; soft positions (RA-Rec) count as tokens.", "",
             "| paradigm | mean prompt tokens | p95 prompt tokens | mean history carried | users with history cut |",
             "|---|---:|---:|---:|---:|"]
    for row in token_table(tokens).itertuples(index=False):
        lines.append(f"| {row.paradigm} | {row.mean_tokens:.1f} | {row.p95_tokens:.0f} | {row.history_carried:.1%} | "
                     f"{row.history_cut:.1%} |")
    return lines + [""]


def _label_suffix(run: Run) -> str:
    protocol = run.protocols[0]
    return "" if protocol == FULL else f"-{protocol}"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def results_tex(run: Run, table: pd.DataFrame, metrics: list[str] | None = None) -> str:
    """A ``table`` environment of the results table of ``metrics`` (default ``report.metrics``; needs
    ``\\usepackage{booktabs,graphicx}``), scaled to the line width."""
    metrics = metrics or run.report_metrics
    multi = len(run.seeds) > 1
    best = {m: _best(table, m) for m in metrics}
    with_samples = _with_samples(table)
    header = ["", "Paradigm", *(tex_escape(display_name(m)) for m in metrics), "Params",
              *(["Samples"] if with_samples else []), "Tokens", "Time (s)"]
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(run.manifest.dataset)}: {tex_escape(_caption(run, metrics))}}}",
             rf"\label{{tab:bench-{tex_escape(run.manifest.dataset)}{_label_suffix(run)}}}",
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
def compare_runs(dir_a: Path, dir_b: Path, protocol: str | None = None) -> tuple[pd.DataFrame, float]:
    """Paired tests of every paradigm present in both runs, run A's against run B's (labels ``A:NAME`` and
    ``B:NAME``), on run A's ``report.metrics`` that say something under ``protocol`` (computed from each run's
    ranks); Holm over all rows. ``protocol`` defaults to the first of run A's protocols that run B has too. The
    runs must be comparable (:func:`bench.rundir.incomparable`: same split, same history masking, the same
    candidate lists for a sampled protocol), else a one-line error naming the field that differs. Returns the
    table and run A's ``report.alpha``."""
    run_a, run_b = Run.from_disk(dir_a), Run.from_disk(dir_b)
    reason = incomparable(run_a, run_b)
    if reason:
        raise BenchError(reason)
    protocol = protocol or next((p for p in run_a.protocols if p in run_b.protocols), run_a.protocols[0])
    for run in (run_a, run_b):
        if protocol not in run.protocols:
            raise BenchError(f"{run.path} has no protocol {protocol!r} (it has {', '.join(run.protocols)}); "
                             "pass --protocol with one both runs have")
    lists = [run.manifest.protocols.get(protocol, {}).get("hash") for run in (run_a, run_b)]
    if lists[0] != lists[1]:
        raise BenchError(f"{dir_a} and {dir_b} are not comparable under {protocol}: their candidate lists differ "
                         f"({lists[0]} vs {lists[1]}); rerun one with the other's eval.candidate_seed")
    metrics = run_a.protocol_metrics(protocol)
    run_a, run_b = run_a.for_protocol(protocol), run_b.for_protocol(protocol)
    common = [p for p in run_a.paradigms if p in run_b.paradigms]
    if not common:
        raise BenchError(f"{dir_a} and {dir_b} have no paradigm in common; `bench compare` tests the same "
                         "paradigm across two runs")
    rows_a, rows_b, seeds_note = _on_common_seeds(run_a.per_user, run_b.with_metrics(metrics))
    matrices = {}
    for metric in metrics:
        left = stats.user_matrix(rows_a, metric)[common].add_prefix("A:")
        right = stats.user_matrix(rows_b, metric)[common].add_prefix("B:")
        matrices[metric] = left.join(right, how="inner")
    cfg = run_a.config
    table = stats.compare_pairs(matrices, [(f"A:{p}", f"B:{p}") for p in common], cfg["report.bootstrap"],
                                cfg["report.seed"], cfg["report.test"])
    table.attrs["seeds"] = seeds_note
    return table, cfg["report.alpha"]


def _on_common_seeds(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Both runs' per-user rows on the seeds they share, and a line saying which seeds were compared. A seed's
    training draws and tie-breaks differ from another's, so comparing run A's seed 1 with run B's mean over
    seeds 0-2 would count seed variance as a difference between the runs. Runs with no seed in common (a
    replication on new seeds) keep all their rows, each averaged over its own seeds, and the line says so."""
    seeds_a, seeds_b = sorted(set(rows_a["seed"])), sorted(set(rows_b["seed"]))
    common = [seed for seed in seeds_a if seed in seeds_b]
    listed = lambda seeds: ", ".join(map(str, seeds))  # noqa: E731
    if not common:
        return rows_a, rows_b, (f"seeds: none in common (A {listed(seeds_a)}, B {listed(seeds_b)}); each run's "
                                "per-user values are averaged over its own seeds")
    note = f"seeds: {listed(common)}"
    if seeds_a != seeds_b:
        note += f" (the seeds both runs have; A has {listed(seeds_a)}, B {listed(seeds_b)})"
    return rows_a[rows_a["seed"].isin(common)], rows_b[rows_b["seed"].isin(common)], note


def _p(value: float) -> str:
    """A p-value for a table: ``n/a`` when the test is undefined (NaN)."""
    return "n/a" if pd.isna(value) else f"{value:.3g}"


def compare_md(table: pd.DataFrame, dir_a: Path, dir_b: Path, alpha: float) -> str:
    """Markdown view of :func:`compare_runs`' table (``n/a``: a test undefined for these values)."""
    lines = [f"A = {dir_a}", f"B = {dir_b}", *([table.attrs["seeds"]] if "seeds" in table.attrs else []), "",
             "| metric | paradigm | A | B | A - B | 95% CI | rel. % | t p | Wilcoxon p | Holm p | wins/ties/losses |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for row in table.itertuples(index=False):
        mark = " *" if row.p_holm < alpha and row.diff != 0 else ""
        lines.append(f"| {display_name(row.metric)} | {row.a[2:]} | {row.mean_a:.4f} | {row.mean_b:.4f} | "
                     f"{row.diff:+.4f}{mark} | [{row.ci_low:+.4f}, {row.ci_high:+.4f}] | {row.rel_diff_pct:+.1f} | "
                     f"{_p(row.t_p)} | {_p(row.wilcoxon_p)} | {_p(row.p_holm)} | {row.wins}/{row.ties}/{row.losses} |")
    lines += ["", f"* significant after Holm correction over the {len(table)} tests (p < {alpha:g})", ""]
    return "\n".join(lines)
