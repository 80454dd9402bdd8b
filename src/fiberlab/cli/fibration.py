"""``fiberlab collapse | ablate | continue | scratch | fibers | compare | pipeline``: parse, call fiberlab.fibration.workflow, print JSON."""
from __future__ import annotations

import argparse
import json
import sys


def _fail(msg: str) -> int:
    print(f"fiberlab: error: {msg}", file=sys.stderr)
    return 2


def _thresholds(args: argparse.Namespace):
    from fiberlab.fibration.workflow import parse_thresholds

    return parse_thresholds(args.threshold, args.linear_thr, args.cnn_thr, args.lstm_thr, args.critic_thr)


def _run(fn, args: argparse.Namespace) -> int:
    from fiberlab.checkpoint import CheckpointError
    from fiberlab.config import ConfigError

    try:
        result = fn(args)
    except (ValueError, ConfigError, CheckpointError) as e:
        return _fail(str(e).splitlines()[0])
    for row in result if isinstance(result, list) else [result]:
        print(json.dumps({k: row.get(k) for k in ("run", "kind", "source_run", "source_epoch", "source_agent_step", "node_fraction", "param_fraction", "return_original", "return_collapsed", "draw")}))
    return 0


def cmd_collapse(args: argparse.Namespace) -> int:
    from fiberlab.fibration.workflow import collapse_run

    return _run(lambda a: collapse_run(a.train_dir, a.run, _thresholds(a), a.epoch, a.overrides, eval_episodes=a.eval_episodes), args)


def cmd_ablate(args: argparse.Namespace) -> int:
    from fiberlab.fibration.workflow import ablate_run

    if args.draws < 1:
        return _fail(f"bad value {args.draws} for --draws: a positive integer is allowed")
    return _run(lambda a: ablate_run(a.train_dir, a.run, _thresholds(a), a.epoch, a.overrides, draws=a.draws, eval_episodes=a.eval_episodes), args)


def cmd_continue(args: argparse.Namespace) -> int:
    from fiberlab.fibration.workflow import continue_run

    return _run(lambda a: continue_run(a.train_dir, a.run, a.epoch, a.overrides, eval_episodes=a.eval_episodes), args)


def cmd_scratch(args: argparse.Namespace) -> int:
    from fiberlab.fibration.workflow import scratch_run

    return _run(lambda a: scratch_run(a.train_dir, a.like, a.overrides), args)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from fiberlab.checkpoint import CheckpointError
    from fiberlab.config import ConfigError
    from fiberlab.experiments.fibration_pipeline import run_pipeline

    if args.name != "fibration":
        return _fail(f"unknown pipeline {args.name!r}: allowed is fibration")
    if args.seeds < 1:
        return _fail(f"bad value {args.seeds} for --seeds: a positive integer is allowed")
    if args.jobs < 1:
        return _fail(f"bad value {args.jobs} for --jobs: a positive integer is allowed")
    if not 0.0 < args.retrain_fraction <= 10.0:
        return _fail(f"bad value {args.retrain_fraction} for --retrain-fraction: (0, 10] is allowed")
    try:
        thr = _thresholds(args)
        res = run_pipeline(args.recipe, args.overrides, thr, seeds=args.seeds, retrain_fraction=args.retrain_fraction, eval_episodes=args.eval_episodes, workers=args.jobs)
    except (ValueError, ConfigError, CheckpointError) as e:
        return _fail(str(e).splitlines()[0])
    for stage, runs in res.runs.items():
        print(f"{stage:<10} {', '.join(runs)}")
    if res.skipped:
        print(f"skipped (already finished): {', '.join(res.skipped)}")
    print(f"figure:    {res.figure}")
    print(f"table:     {res.figure.with_suffix('.md')}")
    return 0


def cmd_fibers(args: argparse.Namespace) -> int:
    from fiberlab.experiments.fibers_over_time import write_fibers_over_time

    try:
        thr = _thresholds(args)
        csv, png = write_fibers_over_time(f"{args.train_dir}/{args.run}", thr)
    except ValueError as e:
        return _fail(str(e).splitlines()[0])
    print(f"csv: {csv}\npng: {png}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fiberlab.experiments.compare import compare_runs

    try:
        png, csv, md = compare_runs([f"{args.train_dir}/{r}" if "/" not in r else r for r in args.runs], args.out)
    except ValueError as e:
        return _fail(str(e).splitlines()[0])
    print(f"png: {png}\ncsv: {csv}\nmd:  {md}")
    return 0


def _thr_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, help="one threshold for every layer type, in [0, 2]")
    for kind, default in (("linear", 0.7), ("cnn", 0.5), ("lstm", 1.0), ("critic", 0.8)):
        p.add_argument(f"--{kind}-thr", type=float, help=f"{kind} layers' threshold in [0, 2] (default {default})")


def _source_args(p: argparse.ArgumentParser, thresholds: bool = True) -> None:
    p.add_argument("--run", required=True, help="the source run (EXP)")
    p.add_argument("--epoch", type=int, help="checkpoint epoch (closest one; ties: the earlier; default: latest)")
    if thresholds:
        _thr_args(p)
    p.add_argument("--train-dir", default="./train_dir")
    p.add_argument("--eval-episodes", type=int, default=32, help="episodes for the zero-shot returns (0: skip)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the new run (trainer.total_timesteps = steps to train)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collapse", help="collapse a run's checkpoint by fibration and retrain it in a new run")
    _source_args(p)
    p.set_defaults(func=cmd_collapse)
    p = sub.add_parser("ablate", help="random ablation to the collapsed widths (original weights kept), retrained")
    _source_args(p)
    p.add_argument("--draws", type=int, default=1, help="random subsets (one run each)")
    p.set_defaults(func=cmd_ablate)
    p = sub.add_parser("continue", help="train the original on from a checkpoint in a new run (the control curve)")
    _source_args(p, thresholds=False)
    p.set_defaults(func=cmd_continue)
    p = sub.add_parser("scratch", help="train a fresh policy with a collapsed run's widths")
    p.add_argument("--like", required=True, help="the collapsed run")
    p.add_argument("--train-dir", default="./train_dir")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_scratch)
    p = sub.add_parser("fibers", help="fiber counts per layer at every checkpoint of a run (CSV and PNG)")
    p.add_argument("--run", required=True)
    p.add_argument("--train-dir", default="./train_dir")
    _thr_args(p)
    p.set_defaults(func=cmd_fibers)
    p = sub.add_parser("compare", help="return against agent steps of several runs: PNG, CSV and markdown table")
    p.add_argument("runs", nargs="+", help="run names (under --train-dir) or run folders")
    p.add_argument("--out", required=True, help="FILE.png")
    p.add_argument("--train-dir", default="./train_dir")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("pipeline", help="fiberlab pipeline fibration RECIPE: baseline, original continued, collapse, ablation, scratch, compare (resumable)")
    p.add_argument("name", help="fibration")
    p.add_argument("recipe")
    _thr_args(p)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--retrain-fraction", type=float, default=0.5, help="steps of each retraining as a fraction of the baseline's")
    p.add_argument("--eval-episodes", type=int, default=32)
    p.add_argument("--jobs", type=int, default=2, help="independent runs trained at once, each in its own process (default 2: one per core of a laptop)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the baseline (run=NAME names the experiment)")
    p.set_defaults(func=cmd_pipeline)
