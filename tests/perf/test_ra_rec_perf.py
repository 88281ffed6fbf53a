"""RA-Rec cost profile (``make perf``): where one training batch's time goes, and the hook overhead.

Ratios only: the injected forward against a plain forward of the same shapes, and the share of a batch spent
in the user side, the item side and the backward pass.
"""
import json
import time

import torch

from bench import encoders, registry, runner
from bench.config import load_config
from bench.registry import Context
from bench.split import build_split
from bench.training import bpr_loss


def _timed(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def test_ra_rec_batch_profile_and_hook_overhead(tmp_path):
    cfg = load_config("default", overrides=["encoder.epochs=1", "train.epochs=1", {"cache_dir": str(tmp_path)},
                                            "paradigms.ra-rec.train_fraction=0.06"])  # >= one full batch
    split = build_split(cfg, tmp_path)
    encoder = encoders.load_or_train(split, cfg, tmp_path)
    llm = runner.load_llm(cfg, torch.device("cpu"), tmp_path)
    cls = registry.get("ra-rec")
    paradigm = cls()
    paradigm.fit(split, Context(config=cfg, options=registry.options_for(cls, cfg), seed=0,
                                device=torch.device("cpu"), cache_dir=tmp_path, encoder=encoder, llm=llm,
                                generator=runner.seed_everything(0)))
    batch, n_neg = cfg["train.batch_size"], cfg["train.negatives"]
    samples = torch.arange(min(batch, len(paradigm._samples[0])))
    positives = torch.as_tensor(split.train_items[:len(samples)])
    negatives = torch.randint(1, split.n_items, (n_neg,))
    user_s, user = _timed(lambda: paradigm.sample_vectors(samples))
    item_s, items = _timed(lambda: (paradigm.item_vectors(positives), paradigm.item_vectors(negatives)))
    loss = bpr_loss(user, items[0], items[1])
    start = time.perf_counter()
    loss.backward()
    backward_s = time.perf_counter() - start
    aligner = paradigm._aligner
    soft = [paradigm.soft_history(split.train_history(int(u))) for u in split.users[:64]]
    hard = [paradigm._hard] * 64
    ids, soft_ids, mask = aligner.layout(soft, hard)
    model = llm.backbone.model
    plain_ids = torch.cat([torch.full((64, mask.shape[1] - ids.shape[1]), 100), ids], dim=1)
    with torch.no_grad():
        injected_s, _ = _timed(lambda: aligner(soft, hard))
        plain_s, _ = _timed(lambda: model(input_ids=plain_ids, attention_mask=mask))
    total = user_s + item_s + backward_s
    report = {"batch": len(samples), "negatives": n_neg, "user_side_share": round(user_s / total, 2),
              "item_side_share": round(item_s / total, 2), "backward_share": round(backward_s / total, 2),
              "hook_overhead_ratio": round(injected_s / plain_s, 2)}
    print("\nRA-Rec one batch on MiniLM (ml-100k, default preset):", json.dumps(report))
    assert report["hook_overhead_ratio"] <= 1.5
