"""The shared data split: built once per data set and data config through RecBole, hashed, cached.

Leave-one-out in time order (RecBole ``eval_args: {split: {LS: valid_and_test}, order: TO}``): for every
user the last interaction is the test target, the one before it the validation target, the rest is the
training history. Ids are RecBole's internal ids; id 0 is RecBole's padding id and is never a candidate.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench import data as datasets
from bench.cache import CacheEntry, file_sha256
from bench.config import Config, stable_hash
from bench.errors import BenchError

SPLIT_VERSION = "1"
STAGES = ("valid", "test")
#: The text every paradigm shows for an item without a title.
UNTITLED = "an untitled item"
#: Header of the prepared interactions file that RecBole reads (see :func:`write_chronological`).
PREPARED_HEADER = ("user_id:token", "item_id:token", "timestamp:float")


@dataclass(frozen=True, eq=False)
class Split:
    """What every paradigm sees. Arrays are indexed by internal id; index 0 is padding.

    ``train_items[train_offsets[u]:train_offsets[u + 1]]`` is user u's chronological training history.
    """

    dataset: str
    user_ids: np.ndarray          # [n_users] raw user id (str); [0] = "[PAD]"
    item_ids: np.ndarray          # [n_items] raw item id (str); [0] = "[PAD]"
    train_offsets: np.ndarray     # [n_users + 1] int64
    train_items: np.ndarray       # [n_train] int64
    valid_target: np.ndarray      # [n_users] int64 (0 for the padding user)
    test_target: np.ndarray       # [n_users] int64
    titles: tuple                 # [n_items] cleaned title or None
    popularity: np.ndarray        # [n_items] int64: interactions in the training part
    recbole_path: str             # folder holding <recbole_name>/<recbole_name>.inter (the prepared data)
    recbole_name: str
    stats: Mapping[str, Any] = field(default_factory=dict)
    hash: str = ""

    @property
    def n_users(self) -> int:
        """Number of user ids including padding (RecBole's ``user_num``)."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of item ids including padding (RecBole's ``item_num``); score matrices have this width."""
        return len(self.item_ids)

    @property
    def users(self) -> np.ndarray:
        """Internal ids of every real user, ``[1, n_users)``."""
        return np.arange(1, self.n_users, dtype=np.int64)

    @property
    def has_titles(self) -> bool:
        return any(t is not None for t in self.titles)

    def title(self, item: int) -> str:
        """The item's title, or :data:`UNTITLED` when it has none."""
        return self.titles[item] or UNTITLED

    def train_lengths(self) -> np.ndarray:
        """[n_users] length of each user's training history (0 for the padding user)."""
        return np.diff(self.train_offsets)

    def train_history(self, user: int) -> np.ndarray:
        """User's training items, oldest first."""
        return self.train_items[self.train_offsets[user]:self.train_offsets[user + 1]]

    def history(self, user: int, stage: str) -> np.ndarray:
        """Items known before predicting ``stage``: training history, plus the validation item for ``test``."""
        train = self.train_history(user)
        if stage == "valid":
            return train
        if stage == "test":
            return np.append(train, self.valid_target[user])
        raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")

    def target(self, stage: str) -> np.ndarray:
        """[n_users] target item of ``stage`` per user."""
        return {"valid": self.valid_target, "test": self.test_target}[stage]

    def compute_hash(self) -> str:
        """Content hash of everything a paradigm can see (16 hex digits)."""
        digest = hashlib.sha256()
        for array in (self.train_offsets, self.train_items, self.valid_target, self.test_target, self.popularity):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        digest.update(json.dumps([list(map(str, self.user_ids)), list(map(str, self.item_ids)),
                                  list(self.titles), self.dataset]).encode())
        return digest.hexdigest()[:16]


def recbole_settings(max_seq_len: int) -> dict:
    """The RecBole config that defines the split (shared by the split builder and the encoder trainer)."""
    return {
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "MAX_ITEM_LIST_LENGTH": max_seq_len,
        "user_inter_num_interval": None, "item_inter_num_interval": None, "val_interval": None,
        "filter_inter_by_user_or_item": False, "rm_dup_inter": None,
        "train_neg_sample_args": None, "show_progress": False,
    }


def build_split(cfg: Config, cache_root: Path, progress=None) -> Split:
    """Load the split for ``cfg``'s data section from the cache, or build it through RecBole and cache it."""
    data_dir = datasets.default_data_dir(cfg["data.data_dir"])
    files = datasets.locate_dataset(cfg["data.dataset"], data_dir, cfg["data.download"], progress,
                                    hub_url=cfg["data.hub_url"])
    from recbole import __version__ as recbole_version  # noqa: PLC0415 (only to key the cache)

    key_parts = {"inter": file_sha256(files.inter), "item": file_sha256(files.item) if files.item else None,
                 "data": {k: cfg[f"data.{k}"] for k in ("min_user_inter", "min_item_inter", "max_users",
                                                          "sample_seed")},
                 "recbole": recbole_version}
    key = f"{cfg['data.dataset']}-{stable_hash(key_parts, 16)}"
    entry = CacheEntry(cache_root, "splits", key, SPLIT_VERSION)
    meta = entry.read()
    if meta is not None:
        return _load(entry.path, meta)
    prepared = _prepared_interactions(cfg, files)
    titles = datasets.read_titles(files.item)
    with entry.write() as pending:
        (pending.path / key).mkdir()
        write_chronological(prepared, pending.path / key / f"{key}.inter")
        del prepared  # RecBole builds its own copy; at Amazon-Books scale this frees gigabytes first
        split = _from_recbole(cfg["data.dataset"], pending.path, key, titles)
        _save(split, pending.path)
        pending.data.update(_meta(split))
    return _load(entry.path, entry.read())


def _prepared_interactions(cfg: Config, files: datasets.DatasetFiles) -> datasets.CodedInteractions:
    raw = datasets.read_interaction_codes(files.inter)
    kept = datasets.filter_codes(raw, cfg["data.min_user_inter"], cfg["data.min_item_inter"],
                                 cfg["data.max_users"], cfg["data.sample_seed"])
    if len(kept) == 0:
        raise BenchError(
            f"dataset '{cfg['data.dataset']}' is empty after filtering ({len(raw)} interactions before; "
            f"data.min_user_inter={cfg['data.min_user_inter']}, data.min_item_inter={cfg['data.min_item_inter']}); "
            "lower those thresholds")
    return kept


def chronological_order(inter: datasets.CodedInteractions) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by raw user id, then time (ties keep file order): ``(order [n] int64, position [n] int64)``,
    ``position`` being each sorted row's place in its user's history (0, 1, 2, ...)."""
    present = np.flatnonzero(np.bincount(inter.user, minlength=len(inter.user_ids)))
    rank = np.zeros(len(inter.user_ids), dtype=np.int64)
    rank[present[np.argsort(inter.user_ids[present])]] = np.arange(len(present))
    user_rank = rank[inter.user]
    order = np.lexsort((inter.time, user_rank))
    sorted_rank = user_rank[order]
    starts = np.flatnonzero(np.r_[True, sorted_rank[1:] != sorted_rank[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order, position


def write_chronological(inter: datasets.CodedInteractions, path: Path, rows_per_block: int = 1 << 20) -> None:
    """Write the file RecBole builds the split from: ``user_id``, ``item_id`` and, as ``timestamp``, each
    interaction's position in its user's time order (see :func:`chronological_order`), sorted by user and time.

    RecBole stores timestamps as float32, which resolves Unix times only to about a minute, so nearby
    interactions would silently fall back to file order; small integers are exact in float32. The bytes are
    those of ``DataFrame.to_csv``, which writes them when an id needs CSV quoting.
    """
    order, position = chronological_order(inter)
    users, items = inter.user[order], inter.item[order]
    user_bytes, item_bytes = _id_bytes(inter.user_ids, users), _id_bytes(inter.item_ids, items)
    if user_bytes is None or item_bytes is None:
        frame = pd.DataFrame({"user": inter.user_ids[users], "item": inter.item_ids[items], "time": position})
        frame.to_csv(path, sep="\t", index=False, header=list(PREPARED_HEADER))
        return
    with open(path, "wb") as handle:
        handle.write(("\t".join(PREPARED_HEADER) + "\n").encode())
        for start in range(0, len(order), rows_per_block):
            block = slice(start, start + rows_per_block)
            handle.write(datasets.tsv_bytes([user_bytes[users[block]], item_bytes[items[block]], position[block]]))


def _id_bytes(ids: np.ndarray, used: np.ndarray) -> np.ndarray | None:
    """UTF-8 ids as a dtype ``S`` array indexed like ``ids`` (only the ``used`` codes filled), or None when an id
    holds a character that ``to_csv`` would quote (or a NUL)."""
    codes = np.flatnonzero(np.bincount(used, minlength=len(ids)))
    encoded = [str(ids[c]).encode("utf-8") for c in codes]
    if any(ch in b"".join(encoded) for ch in (b'"', b"\t", b"\n", b"\r", b"\x00")):
        return None
    out = np.zeros(len(ids), dtype=f"S{max(map(len, encoded), default=1)}")
    out[codes] = encoded
    return out


def _from_recbole(dataset: str, data_path: Path, name: str, titles: dict | None) -> Split:
    from bench.compat import recbole_config

    config_dict = {**recbole_settings(2), "data_path": str(data_path), "seed": 0, "reproducibility": True}
    rb_config = recbole_config("SASRec", name, config_dict)
    from recbole.data import create_dataset, data_preparation

    rb_dataset = create_dataset(rb_config)
    train, valid, test = data_preparation(rb_config, rb_dataset)
    return split_from_recbole(dataset, rb_dataset, (train.dataset, valid.dataset, test.dataset), titles,
                              str(data_path), name)


def split_from_recbole(dataset: str, rb_dataset, parts, titles: dict | None, path: str, name: str) -> Split:
    """Turn RecBole's built train/valid/test datasets into a :class:`Split` (also used to verify a rebuild)."""
    user_ids = np.asarray(rb_dataset.field2id_token["user_id"], dtype=object)
    item_ids = np.asarray(rb_dataset.field2id_token["item_id"], dtype=object)
    n_users = len(user_ids)
    rows = []
    for part in parts:
        inter = part.inter_feat
        rows.append(pd.DataFrame({"user": inter["user_id"].numpy(), "target": inter["item_id"].numpy(),
                                  "length": inter["item_length"].numpy(),
                                  "first": inter["item_id_list"][:, 0].numpy()}))
    # Rows keep RecBole's chronological order inside each user; concat(train, valid, test) is the full sequence.
    seq = pd.concat(rows, ignore_index=True)
    seq = seq.iloc[np.argsort(seq["user"].to_numpy(), kind="stable")]
    first = seq[seq["length"] == 1].drop_duplicates("user").set_index("user")["first"]
    counts = np.bincount(seq["user"].to_numpy(), minlength=n_users)
    valid_target = np.zeros(n_users, dtype=np.int64)
    test_target = np.zeros(n_users, dtype=np.int64)
    valid_target[parts[1].inter_feat["user_id"].numpy()] = parts[1].inter_feat["item_id"].numpy()
    test_target[parts[2].inter_feat["user_id"].numpy()] = parts[2].inter_feat["item_id"].numpy()
    train_len = np.maximum(counts - 1, 0)  # rows = interactions - 1; minus valid and test, plus the first item
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(train_len)
    train_items = _train_items(seq["user"].to_numpy(), seq["target"].to_numpy(), first, counts, offsets)
    short = np.flatnonzero((valid_target[1:] == 0) | (test_target[1:] == 0)) + 1
    if short.size:
        raise BenchError(f"RecBole gave {short.size} users no validation or test item (user {user_ids[short[0]]!r} "
                         f"has {counts[short[0]] + 1} interactions); set data.min_user_inter >= 4")
    title_list = tuple(None if i == 0 or titles is None else titles.get(str(item_ids[i]))
                       for i in range(len(item_ids)))
    split = Split(dataset=dataset, user_ids=user_ids, item_ids=item_ids, train_offsets=offsets,
                  train_items=train_items, valid_target=valid_target, test_target=test_target, titles=title_list,
                  popularity=np.bincount(train_items, minlength=len(item_ids)).astype(np.int64),
                  recbole_path=path, recbole_name=name,
                  stats={"users": n_users - 1, "items": len(item_ids) - 1,
                         "interactions": int(len(train_items) + 2 * (n_users - 1)),
                         "titles_missing": sum(t is None for t in title_list[1:]),
                         "has_titles": titles is not None})
    object.__setattr__(split, "hash", split.compute_hash())
    return split


def _train_items(row_user: np.ndarray, targets: np.ndarray, first: pd.Series, counts: np.ndarray,
                 offsets: np.ndarray) -> np.ndarray:
    """Training histories, concatenated by user: the user's first item (``first``: user -> item), then the
    targets of their rows (sorted by user, chronological within a user) except the last two (valid, test)."""
    train_items = np.zeros(offsets[-1], dtype=np.int64)
    with_history = np.flatnonzero(offsets[1:] > offsets[:-1])
    missing = np.setdiff1d(with_history, first.index.to_numpy())
    if missing.size:
        raise BenchError(f"RecBole gave user {missing[0]} no first item; delete the split cache and rerun")
    train_items[offsets[with_history]] = first.loc[with_history].to_numpy()
    starts = np.concatenate([[0], np.cumsum(counts)])
    within = np.arange(len(row_user)) - starts[row_user]
    keep = counts[row_user] - within > 2   # not one of the user's last two rows
    train_items[offsets[row_user[keep]] + 1 + within[keep]] = targets[keep]
    return train_items


def _save(split: Split, folder: Path) -> None:
    np.savez(folder / "split.npz", train_offsets=split.train_offsets, train_items=split.train_items,
             valid_target=split.valid_target, test_target=split.test_target, popularity=split.popularity)
    (folder / "ids.json").write_text(json.dumps({"users": list(map(str, split.user_ids)),
                                                 "items": list(map(str, split.item_ids)),
                                                 "titles": list(split.titles)}))


def _meta(split: Split) -> dict:
    return {"dataset": split.dataset, "recbole_name": split.recbole_name, "hash": split.hash,
            "stats": dict(split.stats)}


def _load(path: Path, meta: dict) -> Split:
    arrays = np.load(path / "split.npz")
    ids = json.loads((path / "ids.json").read_text())
    split = Split(dataset=meta["dataset"], user_ids=np.asarray(ids["users"], dtype=object),
                  item_ids=np.asarray(ids["items"], dtype=object), train_offsets=arrays["train_offsets"],
                  train_items=arrays["train_items"], valid_target=arrays["valid_target"],
                  test_target=arrays["test_target"], titles=tuple(ids["titles"]), popularity=arrays["popularity"],
                  recbole_path=str(path), recbole_name=meta["recbole_name"], stats=meta["stats"])
    object.__setattr__(split, "hash", split.compute_hash())
    if split.hash != meta["hash"]:
        raise BenchError(f"cached split {path} does not match its recorded hash; delete that folder and rerun")
    return split
