"""Several finished runs side by side: ``bench leaderboard RUN_DIR... [--out FILE.html]``.

One row per (data set, paradigm, run) and one column per report metric under each protocol: the test stage, mean
over users, then mean ± std over seeds, computed from each run's saved ranks; the best value of a data set's
column in bold. Rendered as a Markdown table (:func:`board_md`) and a self-contained page (:func:`board_page`).

Only numbers that measure the same thing share the board (:func:`refusal`; else a one-line error naming the two
runs and what differs):

* runs of one data set must be comparable as ``bench compare`` demands (:func:`bench.rundir.incomparable`: the
  same split hash and history masking) and, for each sampled protocol, use the same candidate lists: otherwise one
  data set would have two sets of users and targets on one board;
* runs of different data sets are different rows by nature (their split hashes differ), but must still rank the
  same way (every :data:`bench.rundir.COMPARABLE_ON` field but the split);
* a protocol both runs of one data set report must use the same candidate lists.

Runs may report different protocols (a likelihood paradigm, for one, runs apart from full ranking): the columns
are every run's protocols, and a run's cells under a protocol it lacks stay empty.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from bench import beyond, html, report
from bench.cache import atomic_write_text
from bench.errors import BenchError
from bench.protocols import parse_protocol
from bench.rundir import COMPARABLE_ON, Run, comparability_key, display_name, incomparable

SPLIT_FIELD = "split hash"
#: The pseudo-protocol of the beyond-accuracy columns: the test stage's top-K lists under full ranking.
BEYOND = "top-K lists"


def load(run_dirs: list[Path]) -> list[Run]:
    """The runs, each once (a directory named twice is read once), checked to be comparable."""
    unique = list({Path(d).resolve(): Path(d) for d in run_dirs}.values())
    if not unique:
        raise BenchError("bench leaderboard needs at least one run directory")
    runs = [Run.from_disk(d) for d in unique]
    for index, run in enumerate(runs):
        for other in runs[:index]:
            reason = refusal(other, run)
            if reason:
                raise BenchError(reason)
    return runs


def refusal(run_a: Run, run_b: Run) -> str | None:
    """Why two runs cannot share a leaderboard (one line naming both and the differing key), or None."""
    if run_a.manifest.dataset == run_b.manifest.dataset:
        reason = incomparable(run_a, run_b)
        if reason:
            return f"{reason} (runs of one data set share a leaderboard only on the same split)"
    else:
        key_a, key_b = comparability_key(run_a), comparability_key(run_b)
        for name, _, why in COMPARABLE_ON:
            if name != SPLIT_FIELD and key_a[name] != key_b[name]:
                return (f"{run_a.path} and {run_b.path} are not comparable: {name} differs ({key_a[name]} vs "
                        f"{key_b[name]}); {why}")
    if run_a.manifest.dataset == run_b.manifest.dataset:
        for protocol in (p for p in run_a.protocols if p in run_b.protocols):
            lists = [(run.manifest.protocols.get(protocol) or {}).get("hash") for run in (run_a, run_b)]
            if lists[0] != lists[1]:
                return (f"{run_a.path} and {run_b.path} are not comparable: the candidate lists of {protocol} differ "
                        f"({lists[0]} vs {lists[1]}); rerun one with the other's eval.candidate_seed")
    return None


def columns(runs: list[Run]) -> list[tuple[str, str]]:
    """``(protocol, metric)`` of every column: every run's protocols and ``report.metrics`` (first seen first),
    without cut-offs a sampled protocol makes trivial."""
    metrics = list(dict.fromkeys(m for run in runs for m in run.report_metrics))
    protocols = list(dict.fromkeys(p for run in runs for p in run.protocols))
    accuracy = [(protocol, metric) for protocol in protocols for metric in metrics
                if not parse_protocol(protocol).trivial(int(metric.partition("@")[2]))]
    extra = dict.fromkeys(m for run in runs if run.top_lists is not None for m in run.config["report.beyond_metrics"])
    return accuracy + [(BEYOND, metric) for metric in extra]


def column_label(protocol: str, metric: str) -> str:
    """``NDCG@10 (full)``; ``Coverage@10 (top-K lists)`` for a beyond-accuracy column."""
    return f"{_metric_name(protocol, metric)} ({protocol})"


def _metric_name(protocol: str, metric: str) -> str:
    return beyond.display_name(metric) if protocol == BEYOND else display_name(metric)


def _beyond_cells(run: Run, cols: list[tuple[str, str]]) -> dict[str, dict]:
    """``{paradigm: {metric: {"mean", "std"}}}`` of the run's beyond-accuracy columns among ``cols`` (empty when
    the board has none or the run stored no top-K lists)."""
    wanted = [m for p, m in cols if p == BEYOND]
    table = report.beyond_accuracy_table(run) if wanted and run.top_lists is not None else None
    if table is None:
        return {}
    return {row["paradigm"]: {m: {"mean": row[f"{m}_mean"], "std": row[f"{m}_std"]} for m in wanted
                              if f"{m}_mean" in row} for row in table.to_dict("records")}


def board(runs: list[Run], cols: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per data set, paradigm and run (data sets in order of first appearance): ``dataset``,
    ``paradigm``, ``run``, ``seeds`` and ``METRIC|PROTOCOL|mean`` / ``...|std`` per column."""
    metrics = list(dict.fromkeys(m for p, m in cols if p != BEYOND))
    rows = []
    for run in runs:
        full = dataclasses.replace(run, per_user=run.with_metrics(metrics))
        summaries = {p: report.summarise(full.for_protocol(p).per_user, [m for q, m in cols if q == p])
                     for p in run.protocols}  # a protocol the run lacks leaves its cells empty
        extra = _beyond_cells(run, cols)
        for paradigm in run.paradigms:
            row = {"dataset": run.manifest.dataset, "paradigm": paradigm, "run": str(run.path),
                   "seeds": len(run.seeds)}
            for protocol, metric in cols:
                cell = (extra.get(paradigm, {}).get(metric, {}) if protocol == BEYOND else
                        summaries.get(protocol, {}).get(paradigm, {}).get("test", {}).get(metric, {}))
                row[f"{metric}|{protocol}|mean"], row[f"{metric}|{protocol}|std"] = cell.get("mean"), cell.get("std")
            rows.append(row)
    frame = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(dict.fromkeys(frame["dataset"]))}
    return frame.sort_values("dataset", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _best(frame: pd.DataFrame, key: str) -> pd.Series:
    """Whether each row holds its data set's best (largest) mean of column ``key``; never for a beyond-accuracy
    column (more coverage or less popularity is not better in itself)."""
    means = frame[f"{key}|mean"].astype(float)
    if key.endswith(f"|{BEYOND}"):
        return pd.Series(False, index=frame.index)
    return means.notna() & (means == means.groupby(frame["dataset"]).transform("max"))


def _number(protocol: str, metric: str, value) -> str:
    return report.beyond_number(metric, value) if protocol == BEYOND else report._number(value)


def _cell_text(protocol: str, metric: str, mean, std, multi: bool) -> str:
    """``0.1234 ± 0.0012`` (the spread with several seeds), '' where the run has no value."""
    return "" if mean is None or pd.isna(mean) else _number(protocol, metric, mean) + (
        f" ± {_number(protocol, metric, std)}" if multi and not pd.isna(std) else "")


CAPTION = ("Test stage; mean over users, then mean ± std over seeds (computed from each run's saved ranks); the "
           "best value of each data set's column in bold. Columns marked top-K lists: beyond-accuracy metrics of "
           "the runs' stored top-K lists (full ranking; never bold). Pairwise tests within a run: its report; "
           "across runs of one data set: `bench compare`.")


def board_md(runs: list[Run], frame: pd.DataFrame, cols: list[tuple[str, str]]) -> str:
    """The leaderboard as Markdown: the table, then one line per run (split, protocols, backbone, command)."""
    multi = bool((frame["seeds"] > 1).any())
    header = ["data set", "paradigm", "run", "seeds", *(column_label(p, m) for p, m in cols)]
    lines = ["# Leaderboard", "", CAPTION, "", "| " + " | ".join(header) + " |",
             "|---|---|---|---:|" + "---:|" * len(cols)]
    best = {f"{m}|{p}": _best(frame, f"{m}|{p}") for p, m in cols}
    for index, row in frame.iterrows():
        cells = [_md(row["dataset"]), _md(row["paradigm"]), _md(row["run"]), str(row["seeds"])]
        for protocol, metric in cols:
            key = f"{metric}|{protocol}"
            text = _cell_text(protocol, metric, row[f"{key}|mean"], row[f"{key}|std"], multi)
            cells.append(f"**{text}**" if text and best[key][index] else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Runs:", ""]
    lines += [f"- `{run.path}`: {run.manifest.dataset}, split `{run.manifest.split_hash}`, protocols "
              f"{', '.join(run.protocols)}, backbone {html.backbone_text(run)}, command `{run.manifest.command}`"
              for run in runs]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """Text for a Markdown table cell (a ``|`` would end the cell)."""
    return str(text).replace("|", "\\|")


def board_page(runs: list[Run], frame: pd.DataFrame, cols: list[tuple[str, str]]) -> str:
    """The leaderboard as one self-contained HTML page: the sortable table (rows stay grouped by data set) and a
    table of the runs' essentials."""
    multi = bool((frame["seeds"] > 1).any())
    best = {f"{m}|{p}": _best(frame, f"{m}|{p}") for p, m in cols}
    groups = {name: i for i, name in enumerate(dict.fromkeys(frame["dataset"]))}
    headers = [*map(html.text_cell, ("data set", "paradigm", "run")), html.Cell("seeds"),
               *(html.Cell(f"{html.esc(_metric_name(p, m))}<br><small>{html.esc(p)}</small>") for p, m in cols)]
    rows = []
    for index, row in frame.iterrows():
        cells = [html.text_cell(row["dataset"]), html.text_cell(row["paradigm"]),
                 html.Cell(html.esc(Path(row["run"]).name), cls="text", title=row["run"]),
                 html.Cell(str(row["seeds"]), sort=float(row["seeds"]))]
        for protocol, metric in cols:
            key = f"{metric}|{protocol}"
            mean, std = row[f"{key}|mean"], row[f"{key}|std"]
            missing = mean is None or pd.isna(mean)
            text = "" if missing else html.esc(_number(protocol, metric, mean))
            text = f"<strong>{text}</strong>" if best[key][index] else text
            text += f' <span class="std">± {html.esc(_number(protocol, metric, std))}</span>' \
                if multi and not missing else ""
            cells.append(html.Cell(text, sort="" if missing else float(mean)))
        rows.append(cells)
    body = [f"<h1>Leaderboard <small>{len(groups)} data set(s), {len(runs)} run(s), {len(frame)} rows</small></h1>",
            f'<p class="note">{html.prose(CAPTION)} Click a column header to sort; rows stay grouped by data set.</p>',
            html.table(headers, rows, groups=[groups[d] for d in frame["dataset"]], ident="leaderboard"), '<h2 id="runs">Runs</h2>',
            html.table(map(html.text_cell, ("run", "data set", "split", "protocols", "encoder", "backbone",
                                            "seeds", "command")), [_run_cells(run) for run in runs],
                       sortable=False, cls="wrap")]
    return html.page("bench leaderboard", "\n".join(body))


def _run_cells(run: Run) -> list[html.Cell]:
    """A run's essentials as a row of the page's table of runs."""
    return [html.text_cell(run.path), html.text_cell(run.manifest.dataset),
            html.Cell(html.split_text(run, markup=True), cls="text"),
            html.text_cell(html.protocols_text(run)), html.text_cell(html.encoder_text(run)),
            html.text_cell(html.backbone_text(run)), html.text_cell(", ".join(map(str, run.seeds))),
            html.Cell(f"<code>{html.esc(run.manifest.command or 'not recorded')}</code>", cls="text")]


def build(run_dirs: list[Path], out: Path | None = None) -> str:
    """The leaderboard of ``run_dirs`` as Markdown; with ``out``, also write the page there and the Markdown beside
    it (``out`` with suffix ``.md``)."""
    runs = load(run_dirs)
    cols = columns(runs)
    frame = board(runs, cols)
    text = board_md(runs, frame, cols)
    if out is not None:
        out = Path(out)
        if out.suffix.lower() == ".md":
            raise BenchError(f"--out {out}: name the HTML page (e.g. {out.with_suffix('.html')}); the Markdown "
                             "table is written beside it")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, board_page(runs, frame, cols))
        atomic_write_text(out.with_suffix(".md"), text)
    return text
