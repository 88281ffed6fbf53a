"""On-disk cache entries that are written atomically and verified before they are trusted.

An entry is a folder ``<root>/<kind>/<key>/`` holding its files and a ``meta.json`` that records the
cache format, the key and the sha256 of every file. :meth:`CacheEntry.read` returns the metadata only
when all of that checks out; a corrupt, truncated or stale entry is reported with a warning, deleted
and treated as missing, so the caller rebuilds it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

FORMAT = 1


def bench_home() -> Path:
    """``$XDG_CACHE_HOME/bench`` (``~/.cache/bench``): where bench keeps caches and data unless told otherwise."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bench"


def default_cache_root(configured: str | None) -> Path:
    """The cache folder: the config's ``cache_dir``, else ``$BENCH_CACHE``, else :func:`bench_home`."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("BENCH_CACHE")
    return Path(env).expanduser() if env else bench_home()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``; on success it replaces ``path`` in one rename, on
    an exception it is deleted and ``path`` is left as it was (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic write of UTF-8 text (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it replaces ``path`` (and what was there) in one
    rename, on an exception it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first: what creating ``path`` would add, and what
    :func:`remove_empty` takes away again after a failure."""
    path = Path(path)
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; one that is absent or holds something stays."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


class CacheEntry:
    """One verified cache folder ``root/kind/key``."""

    def __init__(self, root: Path, kind: str, key: str, version: str):
        self.path = Path(root) / kind / key
        self.kind, self.key, self.version = kind, key, version

    def read(self) -> dict[str, Any] | None:
        """The entry's metadata if it exists and verifies, else ``None`` (a bad entry is deleted with a warning)."""
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            return None
        problem = self._problem(meta_file)
        if problem is None:
            return json.loads(meta_file.read_text())["data"]
        warnings.warn(f"cache entry {self.path} is {problem}; rebuilding it", stacklevel=2)
        shutil.rmtree(self.path, ignore_errors=True)
        return None

    def problem(self) -> str | None:
        """What is wrong with the entry (missing, corrupt, stale), or None when it verifies; nothing is deleted."""
        meta_file = self.path / "meta.json"
        return self._problem(meta_file) if meta_file.is_file() else "missing (no meta.json)"

    def _problem(self, meta_file: Path) -> str | None:
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return "unreadable (corrupt meta.json)"
        if meta.get("format") != FORMAT or meta.get("version") != self.version or meta.get("key") != self.key:
            return f"stale (written by format {meta.get('format')} / version {meta.get('version')})"
        for name, digest in meta.get("files", {}).items():
            file = self.path / name
            if not file.is_file():
                return f"incomplete (missing {name})"
            if file_sha256(file) != digest:
                return f"corrupt ({name} does not match its checksum)"
        return None

    @contextlib.contextmanager
    def write(self) -> Iterator["Pending"]:
        """Yield a :class:`Pending` entry to fill (files in ``.path``, metadata in ``.data``); on success it
        becomes this entry atomically, with a checksum of every file. On an exception nothing is left behind."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pending = Pending(Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.key}.")), {})
        try:
            yield pending
            tmp = pending.path
            files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            meta = {"format": FORMAT, "version": self.version, "key": self.key, "files": files,
                    "data": pending.data}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(tmp, self.path)
        finally:
            shutil.rmtree(pending.path, ignore_errors=True)

    def copy_to(self, dest: Path) -> None:
        """Copy this (verified) entry's folder to ``dest`` atomically, replacing what is there."""
        with atomic_folder(dest) as tmp:
            shutil.copytree(self.path, tmp, dirs_exist_ok=True)


@dataclass
class Pending:
    """A cache entry being written: put files under ``path`` and JSON-able metadata in ``data``."""

    path: Path
    data: dict
