"""One run: config -> split -> encoder -> (paradigm.fit -> score -> ranks) per seed -> run directory.

The run directory is assembled in a hidden temporary folder next to its destination and renamed into
place only when everything succeeded, so an error or Ctrl-C never leaves a partial result behind.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from bench import registry, report
from bench.cache import atomic_write_text, default_cache_root
from bench.config import Config, suggest
from bench.encoders import Encoder, load_or_train
from bench.errors import BenchError, ParadigmUnavailable
from bench.features import FeatureStore, FrozenLLM
from bench.llm import load_backbone
from bench.metrics import evaluate_ranks, metrics_from_ranks
from bench.split import STAGES, Split, build_split

TOKEN_COLUMNS = ["paradigm", "user", "hard_tokens", "soft_tokens", "history_len", "history_kept"]


class Timings(dict):
    """Wall-clock seconds per named stage, filled by ``with timings("name"): ...``."""

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)


def pick_device(requested: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch sees no GPU here; use --device cpu or auto")
    return torch.device(requested)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way for the paradigm."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_run_dir(cfg: Config) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / cfg["data.dataset"] / f"{stamp}-{cfg.hash}"


def run(spec: str, cfg: Config, out: Path | None = None, progress: Callable | None = None,
        argv: list[str] | None = None) -> Path:
    """Run the paradigms named by ``spec`` under ``cfg``; return the finished run directory."""
    classes = registry.resolve(spec)
    options = {cls.name: registry.options_for(cls, cfg) for cls in classes}
    _check_paradigm_sections(cfg)
    out = Path(out) if out else default_run_dir(cfg)
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"--out {out} already exists and is not empty; choose another folder or delete it")
    device = pick_device(cfg["device"])
    cache_root = default_cache_root(cfg["cache_dir"])
    timings = Timings()
    with timings("split"):
        split = build_split(cfg, cache_root, progress)
    encoder = None
    if any(cls.needs_encoder for cls in classes):
        with timings("encoder"):
            encoder = load_or_train(split, cfg, cache_root, str(device), progress)
    llm = None
    if any(cls.needs_llm for cls in classes):
        with timings("llm_load"):
            llm = load_llm(cfg, device, cache_root, progress)
    records, tokens, paradigm_info, skipped = [], [], {}, {}
    for seed in cfg["seeds"]:
        for cls in classes:
            if cls.name in skipped:
                continue
            try:
                user_rows, token_rows, info = _run_one(cls, options[cls.name], split, encoder, llm, cfg, seed,
                                                       device, cache_root, progress, timings)
            except ParadigmUnavailable as exc:
                print(f"skipped {cls.name}: {exc}", file=sys.stderr)
                skipped[cls.name] = str(exc)
                continue
            records.append(user_rows)
            tokens.extend(token_rows)
            paradigm_info.setdefault(cls.name, {"version": cls.version, "options": options[cls.name],
                                                "description": cls.description, "seeds": {}})
            paradigm_info[cls.name]["seeds"][str(seed)] = info
    if not records:
        raise BenchError("no paradigm could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    manifest = _manifest(cfg, split, encoder, llm, device, timings, paradigm_info, argv)
    manifest["skipped"] = skipped
    return _write_run(out, cfg, pd.concat(records, ignore_index=True), tokens, manifest)


def load_llm(cfg: Config, device: torch.device, cache_root: Path, progress=None) -> FrozenLLM:
    """The frozen backbone and its feature caches; the prompt budget is capped by the context window."""
    backbone = load_backbone(cfg["llm.backbone"], device, cfg["llm.dtype"], cache_root, progress)
    cap = cfg["llm.token_budget"]
    budget = backbone.context_window if cap is None else min(cap, backbone.context_window)
    batch = cfg["llm.batch_size"]
    return FrozenLLM(backbone, FeatureStore(backbone, cache_root, budget, batch),
                     FeatureStore(backbone, cache_root, cfg["llm.item_max_tokens"], batch), budget)


def _check_paradigm_sections(cfg: Config) -> None:
    for name in cfg.get("paradigms") or {}:
        if name not in registry.names():
            raise BenchError(f"unknown config key 'paradigms.{name}'{suggest(name, registry.names())}: "
                             "no such paradigm")


def _run_one(cls: type, options: dict, split: Split, encoder: Encoder | None, llm: FrozenLLM | None, cfg: Config,
             seed: int, device: torch.device, cache_root: Path, progress, timings: Timings):
    generator = seed_everything(seed)
    context = registry.Context(config=cfg, options=options, seed=seed, device=device, cache_dir=cache_root,
                               encoder=encoder, llm=llm, progress=progress, generator=generator)
    paradigm = cls()
    tag = f"{cls.name}/seed{seed}"
    with timings(f"{tag}/fit"):
        paradigm.fit(split, context)
    frames, token_rows = [], []
    users = split.users
    for stage in STAGES:
        histories = [split.history(int(u), stage) for u in users]
        with timings(f"{tag}/score_{stage}"):
            ranks = evaluate_ranks(lambda chunk, st=stage: paradigm.score(chunk, st), users,
                                   split.target(stage)[users], histories if cfg["eval.mask_history"] else None,
                                   split.n_items, cfg["eval.chunk_mb"], progress, f"{tag} {stage}")
        frame = pd.DataFrame({"paradigm": cls.name, "seed": seed, "stage": stage,
                              "user": split.user_ids[users], "rank": ranks})
        for name, values in metrics_from_ranks(ranks, cfg["eval.metrics"], cfg["eval.ks"]).items():
            frame[name] = values
        frames.append(frame)
    if seed == cfg["seeds"][0]:
        usage = paradigm.token_usage(users, "test")
        token_rows = [(cls.name, split.user_ids[t.user], t.hard_tokens, t.soft_tokens, t.history_len,
                       t.history_kept) for t in usage or []]
    info = {"trainable_parameters": int(paradigm.trainable_parameters()),
            "fit_seconds": timings[f"{tag}/fit"], "training": getattr(paradigm, "info", None)}
    return pd.concat(frames, ignore_index=True), token_rows, info


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import recbole

    import bench

    found = {"python": platform.python_version(), "bench": bench.__version__, "torch": torch.__version__,
             "recbole": recbole.__version__, "numpy": np.__version__, "pandas": pd.__version__}
    for name in ("transformers", "scipy"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = module.__version__
    return found


def _manifest(cfg: Config, split: Split, encoder: Encoder | None, llm: FrozenLLM | None, device: torch.device,
              timings: Timings, paradigm_info: dict, argv: list[str] | None) -> dict[str, Any]:
    hardware = {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(device)
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(argv) if argv else None,
        "git_commit": _git_commit(),
        "config_hash": cfg.hash,
        "dataset": split.dataset,
        "split_hash": split.hash,
        "split_stats": dict(split.stats),
        "encoder": None if encoder is None else {"key": encoder.key, **encoder.info},
        "llm": None if llm is None else {
            "backbone": llm.backbone.name, "fingerprint": llm.backbone.fingerprint, "layers": llm.backbone.n_layers,
            "width": llm.backbone.width, "context_window": llm.backbone.context_window,
            "pooling": llm.backbone.pooling, "dtype": str(next(llm.backbone.model.parameters()).dtype),
            "token_budget": llm.token_budget, "forward_passes": llm.backbone.forward_calls},
        "seeds": list(cfg["seeds"]),
        "versions": _versions(),
        "hardware": hardware,
        "timings_seconds": dict(timings),
        "paradigms": paradigm_info,
    }


def _write_run(out: Path, cfg: Config, per_user: pd.DataFrame, tokens: list, manifest: dict) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        atomic_write_text(tmp / "config.yaml", cfg.to_yaml())
        report.write_json(tmp / "manifest.json", manifest)
        atomic_write_text(tmp / "per_user.csv", per_user.to_csv(index=False, float_format="%.10g"))
        atomic_write_text(tmp / "tokens.csv", pd.DataFrame(tokens, columns=TOKEN_COLUMNS).to_csv(index=False))
        report.build(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
