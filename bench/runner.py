"""One run: config -> split -> encoder -> (paradigm.fit -> score -> ranks) per seed -> run directory.

The run directory is assembled in a hidden working folder next to its destination (``bench.state``) and
renamed into place only when everything succeeded, so an error or Ctrl-C never leaves a partial result
behind; the finished (paradigm, seed) jobs kept in that folder let ``--resume`` continue the run.

Under a launcher every process runs this same code (``bench.distributed``): rank 0 alone owns the working
folder and the run directory; every rank computes its share of each job, whose per-user rows are gathered on
rank 0. The other ranks return ``None``.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from bench import beyond, distributed, estimate, metrics, plan, registry, report
from bench.cache import atomic_folder
from bench.config import Config, suggest
from bench.contract import lacks_decoder
from bench.errors import BenchError, ParadigmUnavailable, RunInterrupted
from bench.evaluation import run_job
from bench.precision import cpu_description
from bench.protocols import save_candidates
from bench.resources import Resources, Timings, pick_device
from bench.rundir import Manifest, Run, TopLists
from bench.split import STAGES
from bench.state import RunState

def default_run_dir(cfg: Config) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / cfg["data.dataset"] / f"{stamp}-{cfg.hash}"


def run(spec: str, cfg: Config, out: Path | None = None, progress: Callable | None = None,
        argv: list[str] | None = None, sweep: str | None = None) -> Path | None:
    """Run the paradigms named by ``spec`` under ``cfg`` (optionally over a ``--sweep``); return the finished
    run directory (``None`` on ranks other than 0). Finished (arm, seed) jobs are kept in a hidden folder, so
    an interrupted run can be continued with :func:`resume`."""
    world = distributed.init(cfg["device"])
    progress = progress if world.is_main else None
    out = Path(out) if out else Path(world.broadcast(str(default_run_dir(cfg))))
    _check_config(cfg)
    parsed = plan.parse_sweep(sweep)
    run_arms = plan.arms(spec, cfg, parsed)
    state = RunState(out)
    world.on_main(lambda: state.start(cfg, {"spec": spec, "sweep": sweep, "argv": argv}))
    return _guarded(state, lambda: _execute(state, cfg, run_arms, parsed, progress, argv))


def dry_run(spec: str, cfg: Config, progress: Callable | None = None, sweep: str | None = None) -> str:
    """What ``run`` would compute and an estimate of how long it takes here: the plan line. Builds (or reads)
    the split and loads the backbones; trains nothing, writes no run directory."""
    world = distributed.init(cfg["device"])
    _check_config(cfg)
    run_arms = plan.arms(spec, cfg, plan.parse_sweep(sweep))
    shared = Resources(cfg, pick_device(cfg["device"], world), progress if world.is_main else None, Timings())
    return _plan_line(shared, run_arms, cfg)


def _plan_line(shared: Resources, run_arms: list, cfg: Config, to_go: dict[str, int] | None = None) -> str:
    found = estimate.estimate(run_arms, len(cfg["seeds"]), shared.split, shared.llms(run_arms),
                              shared.encoder_cached(run_arms), shared.device, distributed.world().size, to_go)
    return found.line()


def _to_go(state: RunState, jobs: list) -> dict[str, int]:
    """Per arm label, how many of its (arm, seed) jobs have no saved result yet."""
    done = state.finished_indices()
    to_go = {arm.label: 0 for arm, _ in jobs}
    for index, (arm, _) in enumerate(jobs):
        to_go[arm.label] += index not in done
    return to_go


def resume(out: Path, progress: Callable | None = None, argv: list[str] | None = None) -> Path | None:
    """Continue the interrupted run to ``out``: saved jobs are reused, the others are computed."""
    state = RunState(out)
    cfg, saved = state.resume()
    progress = progress if distributed.init(cfg["device"]).is_main else None
    sweep = plan.parse_sweep(saved.get("sweep"))
    run_arms = plan.arms(saved["spec"], cfg, sweep)
    if distributed.world().is_main:
        print(f"resuming {out}: {state.finished_jobs()} of {len(run_arms) * len(cfg['seeds'])} (paradigm, seed) "
              "jobs already finished", file=sys.stderr)
    return _guarded(state, lambda: _execute(state, cfg, run_arms, sweep, progress, saved.get("argv") or argv,
                                            resumed_by=argv))


def interim(out: Path, progress: Callable | None = None) -> Path:
    """Write the jobs of the unfinished run to ``out`` that are saved so far as a run directory
    ``OUT.interim`` beside it (replaced on each call; its manifest's ``partial`` names the missing jobs), and
    return it; :func:`bench.report.build` makes its tables. Nothing is computed and the working folder is left
    as it is, so this works while the run goes on, and ``--resume`` continues the run afterwards."""
    state = RunState(out)
    cfg, saved = state.saved_plan()
    sweep = plan.parse_sweep(saved.get("sweep"))
    run_arms = plan.arms(saved["spec"], cfg, sweep)
    return _execute(state, cfg, run_arms, sweep, progress, saved.get("argv"),
                    interim_to=state.out.parent / f"{state.out.name}.interim")


def _guarded(state: RunState, body: Callable[[], Path]) -> Path:
    """Run ``body``; on failure keep the working folder only if it holds finished jobs or a training checkpoint
    worth resuming."""
    try:
        return body()
    except BaseException as exc:
        if not distributed.world().is_main:
            raise
        finished, training = state.finished_jobs(), state.checkpoints()
        if not finished and not training:
            state.discard()
        if isinstance(exc, KeyboardInterrupt):
            worth = [f"{finished} finished (paradigm, seed) jobs"] if finished else []
            if training:
                worth.append("the training of an unfinished job as of its last epoch")
            kept = (f"{' and '.join(worth)} are kept; continue with: python -m bench run --resume {state.out}"
                    if worth else "nothing was kept")
            raise RunInterrupted(f"interrupted: no results were written; {kept}") from None
        raise


def _unavailable(arm, shared: Resources) -> str | None:
    """Why ``arm`` cannot run with this run's backbone (a decoder-only paradigm on an encoder), or None."""
    if not getattr(arm.cls, "needs_decoder", False):
        return None
    backbone = shared.llm_for(arm.config).backbone
    if not lacks_decoder(arm.cls, backbone):
        return None
    return (f"backbone '{backbone.name}' is an encoder and {arm.label} scores by a decoder's likelihood; "
            "run it with --llm smollm2-135m")


def _execute(state: RunState, cfg: Config, run_arms: list, sweep, progress, argv, resumed_by=None,
             interim_to: Path | None = None) -> Path:
    """Compute (or reuse) every (arm, seed) job, then write the run directory (rank 0). With ``interim_to``
    nothing is computed: the saved jobs are written there as a run directory (:func:`interim`)."""
    world = distributed.world()
    device = pick_device(cfg["device"], world) if interim_to is None else torch.device("cpu")
    timings = Timings()
    shared = Resources(cfg, device, progress, timings, keep_encoder=state.dir)
    jobs = [(arm, seed) for seed in cfg["seeds"] for arm in run_arms]
    if interim_to is None:
        if world.is_main:
            state.check_inputs({"split": shared.split.hash, "candidate lists": shared.candidate_hashes})
        line = _plan_line(shared, run_arms, cfg, _to_go(state, jobs) if world.is_main else None)
        if world.is_main:
            print(line, file=sys.stderr)
    shared.prepare(run_arms, train=interim_to is None)
    frames, tokens, paradigm_info, skipped, reused, lists, missing = [], [], {}, {}, [], {}, []
    for index, (arm, seed) in enumerate(jobs):
        if arm.label in skipped:
            continue
        reason = _unavailable(arm, shared)
        if reason:
            if world.is_main:
                print(f"skipped {arm.label}: {reason}", file=sys.stderr)
            skipped[arm.label] = reason
            continue
        job = state.load(index, arm.label, seed, arm.cls.version) if world.is_main else None
        if world.broadcast(job is not None):
            reused.append(f"{arm.label}/seed{seed}")
        elif interim_to is not None:
            missing.append(f"{arm.label}/seed{seed}")
            continue
        else:
            try:
                job = run_job(arm, seed, shared, timings, state.checkpoint(index, arm.cls.version))
            except ParadigmUnavailable as exc:
                if world.is_main:
                    print(f"skipped {arm.label}: {exc}", file=sys.stderr)
                skipped[arm.label] = str(exc)
                continue
            if world.is_main:
                state.save(index, job)
        if not world.is_main:
            continue
        frames.append(job.rows)
        tokens.extend(job.tokens)
        lists.update({(arm.label, seed, stage): items for stage, items in job.top_items.items()})
        _record_info(paradigm_info, arm, seed, job.info,
                     _llm_record(shared.llm_for(arm.config)) if arm.cls.needs_llm else None)

    def finish() -> Path:
        if not frames and interim_to is not None:
            raise BenchError(f"{state.dir}: no job has finished yet; nothing to report")
        if not frames:
            raise BenchError("no paradigm could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        partial = None if interim_to is None else {"finished": len(reused), "jobs": len(jobs), "missing": missing}
        manifest = _manifest(cfg, shared, device, timings, paradigm_info, argv,
                             skipped=skipped, sweep=plan.sweep_record(sweep, run_arms),
                             resumed_jobs=reused if interim_to is None else [],
                             resumed_by=" ".join(resumed_by) if resumed_by else None, partial=partial)
        files = (pd.concat(frames, ignore_index=True), tokens, manifest, shared, lists)
        return _write_run(state, *files) if interim_to is None else _write_interim(state, interim_to, *files)

    # The other ranks wait for rank 0's writing, so every process leaves the process group at the same point
    # (a gloo rank that tore its group down while a peer was still busy could abort at exit).
    out = world.on_main(finish)
    return out if world.is_main else None


def _record_info(paradigm_info: dict, arm, seed: int, info: dict, llm: dict | None) -> None:
    entry = paradigm_info.setdefault(arm.label, {
        "paradigm": arm.cls.name, "version": arm.cls.version, "options": arm.options,
        "description": arm.cls.description, "sweep_value": arm.sweep_value, "llm": llm, "seeds": {}})
    entry["seeds"][str(seed)] = info


def _check_config(cfg: Config) -> None:
    """One-line errors, before anything runs, for config the registries can check: paradigm sections, metric
    names, beyond-accuracy metrics and their K."""
    _check_paradigm_sections(cfg)
    metrics.check_config(cfg)
    beyond.check_config(cfg)


def _check_paradigm_sections(cfg: Config) -> None:
    for name in cfg.get("paradigms") or {}:
        if name not in registry.names():
            raise BenchError(f"unknown config key 'paradigms.{name}'{suggest(name, registry.names())}: "
                             "no such paradigm")


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


def _manifest(cfg: Config, shared: Resources, device: torch.device, timings: Timings, paradigm_info: dict,
              argv: list[str] | None, **outcome: Any) -> Manifest:
    split, encoder = shared.split, shared.encoder
    first = next((entry["llm"] for entry in paradigm_info.values() if entry["llm"]), None)
    hardware = {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "device": str(device),
                "processes": distributed.world().size, **cpu_description()}
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
        llm=None if first is None else {**first, "forward_passes": sum(
            b.forward_calls for b in shared.backbones.values())},
        seeds=list(cfg["seeds"]),
        versions=_versions(),
        hardware=hardware,
        timings_seconds=dict(timings),
        paradigms=paradigm_info,
        protocols=_protocols_record(shared, cfg),
        **outcome,
    )


def _protocols_record(shared: Resources, cfg: Config) -> dict:
    """What the manifest records about each sampled protocol: how its lists were drawn and their hash."""
    return {p.name: {"sampling": p.sampling, "negatives": p.negatives, "seed": cfg["eval.candidate_seed"],
                     "hash": shared.candidate_hashes[p.name]} for p in shared.protocols if not p.is_full}


def _llm_record(llm) -> dict:
    """What the manifest records about the frozen LLM an arm used."""
    backbone = llm.backbone
    return {"backbone": backbone.name, "fingerprint": backbone.fingerprint, "layers": backbone.n_layers,
            "width": backbone.width, "context_window": backbone.context_window, "pooling": backbone.pooling,
            "dtype": str(backbone.dtype), "dtype_reason": backbone.precision.reason,
            "token_budget": llm.token_budget}


def _fill(folder: Path, per_user: pd.DataFrame, tokens: list, manifest: Manifest, shared: Resources,
          lists: dict, tables: bool = True) -> None:
    """Write a run directory's files into ``folder`` (which holds its ``config.yaml``) and build its tables."""
    split = shared.split
    Run.write(folder, per_user, tokens, manifest,
              TopLists(split.user_ids[split.users], split.item_ids, split.popularity,
                       {stage: split.target(stage)[split.users] for stage in STAGES}, lists) if lists else None)
    if shared.candidates:
        save_candidates(folder / "candidates.npz", shared.split, shared.candidates)
    if tables:
        report.build(folder)


def _write_interim(state: RunState, dest: Path, *files) -> Path:
    """The run directory of the saved jobs, built beside ``dest`` and renamed over it; the working folder is
    only read."""
    with atomic_folder(dest) as tmp:
        shutil.copy2(state.dir / "config.yaml", tmp / "config.yaml")
        _fill(tmp, *files, tables=False)
    return dest


def _write_run(state: RunState, per_user: pd.DataFrame, tokens: list, manifest: Manifest,
               shared: Resources, lists: dict) -> Path:
    """Write the final files into the working folder, build the tables, and rename it to the run directory."""
    tmp, out = state.dir, state.out  # config.yaml is already there (RunState.start)
    _fill(tmp, per_user, tokens, manifest, shared, lists)
    shutil.rmtree(tmp / "jobs")
    shutil.rmtree(tmp / "encoders", ignore_errors=True)  # the manifest names it; the cache keeps it
    (tmp / "plan.json").unlink()
    (tmp / "inputs.json").unlink(missing_ok=True)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
