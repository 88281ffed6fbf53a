"""The run directory: what a finished run holds on disk, typed, and read back the same way by every consumer.

A run directory holds ``config.yaml`` (the resolved config), ``manifest.json`` (a :class:`Manifest`: what ran,
on what, for how long), ``per_user.csv`` (one row per paradigm, seed, stage and user: the target's rank and every
metric) and ``tokens.csv`` (one row per LLM paradigm and user: prompt cost). ``bench.report`` and ``bench.plots``
read it through :meth:`Run.from_disk` only. ``FORMAT_VERSION`` names this layout; a manifest without the field
was written before it existed and has the same layout (version 1). A run of another version is a clear error.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cache import atomic_write_text
from bench.config import Config, load_config
from bench.errors import BenchError
from bench.metrics import METRICS

FORMAT_VERSION = 1
ID_COLUMNS = ("paradigm", "seed", "stage", "user", "rank")
MAIN_METRICS = ("hit@100", "ndcg@10")
TOKEN_COLUMNS = ("paradigm", "user", "hard_tokens", "soft_tokens", "history_len", "history_kept")
FILES = ("per_user.csv", "tokens.csv", "manifest.json", "config.yaml")


def display_name(metric: str) -> str:
    """``ndcg@10`` -> ``NDCG@10``."""
    name, _, k = metric.partition("@")
    return f"{METRICS.get(name).label if name in METRICS else name}@{k}"


def metric_columns(per_user: pd.DataFrame) -> list[str]:
    """The metric columns of a per-user table, main metrics (HR@100, NDCG@10) first."""
    metrics = [c for c in per_user.columns if c not in ID_COLUMNS]
    return [m for m in MAIN_METRICS if m in metrics] + [m for m in metrics if m not in MAIN_METRICS]


def write_json(path: Path, data: Any) -> None:
    """Pretty, key-sorted JSON written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@dataclass(frozen=True)
class Manifest:
    """What a run did. ``paradigms`` maps each label to its record: ``paradigm``, ``version``, ``options``,
    ``description``, ``sweep_value`` and ``seeds`` (seed -> the job's info: ``trainable_parameters``,
    ``fit_seconds``, ``score_seconds``, ``training``)."""

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
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict, source: str = "manifest") -> "Manifest":
        """The manifest of a saved run; a one-line error for another format version or a missing field."""
        version = data.get("format_version", 1)
        if version != FORMAT_VERSION:
            raise BenchError(f"{source}: run directory format version {version}, but this bench reads version "
                             f"{FORMAT_VERSION}; rerun it with this bench, or read it with the bench that wrote it "
                             f"(git commit {data.get('git_commit')})")
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


@dataclass
class Run:
    """A finished run directory read back: per-user rows, prompt costs, manifest and config."""

    path: Path
    per_user: pd.DataFrame
    tokens: pd.DataFrame
    manifest: Manifest
    config: Config

    @classmethod
    def from_disk(cls, run_dir: Path) -> "Run":
        """Read a finished run directory; a one-line error naming the missing or broken file."""
        run_dir = Path(run_dir)
        files = {name: run_dir / name for name in FILES}
        for name, path in files.items():
            if not path.is_file():
                raise BenchError(f"{run_dir} is not a finished run directory: {name} is missing")
        per_user = pd.read_csv(files["per_user.csv"], dtype={"user": str})
        missing = [c for c in ID_COLUMNS if c not in per_user.columns]
        if missing:
            raise BenchError(f"{files['per_user.csv']}: missing column {missing[0]!r}")
        try:
            manifest = json.loads(files["manifest.json"].read_text())
        except json.JSONDecodeError as exc:
            raise BenchError(f"{files['manifest.json']}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        return cls(run_dir, per_user, pd.read_csv(files["tokens.csv"], dtype={"user": str}),
                   Manifest.from_dict(manifest, str(files["manifest.json"])), load_config(None, files["config.yaml"]))

    @staticmethod
    def write(folder: Path, per_user: pd.DataFrame, tokens: list[tuple], manifest: Manifest) -> None:
        """Write the run's data files into ``folder`` (which already holds ``config.yaml``)."""
        write_json(folder / "manifest.json", manifest.to_dict())
        atomic_write_text(folder / "per_user.csv", per_user.to_csv(index=False, float_format="%.10g"))
        atomic_write_text(folder / "tokens.csv", pd.DataFrame(tokens, columns=list(TOKEN_COLUMNS)).to_csv(index=False))

    @property
    def paradigms(self) -> list[str]:
        """Paradigm labels in run order."""
        return list(dict.fromkeys(self.per_user["paradigm"]))

    @property
    def seeds(self) -> list[int]:
        return sorted({int(s) for s in self.per_user["seed"]})

    @property
    def report_metrics(self) -> list[str]:
        """``report.metrics`` that the run measured (an error when none of them is in ``per_user.csv``)."""
        wanted = list(self.config["report.metrics"])
        found = [m for m in wanted if m in self.per_user.columns]
        if not found:
            raise BenchError(f"{self.path}: none of report.metrics ({', '.join(wanted)}) is in per_user.csv; "
                             "set report.metrics to measured METRIC@K columns")
        return found
