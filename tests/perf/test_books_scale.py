"""Amazon-Books scale on one small machine (``make perf``; issue 12, item 4).

Generates the 22.5M-row synthetic Amazon_Books (``scripts/make_books.py``; once, then reused from
``$BENCH_CACHE/perf``, else ``~/.cache/bench/perf``, while its recorded seed and sizes match), then runs each stage
in a fresh process (``scripts/books_scale.py``) and prints wall time and peak RSS per stage:

* split: ``build_split`` with the default preset, ``data.max_users`` unset, into an empty cache;
* load split + ``pop`` fitted through the contract + full ranking of 2,000 users' test items over all items.

``BENCH_PERF_RECBOLE_WHOLE=1`` adds, for comparison, RecBole building the split from the raw file by itself.
Asserted: the issue's goals for the split (under 10 minutes, under 12 GB), a split with at least 1M items, and
that ranking never holds a users x items score matrix (its peak is a fraction of one). Timings depend on the
machine; the goals were set for 2 CPU cores and 24 GB.
"""
import os
import shutil

from conftest import load_script

SPLIT_GOAL_S, SPLIT_GOAL_GB = 600, 12.0
USERS = 2_000


def _books_scale():
    return load_script("books_scale")


def test_books_scale_split_and_full_ranking(tmp_path):
    scale = _books_scale()
    stages = ["generate", "split", "rank"]
    if os.environ.get("BENCH_PERF_RECBOLE_WHOLE") == "1":
        stages.append("recbole-whole")
    try:
        rows = scale.run(scale.default_data_dir(), stages, USERS, scale.make_books.Shape(), scale.ROOT, tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # the split cache: about 1 GB
    print(f"\nsynthetic Amazon_Books ({scale.make_books.Shape().interactions:,} rows), one process per stage:\n"
          + scale.table(rows))
    by_stage = {row.stage: row for row in rows}
    split, load = by_stage["split"], by_stage["load split"]
    rank = next(row for row in rows if row.stage.startswith("pop + rank"))
    assert split.extra["items"] >= 1_000_000
    assert split.seconds < SPLIT_GOAL_S and split.peak_gb < SPLIT_GOAL_GB
    full_matrix_gb = USERS * rank.extra["items"] * 4 / 2 ** 30
    assert rank.peak_gb - load.extra["rss_gb"] < full_matrix_gb / 10
