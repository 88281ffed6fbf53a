"""RA-Rec cost (``make perf``): peak memory of a whole SmolLM2 run, and what micro-batching costs.

* Peak resident memory of ``python -m bench run --paradigms ra-rec --dataset ml-100k --preset smoke
  --llm smollm2-135m`` (a child process, measured by the kernel): it must stay under 4 GB (issue 10; it was
  22.9 GB when a whole training batch's graph went through the 30-layer decoder at once).
* Ratios only for time: one micro-batched training step against one whole-batch step on MiniLM, same batch.
"""
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import encoders, registry, resources
from bench.config import load_config
from bench.evaluation import fit_paradigm
from bench.registry import Context
from bench.split import build_split
from bench.training import _chunked_step, _step

ROOT = Path(__file__).resolve().parents[2]


def test_smollm2_smoke_run_peak_memory(tmp_path):
    command = [sys.executable, "-m", "bench", "run", "--paradigms", "ra-rec", "--dataset", "ml-100k", "--preset",
               "smoke", "--llm", "smollm2-135m", "--out", str(tmp_path / "run"), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    print(f"\nRA-Rec, SmolLM2-135M, ml-100k smoke preset: peak RSS {peak_gb:.2f} GB, "
          f"wall {time.perf_counter() - start:.0f} s ({' '.join(command[1:])})")
    assert peak_gb < 4.0


def test_micro_batched_step_costs_at_most_twice_a_whole_batch_step(tmp_path):
    cfg = load_config("default", overrides=["encoder.epochs=1", {"cache_dir": str(tmp_path)},
                                            "paradigms.ra-rec.trained=false"])
    split = build_split(cfg, tmp_path)
    encoder = encoders.load_or_train(split, cfg, tmp_path)
    llm = resources.load_llm(cfg, torch.device("cpu"), tmp_path)
    cls = registry.get("ra-rec")
    paradigm = cls()
    fit_paradigm(paradigm, split, Context(config=cfg, options=registry.options_for(cls, cfg), seed=0,
                                          device=torch.device("cpu"), cache_dir=tmp_path, encoder=encoder, llm=llm,
                                          generator=resources.seed_everything(0)))
    generator = torch.Generator().manual_seed(0)
    samples = torch.randperm(len(paradigm._sample_prompts), generator=generator)[:cfg["train.batch_size"]]
    positives = torch.as_tensor(split.train_items[:len(samples)])
    negatives = torch.randint(1, split.n_items, (cfg["train.negatives"],), generator=generator)
    paradigm.micro_batch = None
    _step(paradigm, samples, positives, negatives, None)  # fills the text-only caches
    best = {}
    for _ in range(2):
        for mode in ("whole", "micro"):
            start = time.perf_counter()
            if mode == "whole":
                _step(paradigm, samples, positives, negatives, None)
            else:
                _chunked_step(paradigm, samples, positives, negatives, 64)
            best[mode] = min(best.get(mode, float("inf")), time.perf_counter() - start)
    report = {"batch": len(samples), "negatives": len(negatives), "micro_batch": 64,
              "micro_over_whole": round(best["micro"] / best["whole"], 2)}
    print("\nRA-Rec training step on MiniLM (ml-100k, default preset):", json.dumps(report))
    assert report["micro_over_whole"] <= 2.0
