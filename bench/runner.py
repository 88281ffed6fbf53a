"""One run: config -> split -> encoder -> (paradigm.fit -> score -> ranks) per seed -> run directory.

The run directory is assembled in a hidden working folder next to its destination (``bench.state``) and
renamed into place only when everything succeeded, so an error or Ctrl-C never leaves a partial result
behind; the finished (paradigm, seed) jobs kept in that folder let ``--resume`` continue the run.
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

from bench import plan, registry, report
from bench.cache import default_cache_root
from bench.config import Config, suggest
from bench.encoders import Encoder, load_or_train
from bench.errors import BenchError, ParadigmUnavailable, RunInterrupted
from bench.features import FeatureStore, FrozenLLM
from bench.llm import load_backbone
from bench.metrics import evaluate_ranks, metrics_from_ranks
from bench.rundir import Manifest, Run
from bench.split import STAGES, build_split
from bench.state import RunState

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
        argv: list[str] | None = None, sweep: str | None = None) -> Path:
    """Run the paradigms named by ``spec`` under ``cfg`` (optionally over a ``--sweep``); return the finished
    run directory. Finished (arm, seed) jobs are kept in a hidden folder, so an interrupted run can be
    continued with :func:`resume`."""
    out = Path(out) if out else default_run_dir(cfg)
    _check_paradigm_sections(cfg)
    parsed = plan.parse_sweep(sweep)
    run_arms = plan.arms(spec, cfg, parsed)
    state = RunState(out)
    state.start(cfg, {"spec": spec, "sweep": sweep, "argv": argv})
    return _guarded(state, lambda: _execute(state, cfg, run_arms, parsed, progress, argv))


def resume(out: Path, progress: Callable | None = None, argv: list[str] | None = None) -> Path:
    """Continue the interrupted run to ``out``: saved jobs are reused, the others are computed."""
    state = RunState(out)
    cfg, saved = state.resume()
    sweep = plan.parse_sweep(saved.get("sweep"))
    run_arms = plan.arms(saved["spec"], cfg, sweep)
    return _guarded(state, lambda: _execute(state, cfg, run_arms, sweep, progress, saved.get("argv") or argv,
                                            resumed_by=argv))


def _guarded(state: RunState, body: Callable[[], Path]) -> Path:
    """Run ``body``; on failure keep the working folder only if it holds finished jobs worth resuming."""
    try:
        return body()
    except BaseException as exc:
        finished = state.finished_jobs()
        if not finished:
            state.discard()
        if isinstance(exc, KeyboardInterrupt):
            kept = (f"{finished} finished (paradigm, seed) jobs are kept; continue with: python -m bench run "
                    f"--resume {state.out}") if finished else "nothing was kept"
            raise RunInterrupted(f"interrupted: no results were written; {kept}") from None
        raise


class _Shared:
    """The split, encoder and backbones of a run, loaded once and on demand."""

    def __init__(self, cfg: Config, device: torch.device, progress, timings: "Timings"):
        self.cfg, self.device, self.progress, self.timings = cfg, device, progress, timings
        self.cache_root = default_cache_root(cfg["cache_dir"])
        self.encoder: Encoder | None = None
        self.llms: dict[str, FrozenLLM] = {}
        with timings("split"):
            self.split = build_split(cfg, self.cache_root, progress)

    def prepare(self, run_arms: list) -> None:
        if any(a.cls.needs_encoder for a in run_arms) and self.encoder is None:
            with self.timings("encoder"):
                self.encoder = load_or_train(self.split, self.cfg, self.cache_root, str(self.device), self.progress)
        for arm in run_arms:
            if arm.cls.needs_llm:
                self.llm_for(arm.config)

    def llm_for(self, cfg: Config) -> FrozenLLM:
        key = cfg.section_hash("llm")
        if key not in self.llms:
            with self.timings("llm_load"):
                self.llms[key] = load_llm(cfg, self.device, self.cache_root, self.progress)
        return self.llms[key]


def _execute(state: RunState, cfg: Config, run_arms: list, sweep, progress, argv, resumed_by=None) -> Path:
    """Compute (or reuse) every (arm, seed) job, then write the run directory."""
    device = pick_device(cfg["device"])
    timings = Timings()
    shared = _Shared(cfg, device, progress, timings)
    shared.prepare(run_arms)
    frames, tokens, paradigm_info, skipped, reused = [], [], {}, {}, []
    jobs = [(arm, seed) for seed in cfg["seeds"] for arm in run_arms]
    for index, (arm, seed) in enumerate(jobs):
        if arm.label in skipped:
            continue
        saved = state.load(index, arm.label, seed, arm.cls.version)
        if saved is not None:
            reused.append(f"{arm.label}/seed{seed}")
        else:
            try:
                saved = _run_job(arm, seed, shared, timings)
            except ParadigmUnavailable as exc:
                print(f"skipped {arm.label}: {exc}", file=sys.stderr)
                skipped[arm.label] = str(exc)
                continue
            state.save(index, *saved)
        frames.append(saved[0])
        tokens.extend(tuple(row) for row in saved[1]["tokens"])
        _record_info(paradigm_info, arm, seed, saved[1]["info"])
    if not frames:
        raise BenchError("no paradigm could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    manifest = _manifest(cfg, shared, device, timings, paradigm_info, argv,
                         skipped=skipped, sweep=plan.sweep_record(sweep, run_arms), resumed_jobs=reused,
                         resumed_by=" ".join(resumed_by) if resumed_by else None)
    return _write_run(state, pd.concat(frames, ignore_index=True), tokens, manifest)


def _record_info(paradigm_info: dict, arm, seed: int, info: dict) -> None:
    entry = paradigm_info.setdefault(arm.label, {
        "paradigm": arm.cls.name, "version": arm.cls.version, "options": arm.options,
        "description": arm.cls.description, "sweep_value": arm.sweep_value, "seeds": {}})
    entry["seeds"][str(seed)] = info


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


def _run_job(arm, seed: int, shared: _Shared, timings: Timings) -> tuple[pd.DataFrame, dict]:
    """Fit one arm with one seed and evaluate it on every stage: (per-user rows, job record)."""
    cfg, split = arm.config, shared.split
    generator = seed_everything(seed)
    context = registry.Context(config=cfg, options=arm.options, seed=seed, device=shared.device,
                               cache_dir=shared.cache_root, encoder=shared.encoder,
                               llm=shared.llm_for(cfg) if arm.cls.needs_llm else None, progress=shared.progress,
                               generator=generator)
    paradigm = arm.cls()
    tag = f"{arm.label}/seed{seed}"
    with timings(f"{tag}/fit"):
        paradigm.fit(split, context)
    frames, users = [], split.users
    for stage in STAGES:
        histories = [split.history(int(u), stage) for u in users]
        with timings(f"{tag}/score_{stage}"):
            ranks = evaluate_ranks(lambda chunk, st=stage: paradigm.score(chunk, st), users,
                                   split.target(stage)[users], histories if cfg["eval.mask_history"] else None,
                                   split.n_items, cfg["eval.chunk_mb"], shared.progress, f"{tag} {stage}")
        frame = pd.DataFrame({"paradigm": arm.label, "seed": seed, "stage": stage,
                              "user": split.user_ids[users], "rank": ranks})
        for name, values in metrics_from_ranks(ranks, cfg["eval.metrics"], cfg["eval.ks"]).items():
            frame[name] = values
        frames.append(frame)
    token_rows = []
    if seed == cfg["seeds"][0]:
        token_rows = [(arm.label, str(split.user_ids[t.user]), t.hard_tokens, t.soft_tokens, t.history_len,
                       t.history_kept) for t in paradigm.token_usage(users, "test") or []]
    info = {"trainable_parameters": int(paradigm.trainable_parameters()), "fit_seconds": timings[f"{tag}/fit"],
            "score_seconds": round(sum(timings[f"{tag}/score_{st}"] for st in STAGES), 3),
            "training": getattr(paradigm, "info", None)}
    record = {"label": arm.label, "seed": seed, "version": arm.cls.version, "tokens": token_rows, "info": info}
    return pd.concat(frames, ignore_index=True), record


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


def _manifest(cfg: Config, shared: _Shared, device: torch.device, timings: Timings, paradigm_info: dict,
              argv: list[str] | None, **outcome: Any) -> Manifest:
    split, encoder = shared.split, shared.encoder
    llm = next(iter(shared.llms.values()), None)
    hardware = {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(device)
    return Manifest(
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join(argv) if argv else None,
        git_commit=_git_commit(),
        config_hash=cfg.hash,
        dataset=split.dataset,
        split_hash=split.hash,
        split_stats=dict(split.stats),
        encoder=None if encoder is None else {"key": encoder.key, **encoder.info},
        llm=None if llm is None else {
            "backbone": llm.backbone.name, "fingerprint": llm.backbone.fingerprint, "layers": llm.backbone.n_layers,
            "width": llm.backbone.width, "context_window": llm.backbone.context_window,
            "pooling": llm.backbone.pooling, "dtype": str(next(llm.backbone.model.parameters()).dtype),
            "token_budget": llm.token_budget, "forward_passes": llm.backbone.forward_calls},
        seeds=list(cfg["seeds"]),
        versions=_versions(),
        hardware=hardware,
        timings_seconds=dict(timings),
        paradigms=paradigm_info,
        **outcome,
    )


def _write_run(state: RunState, per_user: pd.DataFrame, tokens: list, manifest: Manifest) -> Path:
    """Write the final files into the working folder, build the tables, and rename it to the run directory."""
    tmp, out = state.dir, state.out  # config.yaml is already there (RunState.start)
    Run.write(tmp, per_user, tokens, manifest)
    report.build(tmp)
    shutil.rmtree(tmp / "jobs")
    (tmp / "plan.json").unlink()
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
