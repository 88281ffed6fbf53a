"""Amazon-Books-scale stages, each in a fresh process: wall time and peak resident memory (issue 12, item 4).

    python scripts/books_scale.py [--data DIR] [--stages generate,split,rank] [--users 2000]
                                  [--code-root PATH] [--scale 1.0] [--keep-cache]

Stages (``--stages``, comma-separated, in this order):

* ``generate``: ``scripts/make_books.py`` writes the synthetic data set (22.5M rows by default) into
  ``DATA/books-synth/``, unless a complete one made with the same seed and sizes is already there.
* ``split``: ``bench.split.build_split`` on it with the default preset and ``data.max_users`` unset, into an
  empty cache: read, k-core, chronological order, RecBole's dataset construction and leave-one-out split.
* ``rank``: a fresh process loads that split from the cache, fits ``pop`` through the paradigm contract and
  ranks the test item of ``--users`` seeded users over every item with ``bench.metrics.evaluate_ranks``.
* ``recbole-whole``: for comparison only, RecBole builds the split itself from the raw file (its own reader
  and ``user_inter_num_interval`` filter, no bench code); bench does not use this way (slower, and RecBole's
  float32 timestamps would break time ties by file order).

Peak memory is the stage process's own high-water mark (``VmHWM``), so stages never blur into each other.
``--code-root`` runs the stages with another checkout's ``bench`` (e.g. an unchanged one, to compare).
DATA defaults to ``$BENCH_CACHE/perf`` (else ``~/.cache/bench/perf``). Prints one table row per stage.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_books  # noqa: E402

NAME = "books-synth"
MARK = "BOOKS_STAGE "
STAGES = ("generate", "split", "rank", "recbole-whole")

_PRELUDE = r"""
import json, re, sys, time
START = time.perf_counter()
ARGS = json.loads(sys.argv[1])
sys.path.insert(0, ARGS["code_root"])

def peak_gb():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 2 ** 20

def rss_gb():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 2 ** 20

def report(**values):
    print("BOOKS_STAGE " + json.dumps(values), flush=True)

def config():
    from bench.config import load_config
    data = {"dataset": ARGS["name"], "data_dir": ARGS["data"], "max_users": None}
    return load_config("default", overrides=[{"data": data, "cache_dir": ARGS["cache"]}])
"""

_SPLIT = _PRELUDE + r"""
from pathlib import Path
from bench.split import build_split
split = build_split(config(), Path(ARGS["cache"]))
report(stage="split", seconds=time.perf_counter() - START, peak_gb=peak_gb(), users=split.stats["users"],
       items=split.stats["items"], interactions=split.stats["interactions"], hash=split.hash)
"""

_RANK = _PRELUDE + r"""
from pathlib import Path
import numpy as np
import torch
from bench import registry
from bench.evaluation import fit_paradigm
from bench.metrics import evaluate_ranks, metrics_from_ranks
from bench.split import build_split
cfg = config()
split = build_split(cfg, Path(ARGS["cache"]))
report(stage="load split", seconds=time.perf_counter() - START, peak_gb=peak_gb(), rss_gb=rss_gb(),
       items=split.stats["items"])
start = time.perf_counter()
cls = registry.get("pop")
paradigm = cls()
fit_paradigm(paradigm, split, registry.Context(config=cfg, options=registry.options_for(cls, cfg), seed=0,
                                               device=torch.device("cpu"), cache_dir=Path(ARGS["cache"])))
users = np.sort(np.random.default_rng(0).choice(split.users, size=min(ARGS["users"], len(split.users)),
                                                replace=False))
histories = [split.history(int(u), "test") for u in users]
ranks = evaluate_ranks(lambda chunk: paradigm.score(chunk, "test"), users, split.test_target[users], histories,
                       split.n_items, cfg["eval.chunk_mb"])
hit = metrics_from_ranks(ranks, ["hit"], [100])["hit@100"]
report(stage=f"pop + rank {len(users)} users", seconds=time.perf_counter() - start, peak_gb=peak_gb(),
       users=len(users), items=split.n_items - 1, hit_at_100=float(hit.mean()), min_rank=int(ranks.min()))
"""

_RECBOLE_WHOLE = _PRELUDE + r"""
import os
from bench.compat import recbole_config, recbole_workdir
from bench.split import recbole_settings
settings = {**recbole_settings(2), "data_path": ARGS["data"], "seed": 0, "reproducibility": True,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "user_inter_num_interval": "[3,inf)", "filter_inter_by_user_or_item": True}
with recbole_workdir(ARGS["cache"]):
    rb_config = recbole_config("SASRec", ARGS["name"], settings)
    from recbole.data import create_dataset, data_preparation
    dataset = create_dataset(rb_config)
    train, valid, test = data_preparation(rb_config, dataset)
report(stage="recbole-whole", seconds=time.perf_counter() - START, peak_gb=peak_gb(),
       users=dataset.user_num - 1, items=dataset.item_num - 1, augmented_rows=len(dataset.inter_feat))
"""

_GENERATE = _PRELUDE + r"""
sys.path.insert(0, ARGS["scripts"])
import make_books
make_books.main(ARGS["argv"])
report(stage="generate", seconds=time.perf_counter() - START, peak_gb=peak_gb(), rows=ARGS["rows"])
"""

_CODE = {"generate": _GENERATE, "split": _SPLIT, "rank": _RANK, "recbole-whole": _RECBOLE_WHOLE}


@dataclass
class Row:
    """One measured stage: wall seconds of its process (or part of it), that process's peak RSS in GB, and
    whatever the stage reported besides."""

    stage: str
    seconds: float
    peak_gb: float
    extra: dict = field(default_factory=dict)


def default_data_dir() -> Path:
    """``$BENCH_CACHE/perf``, else ``~/.cache/bench/perf``: where the generated data set is kept for reuse."""
    sys.path.insert(0, str(ROOT))
    from bench.cache import default_cache_root

    return default_cache_root(None) / "perf"


def ensure_books(data: Path, shape: make_books.Shape) -> Row | None:
    """Make sure ``data/books-synth`` holds the data set of ``shape``; return its generation's Row, or None
    when a complete one with the same seed and sizes was reused."""
    record = make_books.read_record(data / NAME)
    wanted = {"format": make_books.FORMAT, **asdict(shape)}
    if record is not None and all(record.get(k) == v for k, v in wanted.items()):
        return None
    argv = ["--out", str(data), "--name", NAME, "--seed", str(shape.seed), "--interactions", str(shape.interactions),
            "--users", str(shape.users), "--items", str(shape.items), "--quiet"]
    data.mkdir(parents=True, exist_ok=True)
    return run_stage("generate", {"scripts": str(ROOT / "scripts"), "argv": argv, "rows": shape.interactions,
                                  "code_root": str(ROOT), "cache": str(data)})[0]


def run_stage(stage: str, args: dict, timeout: float = 3600) -> list[Row]:
    """Run ``stage`` (generate, split, rank, recbole-whole) in a fresh Python process with ``args`` (data, name, cache,
    code_root, users); return the rows it reported. Raises RuntimeError with the stage's last error line."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CODE[stage], json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout, cwd=args["cache"])
    wall = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"stage {stage} failed (exit {done.returncode}): {last}")
    reports = [json.loads(line[len(MARK):]) for line in done.stdout.splitlines() if line.startswith(MARK)]
    rows = [Row(r.pop("stage"), r.pop("seconds"), r.pop("peak_gb"), r) for r in reports]
    rows[-1].extra["process_wall_s"] = round(wall, 1)
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table: stage, wall seconds, peak RSS GB, notes."""
    lines = [f"{'stage':<28} {'wall s':>8} {'peak RSS GB':>12}  notes"]
    for row in rows:
        notes = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.extra.items())
        lines.append(f"{row.stage:<28} {row.seconds:>8.1f} {row.peak_gb:>12.2f}  {notes}")
    return "\n".join(lines)


def run(data: Path, stages: list[str], users: int, shape: make_books.Shape, code_root: Path,
        cache: Path) -> list[Row]:
    """Run ``stages`` in order (``split`` before ``rank``: rank loads the split that split cached)."""
    rows: list[Row] = []
    args = {"data": str(data), "name": NAME, "cache": str(cache), "code_root": str(code_root), "users": users}
    for stage in stages:
        if stage == "generate":
            made = ensure_books(data, shape)
            rows.append(made or Row("generate (reused)", 0.0, 0.0, {"rows": shape.interactions}))
        else:
            rows.extend(run_stage(stage, args))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: parse, run the stages, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of the generated data set")
    parser.add_argument("--stages", default="generate,split,rank", help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--users", type=int, default=2000, help="users ranked by the rank stage (default 2000)")
    parser.add_argument("--scale", type=float, default=1.0, help="data set size factor (default 1: 22.5M rows)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--code-root", type=Path, default=ROOT, help="checkout whose bench the stages run")
    parser.add_argument("--keep-cache", action="store_true", help="keep the split cache folder and print it")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}; use {', '.join(STAGES)}")
    shape = make_books.shape_from_args(argparse.Namespace(scale=args.scale, seed=args.seed,
                                                          **{k: getattr(make_books.Shape, k) for k in
                                                             ("interactions", "users", "items")}))
    data = args.data or default_data_dir()
    cache = Path(tempfile.mkdtemp(prefix="books-scale-"))
    try:
        print(table(run(data, stages, args.users, shape, args.code_root.resolve(), cache)))
    finally:
        if args.keep_cache:
            print(f"split cache: {cache}")
        else:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
