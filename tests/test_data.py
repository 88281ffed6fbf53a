import urllib.error

import numpy as np
import pandas as pd
import pytest

from bench import data
from bench.errors import BenchError


def test_amazon_books_layout_reads_ids_times_and_clean_titles(fixtures_dir):
    files = data.locate_dataset("Amazon_Books", fixtures_dir, download=False)
    inter = data.read_interactions(files.inter)
    assert list(inter.columns) == ["user", "item", "time"] and len(inter) == 48
    assert inter["time"].dtype == np.float64 and inter["user"].iloc[0] == "A001XYZ0007"
    titles = data.read_titles(files.item)
    assert titles["B000000001"] == "Harry Potter & the Sorcerer's Stone"
    assert titles["B000000002"] == 'The "Quoted" Book'
    assert titles["B000000003"] == "Argan Oil \u2605LIMITED SALE\u2605 Best Seller"
    assert titles["B000000004"] is None                      # empty title is missing, not ""
    assert "B000000007" not in titles                        # no row in .item
    assert titles["B000000006"] == "Cooking & Baking"        # double-escaped entity
    assert "  " not in titles["B000000005"] and len(titles["B000000005"]) > 500


def test_book_alias_finds_its_recbole_folder(tmp_path, fixtures_dir):
    (tmp_path / "Amazon_Books").mkdir()
    for name in ("Amazon_Books.inter", "Amazon_Books.item"):
        (tmp_path / "Amazon_Books" / name).write_bytes((fixtures_dir / "Amazon_Books" / name).read_bytes())
    files = data.locate_dataset("book", tmp_path, download=False)
    assert files.inter.name == "Amazon_Books.inter" and files.item is not None


def test_missing_book_without_network_says_where_to_put_files(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    with pytest.raises(BenchError) as err:
        data.locate_dataset("cloth", tmp_path, download=True)
    message = str(err.value)
    assert "Amazon_Clothing_Shoes_and_Jewelry.inter" in message and str(tmp_path) in message
    assert "\n" not in message


def test_ml100k_comes_from_the_recbole_wheel(tmp_path):
    files = data.locate_dataset("ml-100k", tmp_path, download=False)
    assert files.inter.name == "ml-100k.inter" and files.inter.is_file()
    titles = data.read_titles(files.item)
    assert titles["1"] == "Toy Story" and len(titles) == 1682


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, where", [
    ("u1\ti1\t1\nu1\ti2\t2\textra\n", ":3: malformed line"),
    ("u1\ti1\t1\nu1\ti2\n", ":3: malformed line"),
    ("u1\ti1\t1\nu1\ti2\tnoon\n", ":3: malformed line: timestamp 'noon'"),
    ("u1\t\t1\n", ":2: malformed line: empty item_id"),
])
def test_malformed_lines_name_file_and_line(tmp_path, body, where):
    path = _write(tmp_path / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n" + body)
    with pytest.raises(BenchError, match=rf"x.inter{where}"):
        data.read_interactions(path)


def test_missing_column_and_untyped_header(tmp_path):
    path = _write(tmp_path / "y.inter", "user_id:token\ttimestamp:float\nu\t1\n")
    with pytest.raises(BenchError, match=r"y.inter:1: missing required column 'item_id'"):
        data.read_interactions(path)
    path = _write(tmp_path / "z.inter", "user_id\titem_id\nu\ti\n")
    with pytest.raises(BenchError, match=r"z.inter:1: header column 1 'user_id' is not NAME:TYPE"):
        data.read_interactions(path)


def test_file_order_is_time_without_timestamp(tmp_path):
    path = _write(tmp_path / "w.inter", "user_id:token\titem_id:token\nu\tb\nu\ta\n")
    assert data.read_interactions(path)["time"].tolist() == [0.0, 1.0]


def test_unknown_dataset_suggests_a_name(tmp_path):
    with pytest.raises(BenchError, match=r"unknown dataset 'ml-100' \(did you mean 'ml-100k'\?\)"):
        data.locate_dataset("ml-100", tmp_path, download=False)


def _frame(pairs):
    return pd.DataFrame({"user": [u for u, _ in pairs], "item": [i for _, i in pairs],
                         "time": np.arange(len(pairs), dtype=float)})


def test_kcore_is_iterated_until_stable():
    # item z has 1 interaction; dropping it leaves user c with 2 < 3 interactions; that drops item y to 2.
    pairs = [("a", "x"), ("a", "y"), ("a", "w"), ("b", "x"), ("b", "y"), ("b", "w"),
             ("c", "x"), ("c", "y"), ("c", "z"), ("d", "x"), ("d", "w"), ("d", "y")]
    kept = data.filter_interactions(_frame(pairs), min_user=3, min_item=3, max_users=None, sample_seed=0)
    assert set(kept["user"]) == {"a", "b", "d"} and set(kept["item"]) == {"x", "y", "w"}


def test_user_sample_is_deterministic_and_seeded():
    pairs = [(f"u{n}", f"i{k}") for n in range(50) for k in range(3)]
    one = data.filter_interactions(_frame(pairs), 3, 0, max_users=10, sample_seed=1)
    two = data.filter_interactions(_frame(pairs).sample(frac=1, random_state=0), 3, 0, 10, sample_seed=1)
    other = data.filter_interactions(_frame(pairs), 3, 0, max_users=10, sample_seed=2)
    assert one["user"].nunique() == 10
    assert set(one["user"]) == set(two["user"])   # independent of row order
    assert set(one["user"]) != set(other["user"])
