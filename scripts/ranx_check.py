"""Export a run with ``bench export`` and score the files with ranx: HR@10 and NDCG@10 per (paradigm, seed,
stage) from ranx beside the run's own (from ``per_user.csv``), and the largest difference.

    python scripts/ranx_check.py results/ml-100k-default [--format trec|ranx]

Needs ranx (``pip install 'bench[export]'``). Writes the files into a temporary folder.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from bench.export import export
from bench.metrics import metrics_from_ranks
from bench.protocols import FULL


def check(run_dir: Path, fmt: str, folder: Path) -> pd.DataFrame:
    """One row per (paradigm, seed, stage): HR@10 and NDCG@10 from ranx on the exported files and from the run."""
    from ranx import Qrels, Run, evaluate

    export(run_dir, fmt, folder)
    kind, suffix = ("trec", ".trec") if fmt == "trec" else ("json", ".json")
    per_user = pd.read_csv(run_dir / "per_user.csv", dtype={"user": str})
    per_user = per_user[per_user.get("protocol", FULL) == FULL]
    rows = []
    for (paradigm, seed, stage), group in per_user.groupby(["paradigm", "seed", "stage"], sort=False):
        found = folder / f"{paradigm}.seed{seed}.{stage}{suffix}"
        got = evaluate(Qrels.from_file(str(folder / f"qrels.{stage}{suffix}"), kind=kind),
                       Run.from_file(str(found), kind=kind), ["hit_rate@10", "ndcg@10"])
        own = metrics_from_ranks(group["rank"].to_numpy(), ["hit", "ndcg"], [10])
        rows.append({"paradigm": paradigm, "seed": seed, "stage": stage,
                     "hr@10": own["hit@10"].mean(), "hr@10 ranx": got["hit_rate@10"],
                     "ndcg@10": own["ndcg@10"].mean(), "ndcg@10 ranx": got["ndcg@10"]})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--format", dest="fmt", choices=["trec", "ranx"], default="ranx")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        table = check(args.run_dir, args.fmt, Path(folder))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.6f}"))
    worst = max((table["hr@10"] - table["hr@10 ranx"]).abs().max(),
                (table["ndcg@10"] - table["ndcg@10 ranx"]).abs().max())
    print(f"{len(table)} (paradigm, seed, stage) files; largest |ranx - run| over HR@10 and NDCG@10: {worst:.2e}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
