"""Why RA-Rec learns what it learns: per-layer gradient norms and prefix attention mass on one training batch.

    python scripts/ra_rec_diagnostics.py [--dataset ml-100k] [--preset default] [--set KEY=VALUE ...]

Builds (or loads from the cache) the split, encoder and backbone of the config, sets RA-Rec up at its
initialisation, and for one batch of ``train.batch_size`` training samples prints, per layer: the gradient
norm of the user and item projectors and of the instruction vectors (BPR + InfoNCE), and the mean share of
attention that text tokens give to the prefix. Small gradients at depth or a prefix that gets almost no
attention explain a paradigm that barely moves from its starting point.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import registry, resources  # noqa: E402
from bench.cache import default_cache_root  # noqa: E402
from bench.config import load_config  # noqa: E402
from bench.encoders import load_or_train  # noqa: E402
from bench.evaluation import fit_paradigm  # noqa: E402
from bench.registry import Context  # noqa: E402
from bench.split import build_split  # noqa: E402
from bench.training import _step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--paradigm", default="ra-rec")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.preset, overrides=[f"data.dataset={args.dataset}", *args.overrides])
    cache = default_cache_root(cfg["cache_dir"])
    split = build_split(cfg, cache)
    encoder = load_or_train(split, cfg, cache)
    llm = resources.load_llm(cfg, torch.device("cpu"), cache)
    cls = registry.get(args.paradigm)
    options = {**registry.options_for(cls, cfg), "trained": False}
    paradigm = cls()
    fit_paradigm(paradigm, split, Context(config=cfg, options=options, seed=0, device=torch.device("cpu"),
                                          cache_dir=cache, encoder=encoder, llm=llm,
                                          generator=resources.seed_everything(0)))
    generator = torch.Generator().manual_seed(0)
    targets = torch.as_tensor(split.train_items, dtype=torch.long)
    samples = torch.randperm(len(paradigm._sample_prompts), generator=generator)[:cfg["train.batch_size"]]
    positives = targets[torch.randint(0, len(targets), (len(samples),), generator=generator)]
    negatives = torch.randint(1, split.n_items, (cfg["train.negatives"],), generator=generator)
    towers = paradigm._towers
    loss = _step(paradigm, samples, positives, negatives, None)
    towers.attention_mass = []
    with torch.no_grad():
        paradigm.sample_vectors(samples)
        user_mass = towers.attention_mass[:]
        towers.attention_mass.clear()
        paradigm.item_vectors(positives)
        item_mass = towers.attention_mass[:]
    print(f"{args.paradigm} at initialisation, one batch of {len(samples)} (loss {loss:.4f})")
    print("layer  |grad W_u|  |grad W_i|  |grad c_u|  |grad c_i|  user prefix attention  item prefix attention")
    for layer in range(llm.backbone.n_layers if towers.every_layer else 0):
        print(f"{layer:5d}  {_norm(towers.user, 'projector', layer):10.2e}  "
              f"{_norm(towers.item, 'projector', layer):10.2e}  {_norm(towers.user, 'instruction', layer):10.2e}  "
              f"{_norm(towers.item, 'instruction', layer):10.2e}  {user_mass[layer]:21.3f}  {item_mass[layer]:21.3f}")


def _norm(prefix, name: str, layer: int) -> float:
    """Gradient norm of one layer's slice of a prefix part (nan when the variant has no such part)."""
    part = getattr(prefix, name, None)
    tensor = part.weight if name == "projector" and part is not None else part
    if tensor is None or tensor.grad is None:
        return float("nan")
    return float(tensor.grad[layer].norm())


if __name__ == "__main__":
    main()
