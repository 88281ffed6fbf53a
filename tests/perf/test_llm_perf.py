"""Backbone feature encoding (``make perf``): length-sorted against naive batching of the same titles."""
import json
import random
import time
from pathlib import Path

import torch

from bench.data import locate_dataset, read_titles
from bench.llm import load_backbone


def test_length_sorted_batching_is_at_least_1_5x_faster():
    backbone = load_backbone("minilm", torch.device("cpu"))
    titles = [t for t in read_titles(locate_dataset("ml-100k", Path("/absent"), False).item).values() if t]
    random.Random(0).shuffle(titles)  # file order is arbitrary; naive batching sees a random mix of lengths
    backbone.encode(titles[:64], 64)  # warm-up
    best = {}
    for _ in range(3):
        for sort in (False, True):
            start = time.perf_counter()
            backbone.encode(titles, 64, batch_size=32, sort_by_length=sort)
            elapsed = time.perf_counter() - start
            best[sort] = min(best.get(sort, elapsed), elapsed)
    report = {"titles": len(titles), "naive_titles_per_s": round(len(titles) / best[False], 1),
              "sorted_titles_per_s": round(len(titles) / best[True], 1),
              "ratio": round(best[False] / best[True], 2)}
    print("\nMiniLM, ml-100k titles, batch 32, max 64 tokens:", json.dumps(report))
    assert report["ratio"] >= 1.5
