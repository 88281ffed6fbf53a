"""A seeded synthetic data set shaped like RecBole's Amazon_Books, for scale tests on one machine.

    python scripts/make_books.py --out DIR [--name books-synth] [--seed 0] [--scale 1.0]
                                 [--interactions 22500000 --users 8000000 --items 2300000]

Writes ``DIR/NAME/NAME.inter`` (``user_id:token item_id:token rating:float timestamp:float``, tab separated,
like RecBole's atomic files), ``DIR/NAME/NAME.item`` (``item_id:token title:token_seq``, synthetic titles) and
``DIR/NAME/make_books.json`` (the parameters and file sizes; written last, so it marks a complete data set).
The defaults are Amazon_Books' size (22.5M interactions, 8M users, 2.3M items); ``--scale 0.001`` divides
all three by 1000 for tests.

Shape: every user and item has at least one interaction; the rest are spread with Zipf-like weights
``(rank + offset) ** -alpha`` over a seeded random ranking (power-law item popularity, heavy-tailed user
activity). At the default size a 5-core keeps 31% of the interactions, 5.2% of the users and 15% of the
items (Amazon_Books: 40%, 7.5%, 16%); a 3-core on users alone keeps 63%, 20% and 93%. Users and items are
paired at random.
Timestamps (Unix seconds, 1996-05 to 2014-07, denser in later years) strictly increase along each user's
history. Rows are grouped by item (items in random order), so a user's rows are scattered through the file.

The same arguments give the same bytes. Files appear atomically (a temporary file, then a rename). The full
size takes about a minute and under 2 GB of memory on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cache import atomic_file  # noqa: E402
from bench.data import tsv_bytes  # noqa: E402  (vectorised tab-separated lines, shared with the split writer)

FORMAT = 1
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\ttitle:token_seq\n"
T_START, T_END = 832_000_000, 1_406_000_000   # 1996-05-13 .. 2014-07-22, the Amazon 2014 release's span
RATING_P = (0.06, 0.05, 0.09, 0.20, 0.60)     # 1..5 stars, skewed high like Amazon ratings
USER_ID_DIGITS = 12                            # "A" + 12 base-36 characters
ITEM_ID_DIGITS = 10                            # 10 decimal digits, like an ISBN-10 ASIN
CHUNK = 1 << 20                                # rows per written block
_RATINGS = np.array([b"1.0", b"2.0", b"3.0", b"4.0", b"5.0"])
_ALNUM = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
_WORDS = (
    "river silent garden night winter summer shadow light house stone road city island secret lost last first "
    "little great dark golden broken hidden wild quiet long empty open burning falling rising ancient modern "
    "history guide art science life world war peace love heart mind soul story stories tales journey "
    "kitchen cooking baking recipes travel mountain ocean sea forest desert star stars moon sun fire water "
    "king queen prince daughter son mother father children family friends stranger killer detective murder "
    "mystery case letters diary book handbook introduction principles practice theory design programming "
    "business money leadership success habits health diet yoga garden birds horses dogs cats magic dragon "
    "witch wizard ghost angel devil god faith prayer bible church time clock machine code game rules "
    "american english french italian chinese japanese german russian african irish texas london paris "
    "new complete essential illustrated collected selected annotated revised edition volume"
).split()
_SUFFIXES = ("", "", "", "", ": A Novel", " (Book 1)", " (Book 2)", ": A Memoir", ", Second Edition",
             " &amp; Other Stories", ": The Complete Guide", " (Penguin Classics)")


@dataclass(frozen=True)
class Shape:
    """What to generate: sizes (rows, distinct users, distinct items) and the Zipf parameters of the
    per-user and per-item extra interactions (weight of rank r: ``(r + offset) ** -alpha``). The offsets are
    given for the default sizes and scale with the number of users or items (at least 1)."""

    interactions: int = 22_500_000
    users: int = 8_000_000
    items: int = 2_300_000
    seed: int = 0
    user_alpha: float = 1.1
    user_offset: float = 10_000.0
    item_alpha: float = 0.9
    item_offset: float = 100.0

    def offsets(self) -> tuple[float, float]:
        """The user and item offsets at this shape's size."""
        base = Shape.__dataclass_fields__
        return (max(1.0, self.user_offset * self.users / base["users"].default),
                max(1.0, self.item_offset * self.items / base["items"].default))

    def check(self) -> None:
        """Raise ValueError (one line) when the sizes cannot be met."""
        if min(self.users, self.items) < 1:
            raise ValueError(f"--users and --items must be >= 1 (got {self.users}, {self.items})")
        if self.interactions < max(self.users, self.items):
            raise ValueError(f"--interactions ({self.interactions}) must be >= --users ({self.users}) and "
                             f"--items ({self.items}): every user and item has at least one interaction")
        if self.items >= 1 << 33:
            raise ValueError(f"--items ({self.items}) must be < 2 ** 33 (10-digit item ids)")


def degree_counts(rng: np.random.Generator, total: int, n: int, alpha: float, offset: float) -> np.ndarray:
    """Interactions per entity, int64 ``[n]``: each >= 1, summing to ``total``; the ``total - n`` extra ones
    are multinomial with weights ``(rank + offset) ** -alpha`` over a random ranking of the entities."""
    ranks = rng.permutation(n).astype(np.float64)
    weights = (ranks + offset) ** -alpha
    return 1 + rng.multinomial(total - n, weights / weights.sum()).astype(np.int64)


def scrambled_ids(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct integers in ``[0, 2 ** bits)`` (int64, ``bits`` <= 62) that look random: ``0..n-1``
    through a seeded bijection of ``bits``-bit numbers (odd multiplier, offset, xor-shift, odd multiplier)."""
    mask = np.uint64((1 << bits) - 1)
    a, c = (np.uint64(int(v) | 1) for v in rng.integers(1 << 40, 1 << 62, size=2))
    b = np.uint64(int(rng.integers(0, 1 << bits)))
    x = (np.arange(n, dtype=np.uint64) * a + b) & mask     # uint64 arithmetic wraps: exact mod 2 ** bits
    x ^= x >> np.uint64(bits // 2)
    return ((x * c) & mask).astype(np.int64)


def digits(values: np.ndarray, width: int, base: int) -> np.ndarray:
    """``[len(values), width]`` uint8 ASCII digits of non-negative ``values`` in ``base`` (<= 36), zero-padded."""
    out = np.empty((len(values), width), dtype=np.uint8)
    rest = values.astype(np.int64, copy=True)
    for column in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, base)
        out[:, column] = _ALNUM[digit]
    return out


def user_id_bytes(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` dtype ``S13``: Amazon-reviewer-like ids, ``A`` plus 12 base-36 characters, all distinct."""
    ids = np.empty((n, 1 + USER_ID_DIGITS), dtype=np.uint8)
    ids[:, 0] = ord("A")
    ids[:, 1:] = digits(scrambled_ids(n, 62, rng), USER_ID_DIGITS, 36)      # 2 ** 62 < 36 ** 12
    return ids.view(f"S{1 + USER_ID_DIGITS}").ravel()


def item_id_bytes(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` dtype ``S10``: ISBN-10-like ASINs (ten decimal digits, leading zeros kept), all distinct."""
    return digits(scrambled_ids(n, 33, rng), ITEM_ID_DIGITS, 10).view(f"S{ITEM_ID_DIGITS}").ravel()


def interactions(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All rows, grouped by item and in time order within an item: ``user``/``item`` int32 indices,
    ``rating`` int8 stars and ``time`` int64 Unix seconds (strictly increasing along each user's rows)."""
    user_offset, item_offset = shape.offsets()
    user_counts = degree_counts(rng, shape.interactions, shape.users, shape.user_alpha, user_offset)
    item_counts = degree_counts(rng, shape.interactions, shape.items, shape.item_alpha, item_offset)
    users = np.repeat(np.arange(shape.users, dtype=np.int32), user_counts)      # sorted by user
    items = np.repeat(np.arange(shape.items, dtype=np.int32), item_counts)
    items = items[rng.permutation(len(items))]                                  # random pairing
    time = _user_times(rng, users, user_counts)
    order = np.lexsort((time, items))
    return {"user": users[order], "item": items[order], "time": time[order],
            "rating": (1 + rng.choice(5, size=len(users), p=RATING_P)).astype(np.int8)}


def _user_times(rng: np.random.Generator, users: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Unix seconds per row of ``users`` (sorted by user), strictly increasing within each user.

    Draws are skewed to later years (density ~ x**2 over the span), sorted within each user, then lifted by
    a running maximum so that no two of a user's times are equal.
    """
    span = T_END - T_START
    raw = (span * rng.random(len(users)) ** (1 / 3)).astype(np.int64)
    position = np.arange(len(users), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    key = np.sort(users.astype(np.int64) << 32 | raw)          # by user, then time (raw < 2 ** 30)
    lifted = np.maximum.accumulate(key - position)              # within a user: non-decreasing raw - position
    return T_START + (lifted & 0xFFFFFFFF) + position


def inter_lines(rows: dict[str, np.ndarray], start: int, stop: int, user_ids: np.ndarray,
                item_ids: np.ndarray) -> bytes:
    """The ``.inter`` lines of rows ``[start, stop)`` as bytes (user, item, rating, timestamp; tab separated)."""
    part = slice(start, stop)
    return tsv_bytes([user_ids[rows["user"][part]], item_ids[rows["item"][part]],
                      _RATINGS[rows["rating"][part] - 1], rows["time"][part]])


def titles(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` synthetic book titles (str): 1-5 capitalised words and a frequent subtitle, some with an HTML
    entity like real shop text; about 2% are empty (a missing title)."""
    words = np.char.capitalize(np.asarray(_WORDS))
    length = rng.integers(1, 6, size=n)
    picks = rng.zipf(1.3, size=(n, 5)) % len(words)
    out = np.where(rng.random(n) < 0.3, "The ", "").astype(object)
    for position in range(5):
        word = np.where(length > position, words[picks[:, position]], "").astype(object)
        out = out + np.where((position > 0) & (length > position), " ", "") + word
    out = out + np.asarray(_SUFFIXES, dtype=object)[rng.integers(0, len(_SUFFIXES), size=n)]
    out[rng.random(n) < 0.02] = ""
    return out


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", unit_scale=True, disable=quiet, file=sys.stderr)


def write_dataset(out: Path, name: str, shape: Shape, quiet: bool = False) -> Path:
    """Generate the data set ``shape`` describes into ``out/name/`` and return that folder."""
    shape.check()
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "make_books.json").unlink(missing_ok=True)       # an interrupted rewrite is never "complete"
    rng = np.random.default_rng(shape.seed)
    user_ids, item_ids = user_id_bytes(shape.users, rng), item_id_bytes(shape.items, rng)
    rows = interactions(shape, rng)
    with atomic_file(folder / f"{name}.inter") as handle, _bar(shape.interactions, "inter", quiet) as bar:
        handle.write(INTER_HEADER.encode())
        for start in range(0, shape.interactions, CHUNK):
            stop = min(start + CHUNK, shape.interactions)
            handle.write(inter_lines(rows, start, stop, user_ids, item_ids))
            bar.update(stop - start)
    del rows
    with atomic_file(folder / f"{name}.item") as handle, _bar(shape.items, "item", quiet) as bar:
        handle.write(ITEM_HEADER.encode())
        for start in range(0, shape.items, CHUNK):
            stop = min(start + CHUNK, shape.items)
            ids = item_ids[start:stop].astype(str).astype(object)
            lines = ids + "\t" + titles(stop - start, rng) + "\n"
            handle.write("".join(lines).encode())
            bar.update(stop - start)
    record = {"format": FORMAT, **asdict(shape), "name": name,
              "bytes": {f.name: f.stat().st_size for f in (folder / f"{name}.inter", folder / f"{name}.item")}}
    with atomic_file(folder / "make_books.json") as handle:
        handle.write(json.dumps(record, indent=1, sort_keys=True).encode())
    return folder


def read_record(folder: Path) -> dict | None:
    """The parameters a complete data set in ``folder`` was made with, or None (absent, partial, or its files
    no longer have the recorded sizes)."""
    try:
        record = json.loads((Path(folder) / "make_books.json").read_text())
        sizes = {name: (Path(folder) / name).stat().st_size for name in record["bytes"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if sizes == record["bytes"] else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    default = Shape()
    parser = argparse.ArgumentParser(
        description="Write a seeded synthetic Amazon_Books-like data set (RecBole atomic files).")
    parser.add_argument("--out", required=True, type=Path, help="folder of data sets; writes OUT/NAME/NAME.inter")
    parser.add_argument("--name", default="books-synth", help="data set name (default: books-synth)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0); same seed, same bytes")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the three sizes by this (e.g. 0.001 for a test-sized set; default: 1)")
    parser.add_argument("--interactions", type=int, default=default.interactions,
                        help=f"rows before --scale (default: {default.interactions:,})")
    parser.add_argument("--users", type=int, default=default.users,
                        help=f"distinct users before --scale (default: {default.users:,})")
    parser.add_argument("--items", type=int, default=default.items,
                        help=f"distinct items before --scale (default: {default.items:,})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def shape_from_args(args: argparse.Namespace) -> Shape:
    """The :class:`Shape` that the parsed arguments ask for (sizes scaled, rounded, at least 1)."""
    if args.scale <= 0:
        raise ValueError(f"--scale must be > 0 (got {args.scale})")
    scaled = {k: max(1, round(getattr(args, k) * args.scale)) for k in ("interactions", "users", "items")}
    return Shape(**scaled, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, generate, print the folder. Returns the exit status."""
    args = parse_args(argv)
    try:
        shape = shape_from_args(args)
        shape.check()
    except ValueError as exc:
        print(f"make_books: {exc}", file=sys.stderr)
        return 2
    folder = write_dataset(args.out, args.name, shape, args.quiet)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
