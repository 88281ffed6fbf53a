"""Are bfloat16 results the float32 results? (issue 21 item 3)

Runs ``pop,sasrec,id-direct,id-translation,ra-rec`` on ml-100k (default preset, seeds 0-2) with
``llm.dtype=float32`` into ``--f32`` (resumable; the committed ``results/ml-100k-float32``), then compares it with
the bfloat16 reference run ``--bf16`` (the committed ``results/ml-100k-default``, bfloat16 by ``llm.dtype: auto``
on this CPU). Both use the same split and the same cached ID encoder: only the backbone's dtype differs.

* frozen features: every prompt and item text both runs encoded, float32 against bfloat16 features (cosine,
  read from the two feature caches; goal >= 0.999);
* per paradigm, HR@100 and NDCG@10 means (goal: within 0.005) and ``bench compare``'s paired tests with Holm
  correction over the family (goal: none significant).

Writes ``precision_check.md`` into the float32 run directory and exits non-zero when a goal is missed.

    python scripts/precision_check.py [--f32 results/ml-100k-float32] [--bf16 results/ml-100k-default]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench.state import partial_dir

ROOT = Path(__file__).resolve().parent.parent
PARADIGMS = "pop,sasrec,id-direct,id-translation,ra-rec"
FROZEN = ("id-direct", "id-translation")


def run_f32(out: Path) -> None:
    """The float32 run: nothing to do when it exists, ``--resume`` when an interrupted one left its jobs."""
    if (out / "manifest.json").is_file():
        return
    command = [sys.executable, "-m", "bench", "run"]
    if partial_dir(out).is_dir():
        command += ["--resume", str(out)]
    else:
        command += ["--paradigms", PARADIGMS, "--dataset", "ml-100k", "--seeds", "0,1,2",
                    "--set", "llm.dtype=float32", "--out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT)


def feature_cosines(cfg) -> dict[str, tuple[int, float, float]]:
    """``{store: (texts, min cosine, mean cosine)}`` over the texts both precisions' caches hold."""
    from bench.cache import default_cache_root
    from bench.llm import load_backbone
    from bench.resources import frozen_llm

    cache = default_cache_root(cfg["cache_dir"])
    llms = {dtype: frozen_llm(load_backbone(cfg["llm.backbone"], torch.device("cpu"), dtype, cache), cfg, cache)
            for dtype in ("float32", "bfloat16")}
    out = {}
    for store in ("prompts", "items"):
        f32, bf16 = (getattr(llms[d], store)._load() for d in ("float32", "bfloat16"))
        common = sorted(set(f32) & set(bf16))
        if not common:
            continue
        cos = torch.nn.functional.cosine_similarity(torch.stack([f32[k] for k in common]),
                                                    torch.stack([bf16[k] for k in common]))
        out[store] = (len(common), float(cos.min()), float(cos.mean()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--f32", type=Path, default=ROOT / "results" / "ml-100k-float32")
    parser.add_argument("--bf16", type=Path, default=ROOT / "results" / "ml-100k-default")
    args = parser.parse_args()
    os.chdir(ROOT)  # paths in the written table are relative to the repository
    args.f32, args.bf16 = (Path(os.path.relpath(p.resolve(), ROOT)) for p in (args.f32, args.bf16))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_f32(args.f32)
    from bench import report
    from bench.rundir import Run

    f32 = Run.from_disk(args.f32)
    table, alpha = report.compare_runs(args.f32, args.bf16)
    lines = ["# float32 against bfloat16", "", f"float32: `{args.f32}`; bfloat16: `{args.bf16}` "
             f"(`python scripts/precision_check.py`)", "", "## Frozen features (cosine, float32 vs bfloat16)", "",
             "| texts | n | min | mean |", "|---|---:|---:|---:|"]
    cosines = feature_cosines(f32.config)
    lines += [f"| {store} | {n} | {low:.5f} | {mean:.5f} |" for store, (n, low, mean) in cosines.items()]
    lines += ["", "## Per paradigm (test stage, users averaged over seeds; Holm over the whole table)", "",
              report.compare_md(table, args.f32, args.bf16, alpha)]
    main_rows = table[table["metric"].isin(["hit@100", "ndcg@10"])]
    frozen_rows = main_rows[main_rows["a"].str[2:].isin(FROZEN)]
    failures = [f"{store} features: min cosine {low:.5f} < 0.999" for store, (_, low, _) in cosines.items()
                if low < 0.999]
    failures += [f"{r.a[2:]} {r.metric}: |diff| {abs(r.diff):.4f} > 0.005" for r in frozen_rows.itertuples()
                 if abs(r.diff) > 0.005]
    failures += [f"{r.a[2:]} {r.metric}: Holm p {r.p_holm:.3g} < {alpha}" for r in table.itertuples()
                 if r.p_holm < alpha and r.diff != 0]
    lines += ["", "## Verdict", ""] + ([f"- {f}" for f in failures] or ["- every goal met"])
    (args.f32 / "precision_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
