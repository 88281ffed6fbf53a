"""The run directory: what a finished run holds on disk, typed, and read back the same way by every consumer.

A run directory holds ``config.yaml`` (the resolved config), ``manifest.json`` (a :class:`Manifest`: what ran,
on what, for how long), ``per_user.csv`` (one row per paradigm, seed, stage, protocol and user: the target's
rank, and nothing else: :data:`ID_COLUMNS`), ``tokens.csv`` (one row per LLM paradigm and user: prompt cost),
``topk.npz`` (each user's top ``eval.topk`` items per paradigm, seed and stage under full ranking:
:class:`TopLists`; absent when ``eval.topk`` is 0 or the run ranks no full list) and, when ``eval.protocols``
names sampled protocols, ``candidates.npz`` (their candidate lists, ``bench.protocols``).
``bench.report`` and ``bench.plots`` read it through :meth:`Run.from_disk` only, which computes every metric from
the ranks (``bench.metrics.METRICS``): ``eval.metrics`` at every K of ``eval.ks`` and ``report.ks``, plus whatever
``report.metrics`` names, so a report of an old run can add a K or a metric without rerunning it.

``FORMAT_VERSION`` names this layout. Version 1 (a manifest without the field was written before it existed and
is version 1 too) also stored the metric columns in ``per_user.csv``, rounded to 10 significant digits, and its
tables were computed from those: every run's metrics are computed from its ranks and rounded the same way
(:data:`METRIC_DIGITS`), so a version-1 run's tables rebuild byte for byte and equal ranks give equal values in
either version. Versions 1 and 2 have no ``protocol`` column: every row is a full ranking (``full``). A run of
any other version is a clear error.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from bench.cache import atomic_write_bytes, atomic_write_text
from bench.config import Config, check_report_values, load_config, parse_override
from bench.errors import BenchError
from bench.metrics import METRICS, metric_names, metrics_from_ranks
from bench.protocols import FULL, parse_protocol
from bench.registry import metric_at

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
ID_COLUMNS = ("paradigm", "seed", "stage", "protocol", "user", "rank")
MAIN_METRICS = ("hit@100", "ndcg@10")
TOKEN_COLUMNS = ("paradigm", "user", "hard_tokens", "soft_tokens", "history_len", "history_kept")
FILES = ("per_user.csv", "tokens.csv", "manifest.json", "config.yaml")
def data_file(run_dir: Path, name: str) -> Path:
    """``run_dir / name``, or its gzip-compressed copy ``name.gz`` where only that exists (a large run's
    ``per_user.csv`` may be kept compressed, e.g. to commit it; every reader accepts either)."""
    path = Path(run_dir) / name
    packed = path.with_name(path.name + ".gz")
    return packed if not path.is_file() and packed.is_file() else path


#: Significant digits of every per-user metric value: what a format-1 ``per_user.csv`` stored
#: (``float_format="%.10g"``), kept for format 2 so the same ranks give the same values in runs of either format
#: (unrounded, ``bench compare`` of identical ranks counted 1e-11 differences as wins and losses).
METRIC_DIGITS = 10


def display_name(metric: str) -> str:
    """``ndcg@10`` -> ``NDCG@10``."""
    name, _, k = metric.partition("@")
    return f"{METRICS.get(name).label if name in METRICS else name}@{k}"


def metric_columns(cfg: Config) -> list[str]:
    """The per-user metric columns a report computes under ``cfg``: ``eval.metrics`` at every K of ``eval.ks`` and
    ``report.ks`` (metric-major, K ascending), then any other ``report.metrics``; main metrics (HR@100, NDCG@10)
    first. Each is checked: an unknown metric or a K below 1 is a one-line error naming it."""
    ks = sorted({int(k) for k in (*cfg["eval.ks"], *cfg["report.ks"])})
    names = metric_names(cfg["eval.metrics"], ks)
    names += [m for m in dict.fromkeys(cfg["report.metrics"]) if m not in names]
    for name in names:
        metric_at(name, METRICS, "report.metrics" if name in cfg["report.metrics"] else "eval.metrics")
    return [m for m in MAIN_METRICS if m in names] + [m for m in names if m not in MAIN_METRICS]


def metric_values(ranks: np.ndarray, columns: list[str], digits: int | None = None) -> dict[str, np.ndarray]:
    """Per-user values ``{column: float64 [len(ranks)]}`` of each ``METRIC@K`` column from ``ranks``, through
    the registered metrics; with ``digits``, rounded to that many significant digits (format 1 stored them so)."""
    distinct, index = np.unique(np.asarray(ranks), return_inverse=True)  # a metric is a function of the rank
    out = {}
    for column in columns:
        name, _, k = column.partition("@")
        values = metrics_from_ranks(distinct, [name], [int(k)])[column]
        if digits is not None:
            values = np.array([float(f"{v:.{digits}g}") for v in values], dtype=np.float64)
        out[column] = values[index]
    return out


def with_protocol(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-user rows with a ``protocol`` column: rows written before protocols existed are full rankings."""
    return rows if "protocol" in rows.columns else rows.assign(protocol=FULL)


def write_json(path: Path, data: Any) -> None:
    """Pretty, key-sorted JSON written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@dataclass(frozen=True)
class Manifest:
    """What a run did. ``paradigms`` maps each label to its record: ``paradigm``, ``version``, ``options``,
    ``description``, ``sweep_value`` and ``seeds`` (seed -> the job's info: ``trainable_parameters``,
    ``fit_seconds``, ``score_seconds``, ``training``); ``protocols`` each sampled protocol's candidate lists
    (``sampling``, ``negatives``, ``seed``, ``hash``); ``partial`` only in an interim report of an unfinished run
    (``finished`` and ``jobs`` counts, ``missing`` jobs as ``LABEL/seedN``)."""

    created: str
    command: str | None
    git_commit: str | None
    config_hash: str
    dataset: str
    split_hash: str
    split_stats: dict
    encoder: dict | None
    llm: dict | None
    seeds: list[int]
    versions: dict
    hardware: dict
    timings_seconds: dict
    paradigms: dict[str, dict]
    skipped: dict = field(default_factory=dict)
    sweep: dict | None = None
    resumed_jobs: list = field(default_factory=list)
    resumed_by: str | None = None
    protocols: dict = field(default_factory=dict)
    partial: dict | None = None
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict, source: str = "manifest") -> "Manifest":
        """The manifest of a saved run; a one-line error for another format version or a missing field."""
        version = data.get("format_version", 1)
        if version not in READABLE_VERSIONS:
            raise BenchError(f"{source}: run directory format version {version}, but this bench reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}; rerun it with this bench, or read it with "
                             f"the bench that wrote it (git commit {data.get('git_commit')})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise BenchError(f"{source}: field {missing[0]!r} is missing; the file is damaged, rerun the run")
        return cls(**{k: v for k, v in data.items() if k in names} | {"format_version": version})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def version(self, label: str) -> str | None:
        """The paradigm version that produced ``label``'s rows."""
        return self.paradigms.get(label, {}).get("version")

    def _seed_infos(self, label: str) -> list[dict]:
        return list(self.paradigms.get(label, {}).get("seeds", {}).values())

    def fit_seconds(self, label: str) -> float | None:
        """Mean training wall time of ``label`` over its seeds."""
        seconds = [info.get("fit_seconds") for info in self._seed_infos(label)]
        seconds = [s for s in seconds if s is not None]
        return float(np.mean(seconds)) if seconds else None

    def training_samples(self, label: str) -> int | None:
        """Samples per epoch of ``label``'s own training loop (None: it has none, the run predates the record, or
        its seeds disagree)."""
        counts = {(info.get("training") or {}).get("training_samples") for info in self._seed_infos(label)}
        return counts.pop() if len(counts) == 1 else None

    def trainable_parameters(self, label: str) -> int | None:
        """``label``'s trainable parameter count (None when its seeds disagree)."""
        counts = {info.get("trainable_parameters") for info in self._seed_infos(label)}
        return counts.pop() if len(counts) == 1 else None

    @property
    def token_budget(self) -> int | None:
        return (self.llm or {}).get("token_budget")


@dataclass(frozen=True)
class TopLists:
    """Every job's top-K lists, as ``topk.npz`` stores them (no pickled objects): ``users`` (external user ids,
    the row order of every list), ``items`` (external item ids by internal id; 0 = padding), ``popularity``
    (training interactions per internal id), ``targets[stage]`` (each user's held-out item, internal id: what
    an export's relevance judgements need) and ``lists[(paradigm, seed, stage)]`` (internal item ids
    ``[n_users, K]``, best first)."""

    users: np.ndarray
    items: np.ndarray
    popularity: np.ndarray
    targets: Mapping[str, np.ndarray]
    lists: Mapping[tuple[str, int, str], np.ndarray]

    FILE = "topk.npz"

    @property
    def k(self) -> int:
        """The stored list length K (0 when no list is stored)."""
        return min((a.shape[1] for a in self.lists.values()), default=0)

    def get(self, paradigm: str, seed: int, stage: str) -> np.ndarray | None:
        """The ``[n_users, K]`` lists of one job's stage (``None``: not stored)."""
        return self.lists.get((paradigm, int(seed), stage))

    def to_disk(self, folder: Path) -> None:
        """Write ``folder/topk.npz`` (compressed; item ids in the smallest unsigned type that holds them)."""
        dtype = np.uint16 if len(self.items) <= np.iinfo(np.uint16).max else np.int32
        arrays = {f"{p}|{seed}|{stage}": a.astype(dtype) for (p, seed, stage), a in self.lists.items()}
        arrays |= {f"target|{stage}": np.asarray(a, dtype=np.int64) for stage, a in self.targets.items()}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, users=np.asarray(self.users, dtype=str), items=np.asarray(self.items, dtype=str),
                            popularity=np.asarray(self.popularity, dtype=np.int64), **arrays)
        atomic_write_bytes(folder / self.FILE, buffer.getvalue())

    @classmethod
    def from_disk(cls, folder: Path) -> "TopLists | None":
        """The lists in ``folder/topk.npz`` (``None`` when the run stored none); a one-line error when damaged."""
        path = Path(folder) / cls.FILE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                lists, targets = {}, {}
                for key in data.files:
                    if key.count("|") == 2:
                        paradigm, seed, stage = key.split("|")
                        lists[paradigm, int(seed), stage] = data[key].astype(np.int64)
                    elif key.startswith("target|"):
                        targets[key.partition("|")[2]] = data[key]
                return cls(data["users"], data["items"], data["popularity"], targets, lists)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise BenchError(f"{path}: damaged top-K lists ({exc}); rerun the run to rebuild them") from None


@dataclass
class Run:
    """A finished run directory read back: per-user rows (the saved ids and ranks, plus the :attr:`metrics`
    columns computed from the ranks), prompt costs, manifest and config."""

    path: Path
    per_user: pd.DataFrame
    tokens: pd.DataFrame
    manifest: Manifest
    config: Config
    metrics: list[str] = field(default_factory=list)

    @classmethod
    def from_disk(cls, run_dir: Path, overrides: Iterable[str | Mapping] = ()) -> "Run":
        """Read a finished run directory; a one-line error naming the missing or broken file. ``overrides``
        (``--set``-style, ``report.*`` keys only) change how this read reports the run, not its saved config."""
        run_dir = Path(run_dir)
        files = {name: data_file(run_dir, name) for name in FILES}
        for name, path in files.items():
            if not path.is_file():
                raise BenchError(f"{run_dir} is not a finished run directory: {name} is missing")
        per_user = with_protocol(pd.read_csv(files["per_user.csv"], dtype={"user": str}))
        missing = [c for c in ID_COLUMNS if c not in per_user.columns]
        if missing:
            raise BenchError(f"{files['per_user.csv']}: missing column {missing[0]!r}")
        try:
            manifest = json.loads(files["manifest.json"].read_text())
        except json.JSONDecodeError as exc:
            raise BenchError(f"{files['manifest.json']}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        manifest = Manifest.from_dict(manifest, str(files["manifest.json"]))
        config = _report_config(files["config.yaml"], overrides)
        run = cls(run_dir, per_user[list(ID_COLUMNS)], pd.read_csv(files["tokens.csv"], dtype={"user": str}),
                  manifest, config)  # a format-1 run's stored metric columns are recomputed from its ranks
        run.metrics = metric_columns(config)
        run.per_user = run.with_metrics(run.metrics)
        return run

    @staticmethod
    def write(folder: Path, per_user: pd.DataFrame, tokens: list[tuple], manifest: Manifest,
              lists: TopLists | None = None) -> None:
        """Write the run's data files into ``folder`` (which already holds ``config.yaml``); ``per_user.csv`` gets
        the :data:`ID_COLUMNS` of ``per_user``, nothing else; ``lists`` (when given) goes to ``topk.npz``."""
        if lists is not None:
            lists.to_disk(folder)
        write_json(folder / "manifest.json", manifest.to_dict())
        atomic_write_text(folder / "per_user.csv", with_protocol(per_user)[list(ID_COLUMNS)].to_csv(index=False))
        atomic_write_text(folder / "tokens.csv", pd.DataFrame(tokens, columns=list(TOKEN_COLUMNS)).to_csv(index=False))

    def with_metrics(self, columns: list[str]) -> pd.DataFrame:
        """:attr:`per_user` with every ``METRIC@K`` of ``columns`` it lacks computed from the ranks (checked: an
        unknown metric is a one-line error naming it)."""
        needed = [c for c in dict.fromkeys(columns) if c not in self.per_user.columns]
        for column in needed:
            metric_at(column, METRICS, "report.metrics")
        values = metric_values(self.per_user["rank"].to_numpy(), needed, METRIC_DIGITS)
        return self.per_user.assign(**values) if values else self.per_user

    @functools.cached_property
    def top_lists(self) -> TopLists | None:
        """The run's stored top-K lists (read on first use; ``None`` when it stored none)."""
        return TopLists.from_disk(self.path)

    @property
    def paradigms(self) -> list[str]:
        """Paradigm labels in run order."""
        return list(dict.fromkeys(self.per_user["paradigm"]))

    @property
    def protocols(self) -> list[str]:
        """Protocol names in ``eval.protocols`` order (the first is the main one; ``full`` for older runs)."""
        return list(dict.fromkeys(self.per_user["protocol"]))

    def for_protocol(self, name: str) -> "Run":
        """This run with the rows of one protocol only (what every table, test and plot of a protocol reads)."""
        return dataclasses.replace(self, per_user=self.per_user[self.per_user["protocol"] == name]
                                   .reset_index(drop=True))

    @property
    def seeds(self) -> list[int]:
        return sorted({int(s) for s in self.per_user["seed"]})

    @property
    def report_metrics(self) -> list[str]:
        """``report.metrics``: the columns of the tables, tested pairwise and plotted (each is in :attr:`metrics`)."""
        return list(dict.fromkeys(self.config["report.metrics"]))

    def protocol_metrics(self, protocol: str) -> list[str]:
        """:attr:`report_metrics` that say something under ``protocol``: a sampled protocol of N negatives drops
        every cut-off K > N (HR@100 among 100 candidates is 1 for every user)."""
        parsed = parse_protocol(protocol)
        return [m for m in self.report_metrics if not parsed.trivial(int(m.partition("@")[2]))]


def _report_config(path: Path, overrides: Iterable[str | Mapping]) -> Config:
    """A saved run's config (a record: its values are not checked again), with ``report.*`` overrides applied and
    checked; any other key is an error (changing it means rerunning the run)."""
    overrides = list(overrides)
    for item in overrides:
        layer = parse_override(item) if isinstance(item, str) else item
        if set(layer) != {"report"}:
            raise BenchError(f"--set {item}: a report can change report.* keys only; other keys describe what ran "
                             "(rerun the run to change them)")
    config = load_config(None, path, overrides, check_values=False)
    if overrides:
        check_report_values(config)
    return config


# -- comparing runs ------------------------------------------------------------------------------------------------
#: What two runs must share before their per-user values may be paired: (field, how to read it from a run, why).
#: A field is added here (an evaluation protocol, say) and every comparison checks it.
COMPARABLE_ON: tuple[tuple[str, Callable[["Run"], Any], str], ...] = (
    ("split hash", lambda run: run.manifest.split_hash,
     "per-user tests need the same users and targets, so they were run on different splits; rerun one with the "
     "other's dataset and data settings"),
    ("eval.mask_history", lambda run: run.config["eval.mask_history"],
     "ranks with and without history masking are different measurements; rerun one with the other's setting"),
)


def comparability_key(run: "Run") -> dict[str, Any]:
    """``{field: value}`` of every :data:`COMPARABLE_ON` field: runs are comparable only when their keys agree."""
    return {name: read(run) for name, read, _ in COMPARABLE_ON}


def incomparable(run_a: "Run", run_b: "Run") -> str | None:
    """One line naming the first field on which the two runs differ (``None``: they are comparable)."""
    key_a, key_b = comparability_key(run_a), comparability_key(run_b)
    for name, _, why in COMPARABLE_ON:
        if key_a[name] != key_b[name]:
            return f"{run_a.path} and {run_b.path} are not comparable: {name} differs ({key_a[name]} vs " \
                   f"{key_b[name]}); {why}"
    return None
