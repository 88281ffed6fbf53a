"""Cache entries are verified before use: corrupt, incomplete or version-mismatched entries are rebuilt with a
warning, never trusted; an entry that failed halfway leaves nothing behind."""
import re

import pytest

from bench.cache import CacheEntry


def write_entry(root, version="1"):
    entry = CacheEntry(root, "things", "key123", version)
    with entry.write() as pending:
        (pending.path / "data.bin").write_bytes(b"payload" * 100)
        pending.data["rows"] = 700
    return entry


def test_a_good_entry_is_read_back(tmp_path):
    assert write_entry(tmp_path).read() == {"rows": 700}


@pytest.mark.parametrize("damage, message", [
    ("truncate", "corrupt (data.bin does not match its checksum)"),
    ("delete", "incomplete (missing data.bin)"),
    ("meta", "unreadable"),
    ("version", "stale (written by format"),
])
def test_damaged_or_stale_entries_are_detected_and_removed(tmp_path, damage, message):
    entry = write_entry(tmp_path)
    if damage == "truncate":
        (entry.path / "data.bin").write_bytes(b"pay")
    elif damage == "delete":
        (entry.path / "data.bin").unlink()
    elif damage == "meta":
        (entry.path / "meta.json").write_text("{not json")
    else:
        entry = CacheEntry(tmp_path, "things", "key123", "2")  # the code that reads it has a newer version
    with pytest.warns(UserWarning, match=re.escape(message)):
        assert entry.read() is None
    assert not entry.path.exists()  # rebuilt on next use, never half-trusted


def test_a_failed_write_leaves_nothing(tmp_path):
    entry = CacheEntry(tmp_path, "things", "key123", "1")
    with pytest.raises(RuntimeError):
        with entry.write() as pending:
            (pending.path / "data.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list((tmp_path / "things").iterdir()) == []
    assert entry.read() is None  # a later read simply finds no entry
