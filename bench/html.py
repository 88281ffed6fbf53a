"""Self-contained HTML pages: a run's ``report.html`` (``bench report RUN_DIR --html``) and the building blocks
the leaderboard page (``bench.leaderboard``) shares with it.

A page is one file that needs nothing else: inline CSS, a small inline script that sorts a table when a header is
clicked, and the run's PNG plots as ``data:`` URIs; it references no other file and no network address. Every
piece of text from a run (paradigm labels, the command, config values) is HTML-escaped. The tables are the same
data as ``results.md`` (``bench.report`` builds them; this module only renders).
"""
from __future__ import annotations

import base64
import functools
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from bench import beyond, report
from bench.cache import atomic_write_text
from bench.protocols import parse_protocol
from bench.rundir import Run, display_name

REPORT_FILE = "report.html"

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2330;
       margin: 0; background: #f6f7f9; }
main { max-width: 1440px; margin: 0 auto; padding: 20px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 2px solid #dfe3ea;
     padding-bottom: 4px; } h3 { font-size: 15px; margin: 22px 0 6px; }
h2 small, h1 small { font-weight: normal; color: #5b6474; font-size: 14px; }
p.note { color: #4a5262; max-width: 1000px; margin: 4px 0 10px; }
nav a { margin-right: 14px; } a { color: #1f5fbf; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; font-size: 12.5px; }
.scroll { overflow-x: auto; margin: 6px 0 10px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e4e7ec; text-align: right; white-space: nowrap; }
th { background: #eef1f6; font-weight: 600; vertical-align: bottom; white-space: normal; min-width: 44px; }
td.text, th.text { text-align: left; }
table.wrap td { white-space: normal; min-width: 90px; vertical-align: top; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tbody tr.group-start td { border-top: 2px solid #b9c0cc; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #dde4ef; }
table.sortable th::after { content: " \\2195"; color: #9aa3b2; font-size: 11px; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; color: #1f5fbf; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; color: #1f5fbf; }
table.sortable th[aria-sort] { background: #d6e2f5; }
tbody td.sorted, tbody tr:nth-child(even) td.sorted { background: #eef4fd; }
sup { color: #0b7a3e; font-weight: 600; font-size: 10.5px; margin-left: 1px; }
.std { color: #6b7383; font-size: 12px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 8px 0; }
dl.facts dt { font-weight: 600; color: #3a4252; } dl.facts dd { margin: 0; word-break: break-word; }
.maps { display: flex; flex-wrap: wrap; gap: 26px; align-items: flex-start; }
table.heatmap td { text-align: center; min-width: 34px; padding: 3px 4px; font-size: 11.5px; border: 1px solid #fff; }
table.heatmap td.text { text-align: left; padding-right: 8px; }
table.heatmap th { font-size: 12px; padding: 3px 4px; text-align: center; } table.heatmap th.text { text-align: left; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border-radius: 3px; font-size: 12px; }
figure { margin: 8px 0 14px; } figure img { max-width: min(100%, 1100px); border: 1px solid #e4e7ec; }
figcaption { color: #4a5262; font-size: 12.5px; }
"""

# Sorts a table.sortable by a clicked header: numbers (a cell's data-sort, else its text) largest first, text A-Z;
# a second click reverses. Empty cells stay last; rows keep their data-group (a leaderboard's data set) together.
SORTER = """
(function () {
  function key(row, column) {
    var cell = row.cells[column], value = cell.getAttribute("data-sort");
    return value === null ? cell.textContent.trim() : value;
  }
  function sortBy(table, header, column) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.every(function (r) { var v = key(r, column); return v === "" || !isNaN(Number(v)); });
    var current = header.getAttribute("aria-sort");
    var descending = current ? current === "ascending" : numeric;
    rows.forEach(function (r, i) { if (!r.hasAttribute("data-order")) r.setAttribute("data-order", i); });
    rows.sort(function (a, b) {
      var group = Number(a.getAttribute("data-group") || 0) - Number(b.getAttribute("data-group") || 0);
      if (group) return group;
      var x = key(a, column), y = key(b, column);
      if (x === "" || y === "") return (x === "") - (y === "") || a.getAttribute("data-order") - b.getAttribute("data-order");
      var d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return (descending ? -d : d) || a.getAttribute("data-order") - b.getAttribute("data-order");
    });
    rows.forEach(function (r, i) {
      body.appendChild(r);
      var previous = rows[i - 1];
      r.classList.toggle("group-start", !!previous && previous.getAttribute("data-group") !== r.getAttribute("data-group"));
      Array.prototype.forEach.call(r.cells, function (c, j) { c.classList.toggle("sorted", j === column); });
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
      header.tabIndex = 0;
      header.title = "sort by this column (click again to reverse)";
      header.addEventListener("click", function () { sortBy(table, header, column); });
      header.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, header, column); }
      });
    });
  });
})();
"""


def esc(text: object) -> str:
    """``text`` as HTML, quotes included."""
    return html.escape(str(text), quote=True)


def prose(text: str) -> str:
    """``text`` as HTML, with Markdown's `code` spans as ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


@dataclass(frozen=True)
class Cell:
    """One table cell: ``markup`` (already escaped HTML), the value the sorter orders by (``None``: its text; a
    NaN or empty value sorts last), a CSS class, a tooltip and a background colour."""

    markup: str
    sort: float | str | None = None
    cls: str = ""
    title: str = ""
    background: str = ""

    def render(self, tag: str = "td") -> str:
        """The cell as HTML (``td`` or ``th``)."""
        attrs = ""
        if self.sort is not None:
            value = "" if isinstance(self.sort, float) and math.isnan(self.sort) else self.sort
            attrs += f' data-sort="{esc(repr(value) if isinstance(value, float) else value)}"'
        attrs += f' class="{self.cls}"' if self.cls else ""
        attrs += f' title="{esc(self.title)}"' if self.title else ""
        attrs += f' style="background:{esc(self.background)}"' if self.background else ""
        return f"<{tag}{attrs}>{self.markup}</{tag}>"


def text_cell(value: object) -> Cell:
    """A left-aligned text cell."""
    return Cell(esc(value), cls="text")


def number_cell(value: float | None, digits: int = 4, fmt: str | None = None) -> Cell:
    """A right-aligned number (empty for None/NaN), sorted by its value; ``fmt`` overrides ``.{digits}f``."""
    if value is None or pd.isna(value):
        return Cell("", sort="")
    return Cell(esc(format(value, fmt or f".{digits}f")), sort=float(value))


def table(headers: Iterable[str | Cell], rows: Iterable[list[Cell]], sortable: bool = True,
          groups: Iterable[int] | None = None, cls: str = "", ident: str = "") -> str:
    """An HTML table in a horizontally scrolling box. ``headers``: plain text (escaped here) or header cells;
    ``groups``: a group number per row, which the sorter keeps together (a line separates groups); ``ident``:
    the table's id."""
    head = "".join((h if isinstance(h, Cell) else text_cell(h)).render("th") for h in headers)
    body, previous = [], None
    rows = list(rows)
    for row, group in zip(rows, list(groups) if groups is not None else [None] * len(rows)):
        attrs = "" if group is None else f' data-group="{group}"'
        attrs += ' class="group-start"' if previous is not None and group != previous else ""
        previous = group
        body.append(f"<tr{attrs}>" + "".join(cell.render() for cell in row) + "</tr>")
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    ident = f' id="{esc(ident)}"' if ident else ""
    return (f'<div class="scroll"><table{ident} class="{classes}"><thead><tr>{head}</tr></thead><tbody>'
            + "\n".join(body) + "</tbody></table></div>")


def image(path: Path, alt: str, caption: str = "") -> str:
    """A PNG embedded as a ``data:`` URI in a figure ('' when the file does not exist)."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    note = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{note}</figure>'


def facts(items: Iterable[tuple[str, str]]) -> str:
    """A definition list of ``(label, markup)`` pairs (the markup is already escaped)."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def page(title: str, body: str) -> str:
    """A whole HTML document: ``body`` (markup) with the shared style and the table sorter, nothing external."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><main>\n{body}\n</main><script>{SORTER}</script></body></html>\n")


# -- what a run is -------------------------------------------------------------------------------------------
def dtype_text(record: dict | None) -> str:
    """``bfloat16`` from a manifest record's ``dtype`` (``torch.bfloat16``); '' when not recorded."""
    return str((record or {}).get("dtype") or "").removeprefix("torch.")


def backbone_text(run: Run) -> str:
    """The frozen backbone in one line: name, shape, pooling, dtype, token budget."""
    llm = run.manifest.llm
    if not llm:
        return "none"
    shape = f"{llm.get('layers', '?')} layers x {llm.get('width', '?')}" if llm.get("layers") else ""
    parts = [str(llm.get("backbone", "?")), shape, f"{llm['pooling']} pooling" if llm.get("pooling") else "",
             dtype_text(llm), f"token budget {llm['token_budget']}" if llm.get("token_budget") else ""]
    return ", ".join(p for p in parts if p)


def encoder_text(run: Run) -> str:
    """The frozen ID encoder in one line: model, cache key, best epoch, dtype."""
    encoder = run.manifest.encoder
    if not encoder:
        return "none"
    parts = [str(encoder.get("model", "?")), f"key {encoder['key']}" if encoder.get("key") else "",
             f"best epoch {encoder['best_epoch']}" if encoder.get("best_epoch") is not None else "",
             dtype_text(encoder)]
    return ", ".join(p for p in parts if p)


def split_text(run: Run, markup: bool = False) -> str:
    """The split in one line: hash, users, items, interactions; with ``markup``, as HTML with the hash as code."""
    stats = run.manifest.split_stats or {}
    counts = ", ".join(f"{stats[k]:,} {k}" for k in ("users", "items", "interactions") if isinstance(stats.get(k), int))
    counts = f" ({counts})" if counts else ""
    return f"<code>{esc(run.manifest.split_hash)}</code>{esc(counts)}" if markup else run.manifest.split_hash + counts


def protocols_text(run: Run) -> str:
    """Every protocol of the run with what it measures and, for a sampled one, its candidate lists' hash."""
    out = []
    for name in run.protocols:
        lists = (run.manifest.protocols.get(name) or {}).get("hash")
        out.append(f"{name}: {parse_protocol(name).describe()}" + (f", candidate lists {lists}" if lists else ""))
    return "; ".join(out)


def _budgets(run: Run) -> str:
    train = run.config.get("train") or {}
    shared = ", ".join(f"{k}={v}" for k, v in train.items())
    own = report._own_budgets(run.manifest, run.config)
    tokens = f"llm.token_budget={run.config.get('llm.token_budget')}"
    return esc(f"train: {shared}; {tokens}") + "".join(f"<br>own: {esc(line)}" for line in own)


def manifest_facts(run: Run) -> list[tuple[str, str]]:
    """The manifest's essentials as ``(label, markup)``: what ran on what, and the command that ran it."""
    manifest = run.manifest
    versions = ", ".join(f"{k} {v}" for k, v in manifest.versions.items() if k in ("bench", "torch", "transformers"))
    hardware = manifest.hardware or {}
    items = [("data set", esc(manifest.dataset)), ("split", split_text(run, markup=True)),
             ("protocols", esc(protocols_text(run))), ("encoder", esc(encoder_text(run))),
             ("backbone", esc(backbone_text(run))), ("dtype", esc(dtype_text(manifest.llm) or "n/a")),
             ("budgets", _budgets(run)), ("seeds", esc(", ".join(map(str, run.seeds)))),
             ("command", f"<code>{esc(manifest.command or 'not recorded')}</code>"),
             ("config", f"<code>{esc(manifest.config_hash)}</code>, mask history: "
                        f"{esc(run.config.get('eval.mask_history'))}"),
             ("created", esc(f"{manifest.created}, git {manifest.git_commit or 'unknown'}")),
             ("machine", esc(", ".join(str(x) for x in (hardware.get("device"), hardware.get("cpu_count") and
                                                         f"{hardware['cpu_count']} CPUs", versions) if x)))]
    if manifest.partial:  # an interim report of an unfinished run (bench report OUT --partial)
        done = manifest.partial
        items.insert(0, ("interim", esc(f"{done['finished']} of {done['jobs']} (paradigm, seed) jobs have finished; "
                                        f"still to run: {', '.join(done['missing']) or 'none'}")))
    if manifest.sweep:
        sweep = manifest.sweep
        items.insert(7, ("sweep", esc(f"{sweep.get('key')} = {', '.join(map(str, sweep.get('values', [])))}")))
    if manifest.skipped:
        items.append(("skipped", esc("; ".join(f"{k}: {v}" for k, v in manifest.skipped.items()))))
    return [(label, markup) for label, markup in items if markup]


# -- the run's report page -----------------------------------------------------------------------------------
def results_cells(part: report.ProtocolReport) -> tuple[list[Cell], list[list[Cell]]]:
    """Header and rows of a protocol's results table: mean (± std over seeds), the letters of the paradigms it beats
    significantly as a superscript, the best value in bold, then the extras; a metric cell sorts by its mean."""
    table, metrics = part.table, part.metrics
    multi, with_samples = len(part.view.seeds) > 1, report._with_samples(table)
    best = {m: report._best(table, m) for m in metrics}
    headers = [text_cell(""), text_cell("paradigm"), *(Cell(esc(display_name(m))) for m in metrics),
               *(Cell(esc(h)) for h in report._extra_headers(table))]
    raw = ["trainable_parameters", *(["training_samples"] if with_samples else []), "mean_prompt_tokens",
           "fit_seconds"]
    rows = []
    for _, row in table.iterrows():
        cells = [text_cell(row["letter"]), text_cell(row["paradigm"])]
        for metric in metrics:
            mean, std, beats = row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_beats"]
            text = esc(report._number(mean))
            text = f"<strong>{text}</strong>" if row["paradigm"] in best[metric] else text
            text += f"<sup>{esc(beats)}</sup>" if isinstance(beats, str) and beats else ""
            text += f'<br><span class="std">± {esc(report._number(std))}</span>' if multi and not pd.isna(mean) else ""
            cells.append(Cell(text, sort="" if pd.isna(mean) else float(mean)))
        for shown, column in zip(report._extras(row, with_samples), raw):
            value = row[column]
            cells.append(Cell(esc(shown), sort="" if value is None or pd.isna(value) else float(value)))
        rows.append(cells)
    return headers, rows


def _p_text(p: float) -> str:
    """A p-value in a heatmap cell: ``<.001``, three decimals, or ``n/a`` for an undefined test."""
    if pd.isna(p):
        return "n/a"
    return "<.001" if p < 0.001 else f"{p:.3f}".rstrip("0").rstrip(".") if p < 1 else "1"


def _heat_color(diff: float, p: float, alpha: float) -> tuple[str, str]:
    """(background, text colour) of a heatmap cell: green where the row's paradigm is significantly better than the
    column's, red where worse, darker the smaller the Holm p-value; grey where the test finds no difference."""
    if pd.isna(p) or not p < alpha or diff == 0:
        return "#eceef2", "#5b6474"
    strength = min(1.0, math.log10(alpha / max(p, 1e-300)) / 6)
    lightness = 84 - 44 * strength
    hue, saturation = (140, 48) if diff > 0 else (4, 70)
    return f"hsl({hue}, {saturation}%, {lightness:.0f}%)", "#fff" if lightness < 62 else "#1d2330"


def heatmap(part: report.ProtocolReport, metric: str, alpha: float) -> str:
    """The pairwise tests of ``metric`` as a paradigm x paradigm table: each cell the Holm-corrected p-value of
    row vs column, coloured by which one is better (the tests of ``significance.csv``)."""
    tests = part.tests[part.tests["metric"] == metric]
    pairs = {}
    for row in tests.itertuples(index=False):
        pairs[(row.a, row.b)] = (row.diff, row.p_holm, row.wins, row.ties, row.losses)
        pairs[(row.b, row.a)] = (-row.diff, row.p_holm, row.losses, row.ties, row.wins)
    letters = dict(zip(part.table["paradigm"], part.table["letter"]))
    names = list(letters)
    headers = [Cell(esc(display_name(metric)), cls="text"), *(Cell(esc(letters[n]), title=n) for n in names)]
    rows = []
    for name in names:
        cells = [text_cell(f"{letters[name]} {name}")]
        for other in names:
            if other == name or (name, other) not in pairs:
                cells.append(Cell("·"))
                continue
            diff, p, wins, ties, losses = pairs[(name, other)]
            background, colour = _heat_color(diff, p, alpha)
            cells.append(Cell(f'<span style="color:{colour}">{esc(_p_text(p))}</span>',
                              title=f"{name} vs {other}: difference {diff:+.4f}, Holm p {_p_text(p)}, "
                                    f"users better/tied/worse {wins}/{ties}/{losses}", background=background))
        rows.append(cells)
    return f"<div>{table(headers, rows, sortable=False, cls='heatmap')}</div>"


def heat_legend(alpha: float) -> str:
    """What a heatmap's colours mean."""
    better, _ = _heat_color(1, alpha / 1e6, alpha)
    worse, _ = _heat_color(-1, alpha / 1e6, alpha)
    grey, _ = _heat_color(0, 1, alpha)
    return (f'<p class="note legend">Each cell: Holm-corrected p-value of the row\'s paradigm against the '
            f'column\'s (letters as in the table above); hover for the difference and the users each way. '
            f'<span style="background:{better};color:#fff">row better</span>'
            f'<span style="background:{worse};color:#fff">row worse</span>'
            f'<span style="background:{grey}">no significant difference (p &ge; {alpha:g})</span> '
            f"darker: smaller p.</p>")


def _section(title: str, body: str, note: str = "") -> str:
    """A sub-section: heading, an optional note (markup) and its body."""
    return f"<h3>{esc(title)}</h3>" + (f'<p class="note">{note}</p>' if note else "") + body


def beyond_accuracy(run: Run, part: report.ProtocolReport) -> str:
    """The protocol's beyond-accuracy table (coverage, Gini, popularity, tail share of the top-K lists), where
    ``bench.report`` computed one: mean (± std over seeds) and the 95% interval over users, sorted by the mean."""
    frame = part.beyond
    if frame is None or not len(frame):
        return ""
    metrics = [c.removesuffix("_mean") for c in frame.columns if c.endswith("_mean")]
    label = beyond.display_name
    multi = len(run.seeds) > 1
    rows = []
    for _, row in frame.iterrows():
        cells = [text_cell(row["paradigm"])]
        for metric in metrics:
            mean = row[f"{metric}_mean"]
            number = functools.partial(report.beyond_number, metric)
            text = "" if pd.isna(mean) else esc(number(mean))
            if multi and not pd.isna(row.get(f"{metric}_std")):
                text += f' <span class="std">± {esc(number(row[f"{metric}_std"]))}</span>'
            if not pd.isna(row.get(f"{metric}_low", float("nan"))):
                text += f'<br><span class="std">[{number(row[f"{metric}_low"])}, {number(row[f"{metric}_high"])}]</span>'
            cells.append(Cell(text, sort="" if pd.isna(mean) else float(mean)))
        rows.append(cells)
    headers = [text_cell("paradigm"), *(Cell(esc(label(m))) for m in metrics)]
    return _section("Beyond accuracy", table(headers, rows, ident=f"beyond-{part.name}"), note="What each paradigm recommends, not whether it "
                    "hits: its top-K lists on the test stage, mean over seeds and [95% interval over users]. "
                    "Coverage: share of items recommended to anyone; Gini: inequality of exposure (lower is more "
                    "even); AvgPop: training interactions of a recommended item; Tail: share of long-tail items.")


def protocol_section(run: Run, part: report.ProtocolReport, several: bool, main: bool) -> str:
    """One protocol's results: table with superscripts, significance heatmaps, plot, validation, beyond accuracy."""
    alpha = run.config["report.alpha"]
    family = "the protocol" if several else "the run"
    headers, rows = results_cells(part)
    title = f"Protocol {part.name}" if several else "Test results"
    out = [f'<h2 id="protocol-{esc(part.name)}">{esc(title)} <small>{esc(parse_protocol(part.name).describe())}'
           f"</small></h2>", f'<p class="note">{esc(report._caption(part.view, part.metrics, family))} '
           "Click a column header to sort by it.</p>", table(headers, rows, ident=f"results-{part.name}")]
    own = report._own_budgets(run.manifest, run.config) if main else []
    if own:
        out.append(f'<p class="note">Training budgets differ: {esc("; ".join(own))} (every other paradigm: the '
                   "shared <code>train</code> section).</p>")
    maps = "".join(heatmap(part, metric, alpha) for metric in part.metrics[:2])
    out.append(_section("Significance", f'<div class="maps">{maps}</div>' + heat_legend(alpha),
                        note=f"Every pairwise test: <code>significance{esc(part.suffix)}.csv</code>."))
    plot = image(run.path / ("metrics.png" if main else f"metrics-{part.name}.png"), f"{part.name} metrics",
                 "Main metrics per paradigm, 95% bootstrap confidence intervals over users.")
    if plot:
        out.append(_section("Plot", plot))
    validation = report.validation_table(part.view, part.summary, part.metrics)
    out.append(_section("Validation", _mean_std_table(validation, part.metrics, len(part.view.seeds) > 1),
                        note="The same metrics on the validation stage, where early stopping, tuning and the "
                             "defaults choose; compare settings here, not on the test table."))
    out.append(beyond_accuracy(run, part))
    return "\n".join(out)


def _mean_std_table(frame: pd.DataFrame, metrics: list[str], multi: bool) -> str:
    """A sortable table of ``paradigm`` and ``METRIC_mean`` / ``METRIC_std`` columns (std shown with seeds)."""
    rows = []
    for _, row in frame.iterrows():
        cells = [text_cell(row["paradigm"])]
        for metric in metrics:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            text = esc(report._number(mean))
            text += f' <span class="std">± {esc(report._number(std))}</span>' if multi and not pd.isna(mean) else ""
            cells.append(Cell(text, sort="" if pd.isna(mean) else float(mean)))
        rows.append(cells)
    return table([text_cell("paradigm"), *(Cell(esc(display_name(m))) for m in metrics)], rows)


def agreement_section(parts: list[report.ProtocolReport]) -> str:
    """Where the protocols order the paradigms differently (``report.protocol_agreement``)."""
    metric = next((m for m in parts[0].metrics if all(m in part.metrics for part in parts)), None)
    if metric is None:
        return ""
    frame = report.protocol_agreement(parts, metric)
    rows = [[text_cell(r.protocol), number_cell(r.kendall_tau, 2), text_cell("; ".join(r.flips) or "none")]
            for r in frame.itertuples(index=False)]
    headers = [text_cell("protocol"), Cell("Kendall's tau"), text_cell(f"pairs that flip ({parts[0].name} order)")]
    return (f'<h2 id="agreement">Do the protocols agree?</h2><p class="note">Order of the paradigms by test '
            f"{esc(display_name(metric))} under each protocol against {esc(parts[0].name)} (Kendall's tau: 1 = the "
            "same order).</p>" + table(headers, rows))


def token_section(run: Run) -> str:
    """Prompt cost per LLM paradigm (``report.token_table``) and the token plot."""
    if not len(run.tokens):
        return ""
    frame = report.token_table(run.tokens)
    rows = [[text_cell(r.paradigm), number_cell(r.mean_tokens, 1), number_cell(r.p95_tokens, 0),
             number_cell(r.history_carried, fmt=".1%"), number_cell(r.history_cut, fmt=".1%")]
            for r in frame.itertuples(index=False)]
    headers = [text_cell("paradigm"), *map(Cell, ("mean prompt tokens", "p95 prompt tokens", "mean history carried",
                                                  "users with history cut"))]
    plot = image(run.path / "tokens.png", "prompt tokens", "Prompt length against history length, with the token "
                 "budget, and the share of the history each prompt carries.")
    return ('<h2 id="tokens">Prompt cost</h2><p class="note">First seed, test-stage prompts; soft positions (RA-Rec) '
            "count as tokens.</p>" + table(headers, rows) + plot)


def report_page(run: Run, parts: list[report.ProtocolReport]) -> str:
    """The whole ``report.html`` of a run: identity, every protocol's section, agreement, prompt cost, plots."""
    several = len(parts) > 1
    links = [(f"protocol-{p.name}", f"protocol {p.name}" if several else "results") for p in parts]
    links += [("agreement", "protocols agree?")] if several else []
    links += [("tokens", "prompt cost")] if len(run.tokens) else []
    efficiency = image(run.path / "efficiency.png", "data efficiency", "Main metrics against the swept value.")
    links += [("efficiency", "sweep")] if efficiency else []
    nav = "<nav>" + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in links) + "</nav>"
    body = [f"<h1>Results: {esc(run.manifest.dataset)} <small>{len(run.paradigms)} paradigms, "
            f"{len(run.seeds)} seed(s)</small></h1>", nav, '<h2 id="run">Run</h2>', facts(manifest_facts(run))]
    body += [protocol_section(run, part, several, index == 0) for index, part in enumerate(parts)]
    body += [agreement_section(parts)] if several else []
    body.append(token_section(run))
    if efficiency:
        body.append(f'<h2 id="efficiency">Sweep</h2>{efficiency}')
    return page(f"bench results: {run.manifest.dataset}", "\n".join(b for b in body if b))


def write_report(run_dir: Path, overrides=()) -> Path:
    """Write ``RUN_DIR/report.html`` from the run's saved files and the plots ``bench.report.build`` drew there;
    returns its path. ``overrides``: ``report.*`` settings, as for :func:`bench.report.build`."""
    run = Run.from_disk(run_dir, overrides)
    return write_page(run, report.protocol_reports(run))


def write_page(run: Run, parts: list[report.ProtocolReport]) -> Path:
    """Write ``report.html`` into ``run``'s directory from a report already computed (what
    :func:`bench.report.build` returns); returns its path."""
    path = run.path / REPORT_FILE
    atomic_write_text(path, report_page(run, parts))
    return path
