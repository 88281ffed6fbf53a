"""Property-based tests of the atomic-file loader: malformed input always ends in a clean one-line error naming
the file, and well-formed input is read back exactly."""
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.data import read_interactions, read_titles
from bench.errors import BenchError

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=8)
FIELD = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_clean_failure(path, call):
    """``call()`` either succeeds or raises a one-line BenchError that names ``path``."""
    try:
        return call()
    except BenchError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message, message
        return None


@SETTINGS
@given(lines=st.lists(st.lists(FIELD, min_size=0, max_size=5).map("\t".join), max_size=8),
       header=st.sampled_from([HEADER, "user_id:token\titem_id:token", "item_id:token\ttimestamp:float",
                               "user_id\titem_id", "", "user_id:token\titem_id:token\ttimestamp:float\textra:token"]),
       newline=st.sampled_from(["\n", "\r\n"]))
def test_arbitrary_text_gives_a_frame_or_a_clean_error(tmp_path, lines, header, newline):
    path = tmp_path / "x.inter"
    path.write_text(newline.join([header, *lines]) + newline, encoding="utf-8")
    frame = check_clean_failure(path, lambda: read_interactions(path))
    if frame is not None:
        assert list(frame.columns) == ["user", "item", "time"] and len(frame) > 0
        assert frame["time"].notna().all() and (frame["user"] != "").all() and (frame["item"] != "").all()


@SETTINGS
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_give_a_frame_or_a_clean_error(tmp_path, data):
    path = tmp_path / "x.inter"
    path.write_bytes(HEADER.encode() + b"\n" + data)
    check_clean_failure(path, lambda: read_interactions(path))
    item = tmp_path / "x.item"
    item.write_bytes(b"item_id:token\ttitle:token_seq\n" + data)
    check_clean_failure(item, lambda: read_titles(item))


@SETTINGS
@given(rows=st.lists(st.tuples(TOKEN, TOKEN, st.integers(0, 2**40)), min_size=1, max_size=30))
def test_well_formed_files_are_read_back_exactly(tmp_path, rows):
    path = tmp_path / "x.inter"
    path.write_text(HEADER + "\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    frame = read_interactions(path)
    assert list(zip(frame["user"], frame["item"], frame["time"])) == [(u, i, float(t)) for u, i, t in rows]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "1e999"])
def test_non_finite_timestamps_are_rejected_with_their_line(tmp_path, value):
    path = tmp_path / "x.inter"
    path.write_text(f"{HEADER}\nu1\ti1\t5\nu1\ti2\t{value}\n")
    with pytest.raises(BenchError, match=rf"x.inter:3: malformed line: timestamp '{value}'"):
        read_interactions(path)
