"""The HTML pages in a real browser: headless Chromium renders ``report.html`` and a leaderboard page, the test reads
the rendered DOM, sorts a table by clicking a header through the page's own script, and saves full-page
screenshots for a person to look at (``tests/artifacts/*.png``, git-ignored). Skipped, with one line, where no
Chromium is installed (``.ci/run`` installs Debian's ``chromium`` where apt works)."""
import shutil

import pytest

import chromium
from bench import html, leaderboard
from bench.rundir import FILES, Run, TopLists
from conftest import ROOT
from test_html import two_protocol_run

pytestmark = pytest.mark.skipif(chromium.missing() is not None, reason=chromium.missing() or "")

ARTIFACTS = ROOT / "tests" / "artifacts"
#: Committed reference runs: a many-paradigm, three-seed run, its float32 twin (same split) and another data set.
REFERENCE = ("ml-100k-default", "ml-100k-float32", "amazon-beauty")

ROWS = "Array.from(document.querySelectorAll({table!r} + ' tbody tr'))"
COLUMN = ROWS + ".map(r => [r.getAttribute('data-group') || '', r.cells[{column}].getAttribute('data-sort')])"
TEXT_COLUMN = ROWS + ".map(r => r.cells[{column}].textContent.trim())"


@pytest.fixture(scope="module")
def browser():
    with chromium.Browser.start(width=1440, height=1000) as driver:
        yield driver


@pytest.fixture(scope="module")
def reference_copy(tmp_path_factory):
    """ml-100k-default's saved files and plots, copied so that writing report.html leaves results/ alone."""
    source, target = ROOT / "results" / REFERENCE[0], tmp_path_factory.mktemp("browser") / REFERENCE[0]
    target.mkdir()
    for path in [*(source / name for name in FILES), source / TopLists.FILE, *source.glob("*.png")]:
        shutil.copy2(path, target / path.name)
    return target


def sorted_as_clicked(values: list, descending: bool) -> bool:
    """Whether ``[group, value]`` pairs are in group order and, within a group, numerically sorted."""
    keys = [(int(group or 0), float(value)) for group, value in values]
    expected = sorted(keys, key=lambda k: (k[0], -k[1] if descending else k[1]))
    return keys == expected


def check_sorting(browser, table: str, column: int) -> None:
    """Click the header of ``column`` twice: largest first, then smallest first, and the header is marked."""
    header = f"{table} thead th:nth-child({column + 1})"
    before = browser.evaluate(COLUMN.format(table=table, column=column))
    browser.click(header)
    after = browser.evaluate(COLUMN.format(table=table, column=column))
    assert sorted_as_clicked(after, descending=True)
    assert browser.evaluate(f"document.querySelector({header!r}).getAttribute('aria-sort')") == "descending"
    assert browser.evaluate(f"document.querySelector({table!r} + ' tbody td.sorted') !== null")
    browser.click(header)
    again = browser.evaluate(COLUMN.format(table=table, column=column))
    assert sorted_as_clicked(again, descending=False) and after != again  # the order changed
    assert browser.evaluate(f"document.querySelector({header!r}).getAttribute('aria-sort')") == "ascending"
    browser.click(header)  # largest first again, for the screenshot


def check_offline(browser) -> None:
    """Every image decoded, and nothing but data: URIs was loaded."""
    assert browser.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    loaded = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith("data:") for name in loaded), loaded


def test_report_page_renders_every_paradigm_and_sorts_by_a_click(browser, reference_copy):
    run = Run.from_disk(reference_copy)
    browser.open(html.write_report(reference_copy))
    table = "#results-full"
    names = browser.evaluate(TEXT_COLUMN.format(table=table, column=1))
    assert names == run.paradigms
    body = browser.evaluate("document.body.innerText")
    assert all(name in body for name in run.paradigms) and run.manifest.split_hash in body
    assert browser.evaluate("document.querySelectorAll('table.heatmap').length") == 2
    assert browser.evaluate("document.querySelectorAll('img').length") >= 2
    check_offline(browser)
    check_sorting(browser, table, 3)  # NDCG@10
    beyond = browser.evaluate(TEXT_COLUMN.format(table="#beyond-full", column=0))  # from topk.npz
    assert beyond == run.paradigms
    check_sorting(browser, "#beyond-full", 1)  # Coverage@10
    shot = browser.screenshot(ARTIFACTS / "report.png")
    print(f"screenshot: {shot}")


def test_report_page_of_two_protocols_has_a_section_each(browser, tmp_path):
    path = two_protocol_run(tmp_path / "run")
    browser.open(html.write_report(path))
    assert browser.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.id)")[:3] == [
        "run", "protocol-full", "protocol-uni19"]
    second = "#results-uni19"
    assert browser.evaluate(TEXT_COLUMN.format(table=second, column=1)) == Run.from_disk(path).paradigms
    check_sorting(browser, second, 2)
    print(f"screenshot: {browser.screenshot(ARTIFACTS / 'report-protocols.png')}")


def test_leaderboard_page_groups_data_sets_and_sorts_within_them(browser, tmp_path):
    runs = [ROOT / "results" / name for name in REFERENCE]
    out = tmp_path / "leaderboard.html"
    leaderboard.build(runs, out)
    browser.open(out)
    table = "#leaderboard"
    rows = browser.evaluate(TEXT_COLUMN.format(table=table, column=1))
    expected = [name for path in runs for name in Run.from_disk(path).paradigms]
    assert sorted(rows) == sorted(expected)
    body = browser.evaluate("document.body.innerText")
    assert all(name in body for name in expected) and "amazon-beauty" in body
    check_offline(browser)
    check_sorting(browser, table, 5)  # NDCG@10 (full), within each data set
    datasets = browser.evaluate(TEXT_COLUMN.format(table=table, column=0))
    assert datasets == sorted(datasets, key=["ml-100k", "amazon-beauty"].index)
    shot = browser.screenshot(ARTIFACTS / "leaderboard.png")
    print(f"screenshot: {shot}")
