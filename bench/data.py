"""Datasets as RecBole atomic files: locate or download them, read and validate them, filter them.

The public surface is :func:`locate_dataset` (name -> files on disk), :func:`read_interactions`,
:func:`read_titles` and :func:`filter_interactions`. Everything that is wrong with a file is reported as a
one-line :class:`BenchError` naming the file and line.
"""
from __future__ import annotations

import html
import os
import re
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.cache import bench_home
from bench.config import suggest
from bench.errors import BenchError
from bench.progress import progress_bar
from bench.registry import Registry

@dataclass(frozen=True)
class KnownDataset:
    """A data set bench knows by name: its RecBole folder/file name and, for hub data, the archive to fetch
    (``url`` None: it ships with the recbole wheel)."""

    folder: str
    url: str | None = None


#: Data sets known by name (plugins: entry-point group ``bench.datasets``); any other NAME is looked up as
#: DATA_DIR/NAME/NAME.inter.
DATASETS: Registry[KnownDataset] = Registry("dataset", entry_point_group="bench.datasets")
DATASETS.add("ml-100k", KnownDataset("ml-100k"), origin="bench.data")
_HUB = "https://recbole.s3-accelerate.amazonaws.com/ProcessedDatasets/Amazon_ratings/"  # 2014 release
DATASETS.add("book", KnownDataset("Amazon_Books", _HUB + "Amazon_Books.zip"), origin="bench.data")
DATASETS.add("cloth", KnownDataset("Amazon_Clothing_Shoes_and_Jewelry",
                                   _HUB + "Amazon_Clothing_Shoes_and_Jewelry.zip"), origin="bench.data")
TITLE_FIELDS = ("title", "movie_title", "item_title", "name")


@dataclass(frozen=True)
class DatasetFiles:
    """Where a data set's atomic files are: ``inter`` always, ``item`` when the data set has one."""

    name: str
    inter: Path
    item: Path | None


def default_data_dir(configured: str | None) -> Path:
    """``data.data_dir``, else ``$BENCH_DATA``, else ``~/.cache/bench/data``."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("BENCH_DATA"):
        return Path(os.environ["BENCH_DATA"]).expanduser()
    return bench_home() / "data"


def _files_in(folder: Path, name: str) -> DatasetFiles | None:
    inter = folder / f"{name}.inter"
    if not inter.is_file():
        return None
    item = folder / f"{name}.item"
    return DatasetFiles(name, inter, item if item.is_file() else None)


def _recbole_example_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.origin:
        raise BenchError("the recbole package is not installed: run `make run` (it sets up .venv)")
    return Path(spec.origin).parent / "dataset_example"


def locate_dataset(name: str, data_dir: Path, download: bool = True, progress=None) -> DatasetFiles:
    """Find data set ``name`` in ``data_dir`` (or the recbole wheel for ml-100k), downloading book/cloth."""
    known = DATASETS.get(name) if name in DATASETS else None
    folder_name = known.folder if known else name
    found = _files_in(data_dir / folder_name, folder_name)
    if found:
        return found
    if known and known.url is None:
        found = _files_in(_recbole_example_dir() / folder_name, folder_name)
        if found:
            return found
    if known and known.url:
        target = data_dir / folder_name
        if not download:
            raise BenchError(
                f"dataset '{name}' is not in {target}: place {folder_name}.inter and {folder_name}.item there "
                f"(from {known.url}) or set data.download=true")
        download_remote(name, target, progress)
        found = _files_in(target, folder_name)
        if found:
            return found
        raise BenchError(f"the archive for '{name}' did not contain {folder_name}.inter; remove {target} and retry")
    raise BenchError(
        f"unknown dataset '{name}'{suggest(name, DATASETS.names())}: no file {data_dir / name / (name + '.inter')};"
        f" use one of {', '.join(DATASETS.names())} or pass --data-dir DIR holding NAME/NAME.inter")


def download_remote(name: str, target: Path, progress=None, attempts: int = 3) -> None:
    """Download and unpack a hub data set into ``target`` (progress bar, size check, retries)."""
    known = DATASETS.get(name)
    folder_name, url = known.folder, known.url
    target.mkdir(parents=True, exist_ok=True)
    archive = target / f"{folder_name}.zip"
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            _fetch(url, archive, progress)
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad:
                    raise zipfile.BadZipFile(f"corrupt member {bad}")
                for member in zf.namelist():
                    base = Path(member).name
                    if base.startswith(folder_name) and Path(base).suffix in (".inter", ".item", ".user"):
                        (target / base).write_bytes(zf.read(member))
            archive.unlink()
            return
        except (urllib.error.URLError, OSError, zipfile.BadZipFile, ValueError) as exc:
            last_error = exc
            archive.unlink(missing_ok=True)
            if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
                break  # no network: retrying will not help
            time.sleep(2 * attempt)
    raise BenchError(
        f"could not download dataset '{name}' ({last_error}); without a network, place {folder_name}.inter and "
        f"{folder_name}.item from {url} into {target}/")


def _fetch(url: str, dest: Path, progress=None) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        expected = int(response.headers.get("Content-Length") or 0)
        got = 0
        with progress_bar(progress, total=expected or None, unit="B", unit_scale=True,
                          desc=f"download {dest.name}") as bar, open(dest, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
                got += len(block)
                bar.update(len(block))
    if expected and got != expected:
        raise ValueError(f"size mismatch: got {got} of {expected} bytes")


def _header(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        line = handle.readline().rstrip("\r\n")
    if not line:
        raise BenchError(f"{path}:1: empty file; expected a header like 'user_id:token<TAB>item_id:token'")
    fields = []
    for column, raw in enumerate(line.split("\t"), start=1):
        name, sep, ftype = raw.partition(":")
        if not sep or not name:
            raise BenchError(
                f"{path}:1: header column {column} {raw!r} is not NAME:TYPE (e.g. item_id:token); "
                "atomic files need typed, tab-separated headers")
        fields.append((name, ftype))
    return fields


def read_interactions(path: Path) -> pd.DataFrame:
    """Read an ``.inter`` atomic file into columns ``user`` (str), ``item`` (str), ``time`` (float64).

    Without a ``timestamp`` column the file order is the time order. Raises BenchError naming the file and
    line for a missing column, a line with the wrong number of fields, or a non-numeric timestamp.
    """
    fields = _header(path)
    names = [n for n, _ in fields]
    for required in ("user_id", "item_id"):
        if required not in names:
            raise BenchError(
                f"{path}:1: missing required column '{required}' (header has {', '.join(names)}); "
                f"add a '{required}:token' column")
    wanted = ["user_id", "item_id"] + (["timestamp"] if "timestamp" in names else [])
    blank = _scan_lines(path, len(names))
    try:
        df = pd.read_csv(path, sep="\t", header=None, skiprows=1, names=names, usecols=wanted, dtype=str,
                         keep_default_na=False, quoting=3, engine="c", na_filter=False, lineterminator="\n",
                         skip_blank_lines=False)
    except (ValueError, UnicodeDecodeError) as exc:  # the scan above should have caught anything malformed
        raise BenchError(f"{path}: cannot parse ({exc}); check that fields are tab-separated") from None
    df = df.drop(index=blank)
    last = names[-1]
    if last in wanted:
        df[last] = df[last].str.removesuffix("\r")  # CRLF line ends
    for column in ("user_id", "item_id"):
        empty = np.flatnonzero(df[column].to_numpy() == "")
        if empty.size:
            raise BenchError(f"{path}:{df.index[empty[0]] + 2}: malformed line: empty {column}; fix or delete "
                             "that line")
    if "timestamp" in wanted:
        time_values = pd.to_numeric(df["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(time_values))
        if bad.size:
            raise BenchError(f"{path}:{df.index[bad[0]] + 2}: malformed line: timestamp "
                             f"{df['timestamp'].iat[bad[0]]!r} is not a finite number; fix or delete that line")
    else:
        time_values = np.arange(len(df), dtype=np.float64)
    if len(df) == 0:
        raise BenchError(f"{path}: no interactions after the header; the file is empty")
    return pd.DataFrame({"user": df["user_id"].to_numpy(), "item": df["item_id"].to_numpy(), "time": time_values})


def _scan_lines(path: Path, n_fields: int) -> list[int]:
    """Check every data line of an atomic file (UTF-8, as many tab-separated fields as the header; pandas
    would pad short lines silently) and return the 0-based data-row numbers of blank lines."""
    blank = []
    with open(path, "rb") as handle:
        handle.readline()
        for number, line in enumerate(handle, start=2):
            line = line.rstrip(b"\n").removesuffix(b"\r")
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BenchError(f"{path}:{number}: not UTF-8 text (byte {exc.start + 1} of the line); save the "
                                 "file as UTF-8") from None
            if not line.strip():
                blank.append(number - 2)
                continue
            if b"\x00" in line:
                raise BenchError(f"{path}:{number}: malformed line: contains a NUL byte; fix or delete that line")
            tabs = line.count(b"\t")
            if tabs != n_fields - 1:
                raise BenchError(f"{path}:{number}: malformed line: {tabs + 1} fields, the header has "
                                 f"{n_fields}; fix or delete that line")
    return blank


def clean_title(raw: str | None) -> str | None:
    """Unescape HTML entities, collapse whitespace; an empty title is missing (``None``)."""
    if raw is None:
        return None
    text = raw
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].replace('""', '"')  # a CSV-quoted field (RecBole's converter writes these)
    text = re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()
    return text or None


def read_titles(path: Path | None) -> dict[str, str | None] | None:
    """Map raw item id -> cleaned title from an ``.item`` file; ``None`` when there is no title column."""
    if path is None:
        return None
    names = [n for n, _ in _header(path)]
    if "item_id" not in names:
        raise BenchError(f"{path}:1: missing required column 'item_id' (header has {', '.join(names)})")
    title_col = next((n for n in TITLE_FIELDS if n in names), None)
    if title_col is None:
        return None
    id_pos, title_pos = names.index("item_id"), names.index(title_col)
    titles: dict[str, str | None] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        handle.readline()
        for line in handle:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) <= id_pos or not parts[id_pos]:
                continue
            titles[parts[id_pos]] = clean_title(parts[title_pos]) if len(parts) > title_pos else None
    return titles


def filter_interactions(df: pd.DataFrame, min_user: int, min_item: int, max_users: int | None,
                        sample_seed: int) -> pd.DataFrame:
    """k-core filter (users >= min_user and items >= min_item, repeated until stable), then a seeded user sample.

    The sample is drawn from the sorted raw user ids, so it depends only on the data and the seed.
    Row order (and so tie order among equal timestamps) is preserved.
    """
    df = _kcore(df, min_user, min_item)
    if max_users is not None and df["user"].nunique() > max_users:
        users = np.sort(df["user"].unique())
        chosen = np.random.default_rng(sample_seed).choice(users, size=max_users, replace=False)
        df = _kcore(df[df["user"].isin(chosen)], min_user, min_item)
    return df.reset_index(drop=True)


def _kcore(df: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    while True:
        before = len(df)
        if min_item > 0:
            counts = df["item"].map(df["item"].value_counts())
            df = df[counts.to_numpy() >= min_item]
        counts = df["user"].map(df["user"].value_counts())
        df = df[counts.to_numpy() >= min_user]
        if len(df) == before:
            return df
