"""Measure a bench run on a GPU and print a short table of what it cost (used by scripts/device_check.sh).

Two commands::

    python scripts/device_report.py run MEMORY_JSON -- run --paradigms all --dataset ml-100k --device cuda ...
    python scripts/device_report.py table RUN_DIR [--memory MEMORY_JSON]

``run`` calls ``bench.cli.main`` in this process (so the CUDA allocator's statistics cover the whole run) and
writes ``MEMORY_JSON``: the wall-clock seconds of the run and the peak GPU memory PyTorch allocated and reserved,
in bytes (``null`` when CUDA was never used). It exits with bench's own status.

``table`` reads the run directory's ``manifest.json`` and ``per_user.csv`` and prints, as Markdown:

* stage timings: ``timings_seconds`` of the manifest (split, encoder, backbone loading, each job's fit and
  score), in seconds;
* peak GPU memory, in GiB (from ``MEMORY_JSON``);
* evaluator throughput per paradigm: ranked users per second = rows of ``per_user.csv`` (users x stages x
  seeds) / the job's ``score_seconds`` (which includes the paradigm's own ``score()`` work, e.g. RA-Rec's
  user-side LLM passes, not only the full ranking).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

GIB = 1 << 30
#: The shared stages of a run, in the order they happen.
PIPELINE_ORDER = ("split", "encoder", "llm_load")


def measure(memory_json: Path, bench_args: list[str]) -> int:
    """Run ``bench`` with ``bench_args`` in-process; write wall seconds and peak GPU memory to ``memory_json``."""
    import torch

    from bench.cli import main

    start = time.perf_counter()
    status = main(bench_args)
    seconds = time.perf_counter() - start
    used = torch.cuda.is_available() and torch.cuda.is_initialized()
    record = {"wall_seconds": round(seconds, 2), "exit_status": status,
              "gpu": torch.cuda.get_device_name() if used else None,
              "peak_allocated_bytes": torch.cuda.max_memory_allocated() if used else None,
              "peak_reserved_bytes": torch.cuda.max_memory_reserved() if used else None}
    memory_json.write_text(json.dumps(record, indent=2) + "\n")
    return status


def stage_rows(timings: dict[str, float]) -> list[tuple[str, float]]:
    """``(stage, seconds)`` rows: shared stages first, then each job's fit and score (valid + test) together."""
    order = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    shared = sorted(((name, seconds) for name, seconds in timings.items() if "/" not in name),
                    key=lambda row: (order.get(row[0], len(order)), row[0]))
    jobs: dict[str, dict[str, float]] = {}
    for name, seconds in timings.items():
        if "/" in name:
            job, _, part = name.rpartition("/")
            kind = "fit" if part == "fit" else "score"
            jobs.setdefault(job, {}).setdefault(kind, 0.0)
            jobs[job][kind] += seconds
    rows = list(shared)
    for job, parts in jobs.items():
        rows += [(f"{job} {kind}", parts[kind]) for kind in ("fit", "score") if kind in parts]
    return rows


def throughput_rows(manifest: dict, run_dir: Path) -> list[tuple[str, int, float, float | None]]:
    """``(paradigm, ranked users, score seconds, users per second)`` for every paradigm of the run."""
    import pandas as pd

    counts = pd.read_csv(run_dir / "per_user.csv", usecols=["paradigm"])["paradigm"].value_counts()
    rows = []
    for label, entry in manifest["paradigms"].items():
        seconds = sum(seed["score_seconds"] for seed in entry["seeds"].values())
        users = int(counts.get(label, 0))
        rows.append((label, users, seconds, users / seconds if seconds > 0 else None))
    return rows


def table(run_dir: Path, memory_json: Path | None) -> str:
    """The Markdown report of one run directory (see the module docstring)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    memory = json.loads(memory_json.read_text()) if memory_json and memory_json.is_file() else {}
    hardware = manifest["hardware"]
    llm = manifest.get("llm") or {}
    lines = [f"# device check: {manifest['dataset']}, {hardware.get('gpu') or hardware['device']}",
             "", f"- command: `{manifest['command']}`",
             f"- device {hardware['device']}, backbone {llm.get('backbone', '-')} in {llm.get('dtype', '-')}, "
             f"torch {manifest['versions']['torch']}",
             "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in stage_rows(manifest["timings_seconds"])]
    if memory.get("wall_seconds") is not None:
        lines.append(f"| **whole run (wall clock)** | **{memory['wall_seconds']:.2f}** |")
    peak, reserved = memory.get("peak_allocated_bytes"), memory.get("peak_reserved_bytes")
    lines += ["", "peak GPU memory: " + ("not measured (CUDA unused)" if peak is None else
                                         f"{peak / GIB:.2f} GiB allocated, {reserved / GIB:.2f} GiB reserved"),
              "", "| paradigm | ranked users (users x stages x seeds) | score seconds | users/s |",
              "|---|---:|---:|---:|"]
    for label, users, seconds, rate in throughput_rows(manifest, run_dir):
        lines.append(f"| {label} | {users} | {seconds:.2f} | {'-' if rate is None else f'{rate:,.0f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run bench in-process and record peak GPU memory")
    run.add_argument("memory_json", type=Path)
    run.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench's own arguments")
    tab = sub.add_parser("table", help="print the Markdown report of a run directory")
    tab.add_argument("run_dir", type=Path)
    tab.add_argument("--memory", type=Path, help="the MEMORY_JSON written by `run`")
    args = parser.parse_args(argv)
    if args.command == "run":
        bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
        return measure(args.memory_json, bench_args)
    if not (args.run_dir / "manifest.json").is_file():
        print(f"error: {args.run_dir} has no manifest.json: not a finished run directory", file=sys.stderr)
        return 2
    print(table(args.run_dir, args.memory), end="")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench from this checkout
    sys.exit(main())
