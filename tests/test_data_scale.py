"""The integer-coded data path (Amazon-Books scale) against the reference string path it replaces in
``build_split``: the same rows, errors, filtered users and prepared-file bytes, and the same ml-100k split."""
import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import data
from bench.config import load_config
from bench.errors import BenchError
from bench.split import build_split, write_chronological

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=6)
ODD_TOKEN = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\x00"),
                    min_size=1, max_size=6)
TIME = st.one_of(st.integers(-2**62, 2**64).map(str), st.floats(allow_nan=True).map(repr),
                 st.text(alphabet="0123456789.eE+- _xinfa", max_size=8), st.sampled_from(["1e999", " 5", "5 "]))
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _outcome(call):
    try:
        return call(), None
    except BenchError as exc:
        return None, str(exc)


def _same_read(path):
    reference, ref_error = _outcome(lambda: data.read_interactions(path))
    coded, error = _outcome(lambda: data.read_interaction_codes(path).frame())
    assert error == ref_error
    if reference is not None:
        pd.testing.assert_frame_equal(coded, reference)


@SETTINGS
@given(rows=st.lists(st.tuples(TOKEN, TOKEN, TIME), min_size=0, max_size=12),
       extra=st.sampled_from(["", "\n", "\n\n", " \t \n", "\r\n"]))
def test_coded_reader_matches_the_reference_reader(tmp_path, rows, extra):
    path = tmp_path / "x.inter"
    path.write_text(HEADER + "\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows) + extra)
    _same_read(path)


@SETTINGS
@given(body=st.binary(max_size=120))
def test_coded_reader_matches_on_arbitrary_bytes(tmp_path, body):
    path = tmp_path / "x.inter"
    path.write_bytes(b"user_id:token\titem_id:token\n" + body)
    _same_read(path)


def _reference_filter(df, min_user, min_item, max_users, seed):
    """The string-based filter that bench used before the coded path (kept here as the oracle)."""
    def kcore(frame):
        while True:
            before = len(frame)
            if min_item > 0:
                frame = frame[frame["item"].map(frame["item"].value_counts()).to_numpy() >= min_item]
            frame = frame[frame["user"].map(frame["user"].value_counts()).to_numpy() >= min_user]
            if len(frame) == before:
                return frame

    df = kcore(df)
    if max_users is not None and df["user"].nunique() > max_users:
        users = np.sort(df["user"].unique())
        chosen = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
        df = kcore(df[df["user"].isin(chosen)])
    return df.reset_index(drop=True)


def _frame(rows):
    return pd.DataFrame({"user": [u for u, _, _ in rows], "item": [i for _, i, _ in rows],
                         "time": np.array([t for _, _, t in rows], dtype=float)})


@SETTINGS
@given(rows=st.lists(st.tuples(st.sampled_from("abcdefghij"), st.sampled_from("pqrstuvw"), st.integers(0, 5)),
                     min_size=1, max_size=80),
       min_user=st.integers(1, 4), min_item=st.integers(0, 4), max_users=st.none() | st.integers(1, 6),
       seed=st.integers(0, 3))
def test_coded_filter_keeps_the_rows_the_reference_filter_keeps(rows, min_user, min_item, max_users, seed):
    frame = _frame(rows)
    expected = _reference_filter(frame, min_user, min_item, max_users, seed)
    coded = data.CodedInteractions.from_columns(frame["user"], frame["item"], frame["time"])
    kept = data.filter_codes(coded, min_user, min_item, max_users, seed).frame()
    pd.testing.assert_frame_equal(kept, expected)
    pd.testing.assert_frame_equal(data.filter_interactions(frame, min_user, min_item, max_users, seed), expected)


def _reference_prepared(frame, path):
    order = np.lexsort((frame["time"].to_numpy(), frame["user"].to_numpy()))
    frame = frame.iloc[order].reset_index(drop=True)
    frame["time"] = frame.groupby("user", sort=False).cumcount().astype(np.int64)
    frame.to_csv(path, sep="\t", index=False, header=["user_id:token", "item_id:token", "timestamp:float"])


@SETTINGS
@given(rows=st.lists(st.tuples(st.one_of(TOKEN, ODD_TOKEN), st.one_of(TOKEN, ODD_TOKEN), st.integers(0, 3)),
                     min_size=1, max_size=40))
def test_prepared_file_has_the_bytes_to_csv_wrote(tmp_path, rows):
    frame = _frame(rows)
    _reference_prepared(frame, tmp_path / "reference.inter")
    coded = data.CodedInteractions.from_columns(frame["user"], frame["item"], frame["time"])
    write_chronological(coded, tmp_path / "coded.inter", rows_per_block=7)
    assert (tmp_path / "coded.inter").read_bytes() == (tmp_path / "reference.inter").read_bytes()


def test_tsv_bytes_writes_strings_and_decimal_integers():
    lines = data.tsv_bytes([np.array([b"a", b"bcd", b"e"]), np.array([0, 105, 7]), np.array([b"x", b"y", b"zz"])])
    assert lines == b"a\t0\tx\nbcd\t105\ty\ne\t7\tzz\n"


def test_ml100k_split_is_unchanged(tmp_path):
    # The hash of the default ml-100k split before the coded path existed: the reference results depend on it.
    split = build_split(load_config("default", overrides=[{"cache_dir": str(tmp_path)}]), tmp_path)
    assert split.hash == "a05c359d044f8b03"


def test_a_bad_line_is_still_named(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text(HEADER + "\nu1\ti1\t1\nu1\ti2\tnoon\n")
    with pytest.raises(BenchError, match=r"x.inter:3: malformed line: timestamp 'noon'"):
        data.read_interaction_codes(path)
