"""The hidden working folder of an unfinished run, which makes runs resumable.

A run to ``OUT`` works in ``OUT/../.OUT.partial``: the resolved config, the plan (paradigm spec, sweep, jobs)
and three files per finished (arm, seed) job, each written atomically, the ``.json`` last (a job counts
as finished only when its ``.json`` exists and its ``.csv`` of ranks and ``.npz`` of top-K lists match the
checksums recorded there). It also keeps the hashes of the split and candidate lists (``inputs.json``) and a
copy of the encoder (``encoders/``), so a run resumed on another machine or after the cache was cleared
finishes on the same inputs or refuses to. When every
job has finished, the runner writes the tables into the folder and renames it to ``OUT``. An interrupted or
failed run leaves only this hidden folder (never ``OUT``); ``bench run --resume OUT`` continues it.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench.cache import atomic_write_bytes, atomic_write_text, missing_folders, remove_empty
from bench.config import Config, load_config
from bench.errors import BenchError
from bench.evaluation import JobResult
from bench.rundir import data_file

STATE_VERSION = 1


def partial_dir(out: Path) -> Path:
    """Where the unfinished run to ``out`` lives."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


class RunState:
    """Jobs saved so far for the run to ``out``."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.dir = partial_dir(self.out)
        self._made: list[Path] = []  # folders above the working folder that start() created, deepest first

    # -- starting and resuming -------------------------------------------------------------------------------
    def start(self, cfg: Config, plan: dict) -> None:
        """A fresh working folder holding ``config.yaml`` and ``plan.json`` (any older one is discarded)."""
        if self.out.exists() and any(self.out.iterdir()):
            raise BenchError(f"--out {self.out} already exists and is not empty; choose another folder or delete it")
        if (self.dir / "plan.json").is_file():
            raise BenchError(f"an interrupted run to {self.out} exists: continue it with --resume {self.out}, or "
                             f"delete {self.dir} to start over")
        shutil.rmtree(self.dir, ignore_errors=True)
        self._made = missing_folders(self.dir.parent)
        (self.dir / "jobs").mkdir(parents=True)
        atomic_write_text(self.dir / "config.yaml", cfg.to_yaml())
        atomic_write_text(self.dir / "plan.json", json.dumps({**plan, "state_version": STATE_VERSION,
                                                              "config_hash": cfg.hash}, indent=2))

    def resume(self) -> tuple[Config, dict]:
        """The config and plan of the interrupted run; an error when there is nothing (valid) to resume."""
        cfg, plan = self.saved_plan()
        for leftover in self.dir.rglob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # every rank of a distributed run resumes
        return cfg, plan

    def saved_plan(self) -> tuple[Config, dict]:
        """The config and plan of the unfinished run, read without changing anything (the run may be going on)."""
        if data_file(self.out, "per_user.csv").is_file():
            raise BenchError(f"--resume {self.out}: this run already finished; `bench report {self.out}` rebuilds "
                             "its tables")
        plan_file = self.dir / "plan.json"
        if not plan_file.is_file():
            raise BenchError(f"--resume {self.out}: no interrupted run there (expected {self.dir}); "
                             "start it without --resume")
        try:
            plan = json.loads(plan_file.read_text())
        except json.JSONDecodeError:
            raise BenchError(f"{plan_file}: corrupt; start the run again without --resume") from None
        cfg = load_config(None, self.dir / "config.yaml")
        if plan.get("state_version") != STATE_VERSION or plan.get("config_hash") != cfg.hash:
            raise BenchError(f"--resume {self.out}: the run was started by another version of bench (its config "
                             "no longer resolves to the same hash); start it again without --resume")
        return cfg, plan

    def check_inputs(self, inputs: dict) -> None:
        """Record what every job of the run shares (split and candidate-list hashes) the first time; when
        resumed, an error if they came out differently here (another RecBole, another data file)."""
        record = self.dir / "inputs.json"
        if not record.is_file():
            atomic_write_text(record, json.dumps(inputs, indent=2, sort_keys=True))
            return
        saved = json.loads(record.read_text())
        changed = sorted(key for key in set(saved) | set(inputs) if saved.get(key) != inputs.get(key))
        if changed:
            raise BenchError(f"--resume {self.out}: the {', '.join(changed)} changed since the finished jobs ran "
                             f"({record}); restore the same data and versions, or start the run again without "
                             "--resume")

    def finished_jobs(self) -> int:
        """How many jobs are saved."""
        return len(self.finished_indices())

    def finished_indices(self) -> set[int]:
        """Indices of the saved jobs (not yet verified: :meth:`load` checks each)."""
        jobs = self.dir / "jobs"
        return {int(p.stem) for p in jobs.glob("[0-9]*.json")} if jobs.is_dir() else set()

    def discard(self) -> None:
        """Remove the working folder (used when a run fails before any job finished) and the folders above it
        that :meth:`start` created (``results/DATASET/`` of a first run), unless something else is in them."""
        shutil.rmtree(self.dir, ignore_errors=True)
        remove_empty(self._made)

    # -- jobs --------------------------------------------------------------------------------------------------
    def _files(self, index: int) -> tuple[Path, Path, Path]:
        jobs = self.dir / "jobs"
        return jobs / f"{index:04d}.csv", jobs / f"{index:04d}.json", jobs / f"{index:04d}.npz"

    def checkpoints(self, index: int | None = None) -> list[Path]:
        """The training checkpoints (:meth:`checkpoint`) in the working folder: of job ``index``, or of every job."""
        jobs = self.dir / "jobs"
        pattern = f"{'[0-9]' * 4 if index is None else f'{index:04d}'}-v*.training.pt"
        return sorted(jobs.glob(pattern)) if jobs.is_dir() else []

    def checkpoint(self, index: int, version: str) -> Path:
        """The file where job ``index`` (of paradigm version ``version``) keeps its training state between epochs
        (:func:`bench.training.train_bpr`), so an interrupted job continues from its last epoch."""
        return self.dir / "jobs" / f"{index:04d}-v{version}.training.pt"

    def save(self, index: int, job: JobResult) -> None:
        """Store job ``index``: its per-user rows, its top-K lists (``.npz``) and, as JSON, the rest of the
        :class:`JobResult` with both files' checksums; its training checkpoints are no longer needed."""
        table, meta, lists = self._files(index)
        text = job.rows.to_csv(index=False)
        atomic_write_text(table, text)
        buffer = io.BytesIO()
        np.savez(buffer, **job.top_items)
        atomic_write_bytes(lists, buffer.getvalue())
        atomic_write_text(meta, json.dumps({**job.record(), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                                            "lists_sha256": hashlib.sha256(buffer.getvalue()).hexdigest()},
                                           default=str))
        for stale in self.checkpoints(index):
            stale.unlink()

    def load(self, index: int, label: str, seed: int, version: str) -> JobResult | None:
        """Job ``index`` if it finished under the same label, seed and paradigm version; else None (with a
        warning when a saved job had to be discarded)."""
        table, meta, lists = self._files(index)
        if not meta.is_file():
            return None
        try:
            record = json.loads(meta.read_text())
            text = table.read_text()
        except (OSError, json.JSONDecodeError):
            record, text = {}, ""
        packed = lists.read_bytes() if lists.is_file() else b""
        problem = None
        if record.get("label") != label or record.get("seed") != seed:
            problem = "it belongs to another job"
        elif record.get("version") != version:
            problem = f"paradigm version changed ({record.get('version')} -> {version})"
        elif hashlib.sha256(text.encode()).hexdigest() != record.get("sha256"):
            problem = "its per-user file is corrupt"
        elif hashlib.sha256(packed).hexdigest() != record.get("lists_sha256"):
            problem = "its top-K lists are missing or corrupt"
        if problem:
            warnings.warn(f"recomputing {label} seed {seed}: the saved result is stale ({problem})")
            return None
        with np.load(io.BytesIO(packed)) as saved:
            top_items = {stage: saved[stage] for stage in saved.files}
        return JobResult.from_record(pd.read_csv(io.StringIO(text), dtype={"user": str}), record, top_items)
