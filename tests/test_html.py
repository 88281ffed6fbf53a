"""The self-contained HTML report (``bench report --html``) and the leaderboard of several runs
(``bench leaderboard``), checked as files: content, escaping, no external references, and the refusals."""
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from bench import html, leaderboard, report, rundir
from bench.errors import BenchError
from bench.rundir import write_json
from conftest import run_cli
from test_report import edit_config, make_run

PARADIGMS = {"strong": 0.6, "weak": 0.3, "weak-twin": 0.3}
#: A src/href that leaves the file: an absolute or protocol-relative address.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.I)


def add_sampled_protocol(path, name: str = "uni19", negatives: int = 19, lists: str = "f" * 16) -> None:
    """Give a constructed run a second protocol: every full-ranking row again, its rank capped at N + 1."""
    rows = pd.read_csv(path / "per_user.csv", dtype={"user": str})
    sampled = rows.assign(protocol=name, rank=np.minimum(rows["rank"], negatives + 1))
    pd.concat([rows, sampled], ignore_index=True).to_csv(path / "per_user.csv", index=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["protocols"] = {name: {"sampling": "uni", "negatives": negatives, "seed": 0, "hash": lists}}
    write_json(path / "manifest.json", manifest)
    edit_config(path, **{"eval.protocols": ["full", name]})


def set_manifest(path, **fields) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    write_json(path / "manifest.json", {**manifest, **fields})


def two_protocol_run(path):
    """A constructed run with three paradigms under full ranking and uni19."""
    make_run(path, PARADIGMS)
    add_sampled_protocol(path)
    return path


class Tables(HTMLParser):
    """Every table of a page: its class and its rows as lists of cell texts."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self._row, self._cell = [], None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"class": dict(attrs).get("class", ""), "rows": []})
        elif tag == "tr":
            self._row = []
            self.tables[-1]["rows"].append(self._row)
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A two-protocol run with its tables and plots built, and its report page."""
    path = two_protocol_run(tmp_path_factory.mktemp("html") / "run")
    report.build(path)
    return path, html.write_report(path).read_text()


def test_report_page_is_one_self_contained_file(built):
    path, page = built
    assert page.startswith("<!DOCTYPE html>") and "<script>" in page and "<style>" in page
    assert not EXTERNAL.findall(page), EXTERNAL.findall(page)
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    plots = {"metrics.png", "metrics-uni19.png", "tokens.png"}
    assert plots <= {p.name for p in path.glob("*.png")}
    assert len(sources) == len(plots) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert re.findall(r'<(?:script|link|iframe)[^>]*(?:src|href)=', page) == []


def test_report_page_has_every_protocol_with_results_heatmaps_and_validation(built):
    path, page = built
    tables = Tables(page).tables
    results = [t for t in tables if t["rows"][0][:2] == ["", "paradigm"]]
    assert len(results) == 2  # full and uni19
    for table, name in zip(results, ("full", "uni19")):
        expected = pd.read_csv(path / ("results.csv" if name == "full" else f"results-{name}.csv"))
        assert [row[1] for row in table["rows"][1:]] == list(expected["paradigm"])
        assert table["class"] == "sortable"
    headers = [t["rows"][0] for t in results]
    assert "HR@100" in headers[0] and "HR@100" not in headers[1]  # trivial among 20 candidates
    assert len([t for t in tables if "heatmap" in t["class"]]) == 4  # two main metrics per protocol
    for anchor in ("protocol-full", "protocol-uni19", "agreement", "tokens", "run"):
        assert f'id="{anchor}"' in page
    assert page.count("<h3>Validation</h3>") == 2 and "Prompt cost" in page


def test_results_cells_carry_the_means_superscripts_and_best_value(built):
    path, page = built
    expected = pd.read_csv(path / "results.csv").set_index("paradigm")
    strong = re.search(r"<tr><td class=\"text\">a</td><td class=\"text\">strong</td>(.*?)</tr>", page).group(1)
    first = re.search(r'<td data-sort="([^"]+)">(.*?)</td>', strong)
    assert float(first.group(1)) == pytest.approx(expected.loc["strong", "hit@100_mean"])
    beats = expected.loc["strong", "hit@100_beats"]
    assert beats and f"<sup>{beats}</sup>" in first.group(2) and "<strong>" in first.group(2)
    assert "± " in first.group(2)  # two seeds: the spread is shown


def test_manifest_essentials_are_on_the_page(built):
    path, page = built
    manifest = json.loads((path / "manifest.json").read_text())
    text = re.sub(r"<[^>]+>", "", page)
    for label in ("split", "encoder", "backbone", "dtype", "budgets", "command", "protocols", "seeds"):
        assert f"<dt>{label}</dt>" in page, label
    assert manifest["split_hash"] in text and manifest["command"] in text and "train: epochs=" in text
    assert "uni19: the target among 19 negatives sampled uniformly" in text


def test_every_text_from_the_run_is_escaped(tmp_path):
    path = make_run(tmp_path / "run", {'<b>bold</b>&"q"': 0.5, "plain": 0.3})
    set_manifest(path, command="bench run --out '<script>alert(1)</script>'")
    page = html.write_report(path).read_text()
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;&amp;&quot;q&quot;" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_beyond_accuracy_is_a_section_where_the_report_computes_it(built, monkeypatch):
    path, _ = built

    def table(run, stage="test"):
        n = len(run.paradigms)
        return pd.DataFrame({"paradigm": run.paradigms, "itemcoverage@10_mean": np.linspace(0.1, 0.3, n),
                             "itemcoverage@10_std": 0.01, "itemcoverage@10_low": 0.05, "itemcoverage@10_high": 0.4})

    monkeypatch.setattr(report, "beyond_accuracy_table", table)
    page = html.write_report(path).read_text()
    assert page.count("<h3>Beyond accuracy</h3>") == 1  # computed under full ranking only
    section = page[page.index("<h3>Beyond accuracy</h3>"):]
    assert 'data-sort="0.2"' in section and "[0.0500, 0.4000]" in section and "@10</th>" in section
    monkeypatch.setattr(report, "beyond_accuracy_table", lambda run, stage="test": None)
    assert "Beyond accuracy" not in html.write_report(path).read_text()


def test_cli_report_html_writes_the_page_beside_the_tables(built):
    path, _ = built
    (path / "report.html").unlink()
    result = run_cli("report", str(path), "--html")
    assert result.returncode == 0, result.stderr
    assert f"report page: {path / 'report.html'}" in result.stdout and (path / "report.html").is_file()
    assert "--html" in run_cli("report", "--help").stdout


# -- leaderboard -----------------------------------------------------------------------------------------------
@pytest.fixture
def three_runs(tmp_path):
    """Two runs of data set toy on one split (one has a paradigm the other lacks) and one run of data set other."""
    a = make_run(tmp_path / "a", PARADIGMS)
    b = make_run(tmp_path / "b", {"strong": 0.5, "extra": 0.7})
    c = make_run(tmp_path / "c", {"strong": 0.2, "weak": 0.1})
    set_manifest(c, dataset="other", split_hash="cd" * 8)
    return a, b, c


def test_leaderboard_has_a_row_per_data_set_paradigm_and_run(three_runs, tmp_path):
    a, b, c = three_runs
    out = tmp_path / "board" / "leaderboard.html"
    text = leaderboard.build([a, b, c], out)
    assert (out.with_suffix(".md")).read_text() == text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert header[:4] == ["| data set", "paradigm", "run", "seeds"] and "NDCG@10 (full)" in header
    assert [(r[0][2:], r[1], r[2]) for r in body] == [
        ("toy", "strong", str(a)), ("toy", "weak", str(a)), ("toy", "weak-twin", str(a)), ("toy", "strong", str(b)),
        ("toy", "extra", str(b)), ("other", "strong", str(c)), ("other", "weak", str(c))]
    hr = header.index("HR@100 (full)")
    best = {(r[0][2:], r[1], r[2]) for r in body if r[hr].startswith("**")}
    assert ("toy", "extra", str(b)) in best and ("other", "strong", str(c)) in best and len(best) == 2
    page = out.read_text()
    assert not EXTERNAL.findall(page) and "leaderboard" in page.lower()
    for name in ("strong", "weak", "weak-twin", "extra"):
        assert f'<td class="text">{name}</td>' in page


def test_leaderboard_columns_are_metric_by_protocol(tmp_path):
    a, b = (two_protocol_run(tmp_path / name) for name in "ab")
    frame_text = leaderboard.build([a, b])
    header = frame_text.splitlines()[4]
    assert "HR@10 (full)" in header and "HR@10 (uni19)" in header and "HR@100 (uni19)" not in header


def test_leaderboard_refuses_one_data_set_on_two_splits_in_one_line(three_runs):
    a, b, _ = three_runs
    set_manifest(b, split_hash="0" * 16)
    with pytest.raises(BenchError, match=r"not comparable: split hash differs") as err:
        leaderboard.build([a, b])
    message = str(err.value)
    assert "\n" not in message and str(a) in message and str(b) in message


def test_leaderboard_joins_runs_of_other_protocols_but_refuses_other_candidate_lists(three_runs, tmp_path):
    """A run with uni19 beside one without: a column per protocol, empty where a run lacks it; one protocol with
    two sets of candidate lists on one data set is refused in one line."""
    a, b, c = three_runs
    add_sampled_protocol(b)
    out = tmp_path / "board.html"
    text = leaderboard.build([a, b, c], out)
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    uni = header.index("HR@10 (uni19)")
    assert [r[uni] != "" for r in body] == [False, False, False, True, True, False, False]  # only b has uni19
    assert header.index("HR@10 (full)") < uni and all(r[header.index("HR@10 (full)")] for r in body)
    cells = [row[uni] for row in Tables(out.read_text()).tables[0]["rows"][1:]]
    assert [c.strip() != "" for c in cells] == [False, False, False, True, True, False, False]
    add_sampled_protocol(a, lists="0" * 16)
    with pytest.raises(BenchError, match=r"candidate lists of uni19 differ") as err:
        leaderboard.build([a, b])
    assert "\n" not in str(err.value)
    add_sampled_protocol(c, lists="0" * 16)
    leaderboard.build([c, b])  # another data set: its own candidate lists


def test_leaderboard_shows_beyond_accuracy_of_runs_with_top_k_lists(three_runs, monkeypatch):
    """A run with stored lists gets its beyond-accuracy columns (never bold); a run without them, empty cells."""
    a, b, _ = three_runs
    monkeypatch.setattr(rundir.Run, "top_lists", property(lambda run: object() if run.path == a else None))

    def table(run, stage="test"):
        n = len(run.paradigms)
        return pd.DataFrame({"paradigm": run.paradigms, "itemcoverage@10_mean": np.linspace(0.1, 0.3, n),
                             "itemcoverage@10_std": 0.01, "averagepopularity@10_mean": 123.456,
                             "averagepopularity@10_std": 1.0})

    monkeypatch.setattr(report, "beyond_accuracy_table", table)
    edit_config(a, **{"report.beyond_metrics": ["itemcoverage@10", "averagepopularity@10"]})
    rows = [line.removesuffix(" |").split(" | ") for line in leaderboard.build([a, b]).splitlines()
            if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    coverage, popularity = header.index("Coverage@10 (top-K lists)"), header.index("AvgPop@10 (top-K lists)")
    assert [r[coverage] for r in body] == ["0.1000 ± 0.0100", "0.2000 ± 0.0100", "0.3000 ± 0.0100", "", ""]
    assert body[0][popularity] == "123.5 ± 1.0" and not any("**" in r[coverage] for r in body)


def test_leaderboard_puts_other_data_sets_side_by_side_but_not_other_masking(three_runs):
    a, _, c = three_runs
    leaderboard.build([a, c])  # different split hashes, different data sets: two groups of rows
    edit_config(c, **{"eval.mask_history": False})
    with pytest.raises(BenchError, match=r"eval.mask_history differs \(True vs False\)"):
        leaderboard.build([a, c])


def test_cli_leaderboard_prints_the_table_and_refuses_with_one_line(three_runs, tmp_path):
    a, b, c = three_runs
    out = tmp_path / "lb.html"
    result = run_cli("leaderboard", str(a), str(b), str(c), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "| data set | paradigm | run | seeds |" in result.stdout and f"leaderboard page: {out}" in result.stdout
    assert out.is_file() and out.with_suffix(".md").is_file()
    set_manifest(b, split_hash="0" * 16)
    result = run_cli("leaderboard", str(a), str(b))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ") and "split hash differs" in result.stderr
    usage = run_cli("leaderboard", "--help").stdout
    assert "same data set" in usage and "split hash" in usage and "protocols" in usage
