"""Evaluator benchmarks (``make perf``): speed against RecBole's full-sort evaluator, memory at 1M items.

Both report ratios against a baseline measured in the same run, never absolute times.
"""
import json
import subprocess
import sys
import time

import pytest

from bench import encoders
from bench.compat import recbole_workdir
from bench.config import load_config
from bench.metrics import evaluate_ranks, metrics_from_ranks
from bench.split import build_split

REPEATS = 7


def _best_of(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.fixture(scope="module")
def ml100k_sasrec(tmp_path_factory):
    cache = tmp_path_factory.mktemp("perf-cache")
    # Full ml-100k, a real (briefly trained) SASRec of the default width: speed does not depend on quality.
    cfg = load_config("default", overrides=["encoder.epochs=1", {"cache_dir": str(cache)}])
    split = build_split(cfg, cache)
    return cfg, split, encoders.load_or_train(split, cfg, cache), cache


def test_evaluator_is_at_least_as_fast_as_recboles(ml100k_sasrec):
    cfg, split, encoder, cache = ml100k_sasrec
    from recbole.utils import get_trainer

    with recbole_workdir(cache / "perf"):
        rb_config, (_, _, test_loader) = encoders.recbole_data(split, cfg, "cpu", cache / "perf")
        rb_config["metrics"], rb_config["topk"] = ["Hit", "NDCG", "MRR"], [10, 20, 50, 100]
        trainer = get_trainer(rb_config["MODEL_TYPE"], "SASRec")(rb_config, encoder.model)
        recbole_s = _best_of(lambda: trainer.evaluate(test_loader, load_best_model=False))
    users = split.users
    histories = [split.history(int(u), "test") for u in users]
    targets = split.test_target[users]

    def ours(mask: bool):
        ranks = evaluate_ranks(lambda chunk: encoder.score([histories[int(u) - 1] for u in chunk]), users,
                               targets, histories if mask else None, split.n_items)
        metrics_from_ranks(ranks, ["hit", "ndcg", "mrr"], [10, 20, 50, 100])

    ours_s = _best_of(lambda: ours(False))
    masked_s = _best_of(lambda: ours(True))
    n = len(users)
    report = {"users": n, "recbole_users_per_s": round(n / recbole_s), "bench_users_per_s": round(n / ours_s),
              "bench_masked_users_per_s": round(n / masked_s), "ratio": round(recbole_s / ours_s, 2),
              "ratio_masked": round(recbole_s / masked_s, 2)}
    print("\nevaluator vs RecBole full-sort (ml-100k test stage, SASRec):", json.dumps(report))
    assert report["ratio"] >= 1.0
    assert report["ratio_masked"] >= 1.0


MEMORY_SCRIPT = r"""
import json, re
import numpy as np, torch
from bench.metrics import evaluate_ranks

def high_water_mb():  # VmHWM: this process's peak resident memory (ru_maxrss survives fork+exec)
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

n_users, n_items, dim = 2000, 1_000_000, 64
gen = torch.Generator().manual_seed(0)
items = torch.randn(n_items, dim, generator=gen)
users = torch.randn(n_users, dim, generator=gen)
base = high_water_mb()
rng = np.random.default_rng(0)
histories = [rng.integers(1, n_items, 50) for _ in range(n_users)]
targets = rng.integers(1, n_items, n_users)
ranks = evaluate_ranks(lambda chunk: users[torch.as_tensor(chunk)] @ items.T, np.arange(n_users), targets,
                       histories, n_items, chunk_mb=256)
peak = high_water_mb()
print(json.dumps({"peak_mb": peak, "before_scoring_mb": base, "ranks_ok": bool((ranks >= 1).all()),
                  "full_matrix_mb": n_users * n_items * 4 / 2**20}))
"""


def test_scoring_a_million_items_stays_under_2gb():
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("\n2,000 users x 1,000,000 items (64-d):", json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                                                 for k, v in report.items()}))
    assert report["ranks_ok"]
    assert report["peak_mb"] < 2048
    assert report["peak_mb"] < report["full_matrix_mb"] / 3


def test_storing_top_k_lists_costs_less_than_ranking_the_target():
    """Every job keeps each user's top-100 (eval.topk) under full ranking: on a Beauty-sized and a 100,000-item
    catalogue, extracting them from a score block costs less than 1.5x ranking the target in the same block."""
    import numpy as np
    import torch

    from bench.metrics import rank_chunk, top_items
    from conftest import best_of

    report = {}
    for n_items in (12_102, 100_000):
        generator = torch.Generator().manual_seed(0)
        scores = torch.randn(256, n_items, generator=generator)
        targets = np.arange(1, 257)
        histories = [np.arange(300 + u, 320 + u) for u in range(256)]
        best = best_of({"rank": lambda: rank_chunk(scores, targets, histories),
                        "top": lambda: top_items(scores, histories, 100)}, repeats=5)
        report[n_items] = round(best["top"] / best["rank"], 2)
    print("\ntop-100 lists / ranking the target, 256 users (by catalogue size):", json.dumps(report))
    assert max(report.values()) < 1.5
