"""Command line: ``bench run|tune|list|report|compare|leaderboard|export``. Errors are one line and exit with status 2."""
from __future__ import annotations

import argparse
import functools
import signal
import sys
import warnings
from pathlib import Path

from bench.errors import BenchError

EPILOG = """examples:
  python -m bench run --paradigms all --dataset ml-100k
  python -m bench run --paradigms pop,sasrec --dataset ml-100k --preset smoke
  python -m bench run --paradigms sasrec --dataset book --set data.max_users=5000 --seeds 0,1,2
  python -m bench run --paradigms all --dataset mydata --data-dir ~/atomic   # ~/atomic/mydata/mydata.inter
  python -m bench run --paradigms ra-rec --sweep paradigms.ra-rec.train_fraction=0.05,0.1,0.25,0.5,1.0
  python -m bench run --paradigms all --dataset book --dry-run   # the work and a time estimate, then stop
  python -m bench run --resume results/ml-100k/20260101-120000-abcdef123456    # continue after Ctrl-C
  python -m bench report results/ml-100k/20260101-120000-abcdef123456
  python -m bench report results/ml-100k/20260101-120000-abcdef123456 --set report.ks=5   # adds @5, no rerun
  python -m bench report results/ml-100k/20260101-120000-abcdef123456 --html   # also report.html, one page
  python -m bench report results/long-run --partial   # an unfinished run's jobs so far -> results/long-run.interim
  python -m bench compare RUN_A RUN_B
  python -m bench leaderboard RUN_A RUN_B RUN_C --out leaderboard.html   # and leaderboard.md beside it
"""


TUNE_EPILOG = """examples:
  python -m bench tune --paradigms id-translation,ra-rec --dataset ml-100k --trials 20 --out tuning/ml-100k
  python -m bench run --paradigms all --dataset ml-100k --config tuning/ml-100k/tuned.yaml --seeds 0,1,2
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="Compare how frozen LLMs can be fed a recommender's interaction data.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run paradigms on a dataset and write a run directory",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    run.add_argument("--paradigms", metavar="LIST",
                     help="comma-separated names, globs (ra-rec*) or 'all' (default: all)")
    run.add_argument("--dataset", help="ml-100k, book, cloth, or NAME under --data-dir (config: data.dataset)")
    run.add_argument("--data-dir", help="folder holding NAME/NAME.inter (config: data.data_dir; env BENCH_DATA)")
    run.add_argument("--preset", help="configs/presets/NAME.yaml: smoke, default, paper, "
                                                         "more-samples (default: default)")
    run.add_argument("--config", metavar="FILE", help="YAML file of config keys, applied after the preset")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key (dotted), repeatable: --set data.max_users=500")
    run.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (config: seeds)")
    run.add_argument("--out", type=Path, help="run directory (default: results/DATASET/TIME-CONFIGHASH)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="config: device (default: auto)")
    run.add_argument("--llm", metavar="NAME", help="frozen backbone: minilm, smollm2-135m, a model folder or a "
                                                   "Hugging Face id (config: llm.backbone; default: minilm)")
    run.add_argument("--sweep", metavar="KEY=V1,V2,...",
                     help="run over several values of one config key into one run directory, e.g. "
                          "paradigms.ra-rec.train_fraction=0.1,0.5,1.0 (adds the data-efficiency plot)")
    run.add_argument("--resume", metavar="RUN_DIR", type=Path,
                     help="continue an interrupted run: finished (paradigm, seed) jobs are reused; takes the "
                          "interrupted run's paradigms and config, so pass no other run option")
    run.add_argument("--dry-run", action="store_true",
                     help="print what the run would compute (users, items, prompts, training samples, LLM passes) "
                          "and an estimate per stage timed on this machine, then stop")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    tune = sub.add_parser("tune", help="tune every paradigm on validation NDCG@10 with the same number of Optuna "
                                       "trials; writes tuned.yaml for bench run --config",
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TUNE_EPILOG)
    tune.add_argument("--paradigms", metavar="LIST", help="names, globs or 'all' (default: all)")
    tune.add_argument("--trials", type=int, default=20, help="trials per paradigm, the default configuration "
                                                              "first (default: 20)")
    tune.add_argument("--out", type=Path, required=True, help="folder for study.db, trials.csv, tuned.yaml, "
                                                              "tuning.png (an interrupted tune continues there)")
    for flag in ("--dataset", "--data-dir", "--preset", "--config", "--seeds", "--llm"):
        tune.add_argument(flag, help=f"as for bench run ({flag})")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="as for bench run")
    tune.add_argument("--device", choices=["auto", "cpu", "cuda"], help="as for bench run")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("list", help="paradigms (version, description, options, search space), datasets and presets")
    rep = sub.add_parser("report", help="rebuild a run's tables, significance tests and plots from its saved files")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="report with another report.* setting, repeatable, e.g. --set report.ks=5 (more K in "
                          "metrics.json) or --set 'report.metrics=[ndcg@5, hit@100]'; metrics are computed from "
                          "the saved ranks, and the run's config.yaml is left as it is")
    rep.add_argument("--partial", action="store_true",
                     help="RUN_DIR is an unfinished run (the --out of a run that was interrupted or is still going "
                          "on): write the jobs finished so far as a run directory RUN_DIR.interim beside it, marked "
                          "interim, and report that; the run itself is not touched and --resume continues it")
    rep.add_argument("--html", action="store_true",
                     help="also write RUN_DIR/report.html: one self-contained page (results tables with sortable "
                          "columns and significance superscripts, significance heatmaps, plots, validation, prompt "
                          "cost, the run's essentials; per protocol); it fetches nothing and opens offline")
    cmp = sub.add_parser("compare", help="test each paradigm of run A against the same paradigm of run B "
                                         "(both runs must share the split)")
    cmp.add_argument("run_a", type=Path)
    cmp.add_argument("run_b", type=Path)
    cmp.add_argument("--protocol", help="the evaluation protocol to compare (default: the first of run A's "
                                        "eval.protocols that run B has too); a sampled one needs the same "
                                        "candidate lists in both runs")
    cmp.add_argument("--out", type=Path, help="also write the tests as CSV (significance.csv columns)")
    board = sub.add_parser("leaderboard", help="merge runs into one table: a row per data set and paradigm, a "
                                               "column per metric and protocol (Markdown; --out adds a page)",
                           formatter_class=argparse.RawDescriptionHelpFormatter, description=LEADERBOARD_HELP)
    board.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="finished run directories")
    board.add_argument("--out", type=Path, metavar="FILE.html",
                       help="write the self-contained page here and the Markdown table beside it (FILE.md); "
                            "without it the Markdown table is only printed")
    exp = sub.add_parser("export", help="write a run's rankings as TREC run/qrels files or ranx JSON, one run file "
                                        "per paradigm, seed and stage (full ranking, from topk.npz)",
                         formatter_class=argparse.RawDescriptionHelpFormatter, description=EXPORT_HELP)
    exp.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    exp.add_argument("--format", dest="fmt", choices=["trec", "ranx"], required=True,
                     help="trec: PARADIGM.seedS.STAGE.trec and qrels.STAGE.trec; ranx: the same as ranx JSON")
    exp.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: RUN_DIR/export/FORMAT)")
    return parser


EXPORT_HELP = """Write a run's rankings for other tools (ranx, trec_eval, pyterrier): query = user id, document =
item id, one relevant document per query (the stage's held-out item). Lists are the run's stored top-K
(eval.topk) under full ranking, with the target at the rank per_user.csv gives it (ties count against it, as in
the run), so HR@K and NDCG@K from these files equal the run's own for K <= eval.topk. For example:
  python -m bench export results/ml-100k-default --format ranx
  python -c "from ranx import Qrels, Run, evaluate; print(evaluate(Qrels.from_file('.../qrels.test.json'),
             Run.from_file('.../sasrec.seed0.test.json'), ['hit_rate@10', 'ndcg@10']))"
"""


LEADERBOARD_HELP = """Merge finished runs into one leaderboard: a row per data set, paradigm and run, a column
per report metric under each protocol (test stage; mean over users, then mean ± std over seeds, computed from
the saved ranks; the best value per data set in bold), then the beyond-accuracy metrics of runs that stored
top-K lists. The Markdown table is printed; --out also writes the page.

Runs are put side by side only when their numbers measure the same thing, else a one-line error names the two
runs and what differs:
  - runs of the same data set must share the split (split hash) and history masking, as for bench compare, and
    the candidate lists of every sampled protocol: one data set, one set of users and targets;
  - runs of different data sets are different rows (their split hashes differ by nature), but must rank the same
    way (history masking);
  - runs may report different protocols (eval.protocols): the columns are every run's protocols, and a run's
    cells under a protocol it lacks stay empty (likelihood paradigms, for one, run apart from full ranking).
"""


def _overrides(args: argparse.Namespace) -> list:
    layer: list = list(args.overrides)
    if args.dataset:
        layer.append({"data": {"dataset": args.dataset}})
    if args.data_dir:
        layer.append({"data": {"data_dir": args.data_dir}})
    if args.device:
        layer.append({"device": args.device})
    if args.llm:
        layer.append({"llm": {"backbone": args.llm}})
    if args.seeds:
        try:
            layer.append({"seeds": [int(s) for s in args.seeds.split(",") if s.strip()]})
        except ValueError:
            raise BenchError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    return layer


def _progress(quiet: bool):
    from tqdm import tqdm

    if quiet:  # transformers draws its own "Loading weights" bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return None if quiet else functools.partial(tqdm, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)


RUN_OPTIONS = ("paradigms", "dataset", "data_dir", "preset", "config", "overrides", "seeds", "out", "device", "llm",
               "dry_run", "sweep")


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import load_config

    argv = args.argv
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in RUN_OPTIONS if getattr(args, name)]
        if given:
            raise BenchError(f"--resume takes the interrupted run's paradigms and config; drop {', '.join(given)}")
        from bench.runner import resume
        out = resume(args.resume, _progress(args.quiet), argv)
    else:
        cfg = load_config(args.preset or "default", args.config, _overrides(args))
        from bench.runner import dry_run, run  # after the config: a config error needs no torch import (seconds)
        if args.dry_run:
            print(dry_run(args.paradigms or "all", cfg, _progress(args.quiet), sweep=args.sweep))
            return 0
        out = run(args.paradigms or "all", cfg, args.out, _progress(args.quiet), argv=argv, sweep=args.sweep)
    if out is None:  # a rank other than 0 of a distributed run: rank 0 reports
        return 0
    print((out / "results.md").read_text())
    print(f"run directory: {out}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from bench.config import load_config
    from bench.tune import tune

    cfg = load_config(args.preset or "default", args.config, _overrides(args))
    out = tune(args.paradigms or "all", cfg, args.trials, args.out, _progress(args.quiet))
    print((out / "trials.csv").read_text())
    print(f"tuned config: {out / 'tuned.yaml'}  (bench run ... --config {out / 'tuned.yaml'})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from bench import registry
    from bench.config import presets
    from bench.data import DATASETS

    print("paradigms:")
    for name in registry.names():
        cls = registry.get(name)
        options = ", ".join(f"{k}={v!r}" for k, v in cls.defaults.items())
        tag = "" if cls.in_all else " (not in 'all')"
        print(f"  {name:<18} v{cls.version:<4} {cls.description}{tag}")
        if options:
            print(f"  {'':<24}options: {options}")
        if cls.search_space:
            space = ", ".join(f"{k} {_space_text(v)}" for k, v in cls.search_space.items())
            print(f"  {'':<24}tuned over: {space}")
    print("datasets:\n  " + ", ".join(DATASETS.names()) + ", or NAME with --data-dir DIR holding NAME/NAME.inter")
    print("presets:\n  " + ", ".join(presets()))
    return 0


def _space_text(spec: tuple) -> str:
    if spec[0] == "choice":
        return "in {" + ", ".join(map(str, spec[1])) + "}"
    return f"in [{spec[1]:g}, {spec[2]:g}]" + (" (log)" if spec[3:] else "")


def cmd_report(args: argparse.Namespace) -> int:
    from bench import report

    run_dir = args.run_dir
    if args.partial:
        from bench import runner

        run_dir = runner.interim(run_dir, _progress(True))
    built = report.build(run_dir, args.overrides)
    print((run_dir / "results.md").read_text())
    if args.html:
        from bench import html

        print(f"report page: {html.write_page(*built)}")  # the tables and tests just computed, not again
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench import report

    table, alpha = report.compare_runs(args.run_a, args.run_b, args.protocol)
    if args.out:
        from bench.cache import atomic_write_text

        atomic_write_text(args.out, report.significance_csv(table))
    print(report.compare_md(table, args.run_a, args.run_b, alpha))
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench import leaderboard

    print(leaderboard.build(args.run_dirs, args.out), end="")
    if args.out:
        print(f"leaderboard page: {args.out}  (Markdown: {args.out.with_suffix('.md')})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench import export

    written = export.export(args.run_dir, args.fmt, args.out)
    print(f"wrote {len(written)} files to {written[0].parent}")
    return 0


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def _one_line_warnings(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bench`` and ``python -m bench``; returns the exit status."""
    args = _parser().parse_args(argv)
    args.argv = ["bench", *(sys.argv[1:] if argv is None else argv)]  # recorded in the run's manifest
    warnings.formatwarning = _one_line_warnings
    handlers = {"run": cmd_run, "tune": cmd_tune, "list": cmd_list, "report": cmd_report, "compare": cmd_compare,
                "leaderboard": cmd_leaderboard, "export": cmd_export}
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    try:
        return handlers[args.command](args)
    except BenchError as exc:
        print(f"error: {_rank_tag()}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"{_rank_tag()}{str(exc) or 'interrupted: no results were written'}", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _rank_tag():
            raise
        # A distributed run: one line per rank, so the failing rank and its reason stand out in the launcher's log.
        first = (str(exc).strip().splitlines() or [""])[0]
        if "by peer" in first:  # gloo/NCCL: the connection to a rank that already failed was lost
            first = f"another rank failed first (see its line); lost connection: {first[-80:]}"
        print(f"error: {_rank_tag()}failed: {type(exc).__name__}: {first[:300]}", file=sys.stderr)
        return 1
    finally:
        if "bench.distributed" in sys.modules:  # else no process group was ever started
            sys.modules["bench.distributed"].shutdown()


def _rank_tag() -> str:
    """``"rank R of N: "`` in a distributed run, else ``""``."""
    if "bench.distributed" not in sys.modules:  # a run imports it before it can join a process group
        return ""
    current = sys.modules["bench.distributed"].world()
    return f"rank {current.rank} of {current.size}: " if current.distributed else ""


if __name__ == "__main__":
    sys.exit(main())
