"""Does the harness's dropout change what the encoder learns? Validation NDCG@10 of the SASRec encoder
(default preset, ml-100k) over encoder seeds, with PyTorch's dropout (encoder version 2's path: fused GELU only)
and with :class:`bench.encoders.MaskDropout` (version 3).

    python scripts/encoder_seeds.py [--seeds 0,1,2]

Trains 2 x len(seeds) encoders in temporary folders (nothing is cached; about 2 minutes each on 2 quiet cores) and
prints one JSON line per run, then the mean of each variant.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import encoders
from bench.cache import default_cache_root
from bench.config import load_config
from bench.split import build_split


def train(seed: int, variant: str) -> dict:
    """One encoder trained with ``variant`` (``torch`` or ``mask``) dropout; its validation record."""
    cfg = load_config("default", None, [f"encoder.seed={seed}"])
    split = build_split(cfg, default_cache_root(cfg["cache_dir"]))
    chosen = encoders.speed_up
    if variant == "torch":
        encoders.speed_up = encoders.fuse_activations
    out = Path(tempfile.mkdtemp())
    try:
        meta = encoders._train(split, cfg, out, out / "logs", "cpu", None)
    finally:
        encoders.speed_up = chosen
    return {"seed": seed, "dropout": variant,
            **{k: meta[k] for k in ("best_valid_ndcg@10", "best_epoch", "train_seconds")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="encoder seeds, comma-separated")
    seeds = [int(s) for s in parser.parse_args().seeds.split(",")]
    rows = []
    for seed in seeds:
        for variant in ("torch", "mask"):
            rows.append(train(seed, variant))
            print(json.dumps(rows[-1]), flush=True)
    for variant in ("torch", "mask"):
        values = [r["best_valid_ndcg@10"] for r in rows if r["dropout"] == variant]
        print(f"{variant}: mean {sum(values) / len(values):.4f} over {values}")


if __name__ == "__main__":
    main()
