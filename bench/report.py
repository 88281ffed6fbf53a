"""Tables of a run, rebuilt from its saved files alone (``per_user.csv``, ``tokens.csv``, ``manifest.json``).

``bench report RUN_DIR`` calls :func:`build`, so what a run writes and what a later re-analysis writes
are produced by the same code and are byte-identical.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cache import atomic_write_text
from bench.errors import BenchError

MAIN_METRICS = ("hit@100", "ndcg@10")
ID_COLUMNS = ("paradigm", "seed", "stage", "user", "rank")


def write_json(path: Path, data: Any) -> None:
    """Pretty, key-sorted JSON written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def metric_columns(per_user: pd.DataFrame) -> list[str]:
    """The metric columns of a per-user table, main metrics (HR@100, NDCG@10) first."""
    metrics = [c for c in per_user.columns if c not in ID_COLUMNS]
    return [m for m in MAIN_METRICS if m in metrics] + [m for m in metrics if m not in MAIN_METRICS]


def read_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(per_user, tokens, manifest) of a run directory; a one-line error when a file is missing."""
    run_dir = Path(run_dir)
    files = {name: run_dir / name for name in ("per_user.csv", "tokens.csv", "manifest.json")}
    for name, path in files.items():
        if not path.is_file():
            raise BenchError(f"{run_dir} is not a finished run directory: {name} is missing")
    per_user = pd.read_csv(files["per_user.csv"], dtype={"user": str})
    missing = [c for c in ID_COLUMNS if c not in per_user.columns]
    if missing:
        raise BenchError(f"{files['per_user.csv']}: missing column {missing[0]!r}")
    return per_user, pd.read_csv(files["tokens.csv"], dtype={"user": str}), json.loads(files["manifest.json"].read_text())


def summarise(per_user: pd.DataFrame) -> dict[str, dict[str, dict[str, dict]]]:
    """``{paradigm: {stage: {metric: {"mean", "std", "per_seed"}}}}``: mean over users per seed, then the mean
    and sample standard deviation (0 for one seed) over seeds."""
    out: dict = {}
    metrics = metric_columns(per_user)
    seed_means = per_user.groupby(["paradigm", "stage", "seed"], sort=False)[metrics].mean()
    for (paradigm, stage), table in seed_means.groupby(level=[0, 1], sort=False):
        stage_out = out.setdefault(paradigm, {}).setdefault(stage, {})
        for metric in metrics:
            values = table[metric].to_numpy(dtype=np.float64)
            stage_out[metric] = {"mean": float(values.mean()),
                                 "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                 "per_seed": [float(v) for v in values]}
    return out


def build(run_dir: Path) -> None:
    """(Re)write ``metrics.json``, ``results.md`` and ``results.csv`` of ``run_dir`` from its saved files."""
    run_dir = Path(run_dir)
    per_user, tokens, manifest = read_run(run_dir)
    summary = summarise(per_user)
    paradigms = manifest.get("paradigms", {})
    write_json(run_dir / "metrics.json", {
        "dataset": manifest.get("dataset"), "split_hash": manifest.get("split_hash"),
        "paradigms": {name: {"version": paradigms.get(name, {}).get("version"), "stages": stages}
                      for name, stages in summary.items()}})
    metrics = metric_columns(per_user)
    atomic_write_text(run_dir / "results.csv", _results_csv(summary, metrics, paradigms))
    atomic_write_text(run_dir / "results.md", _results_md(summary, metrics, manifest, tokens))


def _trainable(paradigms: dict, name: str) -> int | None:
    seeds = paradigms.get(name, {}).get("seeds", {})
    counts = {info.get("trainable_parameters") for info in seeds.values()}
    return counts.pop() if len(counts) == 1 else None


def _results_csv(summary: dict, metrics: list[str], paradigms: dict) -> str:
    rows = []
    for name, stages in summary.items():
        row = {"paradigm": name, "version": paradigms.get(name, {}).get("version"),
               "trainable_parameters": _trainable(paradigms, name)}
        for metric in metrics:
            cell = stages.get("test", {}).get(metric)
            row[f"{metric}_mean"] = None if cell is None else round(cell["mean"], 6)
            row[f"{metric}_std"] = None if cell is None else round(cell["std"], 6)
        rows.append(row)
    return pd.DataFrame(rows).to_csv(index=False)


def _results_md(summary: dict, metrics: list[str], manifest: dict, tokens: pd.DataFrame) -> str:
    seeds = manifest.get("seeds", [])
    lines = [f"# Results: {manifest.get('dataset')}", "",
             f"Test stage, full ranking over all items; mean over users"
             f"{f', then mean +- std over {len(seeds)} seeds' if len(seeds) > 1 else ''}"
             f" (seeds {', '.join(map(str, seeds))}).", "",
             f"- split `{manifest.get('split_hash')}`, config `{manifest.get('config_hash')}`, "
             f"encoder `{(manifest.get('encoder') or {}).get('key', 'none')}`",
             f"- command: `{manifest.get('command')}`", ""]
    header = ["paradigm", *metrics, "trainable params"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paradigms = manifest.get("paradigms", {})
    for name, stages in summary.items():
        cells = [name]
        for metric in metrics:
            cell = stages.get("test", {}).get(metric)
            if cell is None:
                cells.append("")
            else:
                cells.append(f"{cell['mean']:.4f}" + (f" +- {cell['std']:.4f}" if len(seeds) > 1 else ""))
        params = _trainable(paradigms, name)
        cells.append("" if params is None else f"{params:,}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if len(tokens):
        lines += _token_md(tokens)
    return "\n".join(lines)


def _token_md(tokens: pd.DataFrame) -> list[str]:
    lines = ["## Prompt cost", "", "| paradigm | mean prompt tokens | p95 prompt tokens | users with history cut |",
             "|---|---|---|---|"]
    for name, table in tokens.groupby("paradigm", sort=False):
        length = table["hard_tokens"] + table["soft_tokens"]
        cut = (table["history_kept"] < table["history_len"]).mean()
        lines.append(f"| {name} | {length.mean():.1f} | {np.percentile(length, 95):.0f} | {cut:.1%} |")
    return lines + [""]
