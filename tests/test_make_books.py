"""scripts/make_books.py: the seeded synthetic Amazon_Books-like data set (a tiny --scale version)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import data
from bench.config import load_config
from bench.split import build_split
from conftest import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_books.py"
SCALE = "0.001"  # 22,500 rows, 8,000 users, 2,300 items


def _module():
    return load_script("make_books")


def _make(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--scale", SCALE, "--quiet", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def books(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("books")
    assert _make(out).returncode == 0
    return out


@pytest.fixture(scope="module")
def rows(books) -> pd.DataFrame:
    return pd.read_csv(books / "books-synth" / "books-synth.inter", sep="\t", dtype={"user_id:token": str,
                                                                                      "item_id:token": str})


def test_same_seed_same_bytes_other_seed_other_bytes(books, tmp_path):
    assert _make(tmp_path / "again").returncode == 0
    assert _make(tmp_path / "other", "--seed", "1").returncode == 0
    for suffix in ("inter", "item"):
        first = (books / "books-synth" / f"books-synth.{suffix}").read_bytes()
        assert (tmp_path / "again" / "books-synth" / f"books-synth.{suffix}").read_bytes() == first
        assert (tmp_path / "other" / "books-synth" / f"books-synth.{suffix}").read_bytes() != first


def test_files_have_recbole_headers_bench_reads(books, rows):
    folder = books / "books-synth"
    assert sorted(p.name for p in folder.iterdir()) == ["books-synth.inter", "books-synth.item", "make_books.json"]
    assert list(rows.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert (folder / "books-synth.item").read_text().splitlines()[0] == "item_id:token\ttitle:token_seq"
    inter = data.read_interactions(folder / "books-synth.inter")
    assert len(inter) == 22_500 and inter["user"].nunique() == 8_000 and inter["item"].nunique() == 2_300
    titles = data.read_titles(folder / "books-synth.item")
    assert len(titles) == 2_300 and set(titles) == set(inter["item"])
    named = [t for t in titles.values() if t]
    assert 0.9 * len(titles) < len(named) < len(titles) and not any("&amp;" in t for t in named)
    assert set(rows["rating:float"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert _module().read_record(folder)["interactions"] == 22_500


def test_popularity_is_power_law_and_activity_heavy_tailed(rows):
    items = rows["item_id:token"].value_counts().to_numpy()  # descending
    top = items[: len(items) // 100].sum() / items.sum()
    assert top > 0.15  # the top 1% of items get over 15x their share
    users = rows["user_id:token"].value_counts().to_numpy()
    assert users.max() > 30 * users.mean() and (users == 1).mean() > 0.4


def test_timestamps_strictly_increase_along_each_user(rows):
    ordered = rows.sort_values(["user_id:token", "timestamp:float"], kind="stable")
    same_user = ordered["user_id:token"].to_numpy()[1:] == ordered["user_id:token"].to_numpy()[:-1]
    steps = np.diff(ordered["timestamp:float"].to_numpy())
    assert (steps[same_user] > 0).all()
    module = _module()
    assert rows["timestamp:float"].min() >= module.T_START and rows["timestamp:float"].max() < module.T_END + 10**6


def test_bench_builds_a_split_from_it(books, tmp_path):
    cfg = load_config("default", overrides=[{"data": {"dataset": "books-synth", "data_dir": str(books)},
                                             "cache_dir": str(tmp_path)}])
    split = build_split(cfg, tmp_path)
    assert split.stats["users"] > 500 and split.stats["items"] > 1_000 and split.has_titles  # users with >= 4 rows
    assert (split.valid_target[1:] > 0).all() and (split.test_target[1:] > 0).all()
    assert split.stats["interactions"] == len(split.train_items) + 2 * split.stats["users"]


def test_a_changed_file_is_not_a_complete_data_set(books, tmp_path):
    module = _module()
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in (books / "books-synth").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    assert module.read_record(folder) is not None
    with open(folder / "books-synth.item", "ab") as handle:
        handle.write(b"extra\tline\n")
    assert module.read_record(folder) is None


@pytest.mark.parametrize("args, message", [
    (["--scale", "0"], "--scale must be > 0"),
    (["--interactions", "10", "--users", "20"], "--interactions (10) must be >= --users"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_help_describes_the_options():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--interactions" in done.stdout and "--scale" in done.stdout
