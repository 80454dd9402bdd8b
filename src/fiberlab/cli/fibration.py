"""``fiberlab collapse | ablate | continue | scratch | fibers | compare | pipeline``: parse, call
:mod:`fiberlab.experiments` (``fibration_runs``, ``fibration_pipeline``, ``fibers_over_time``,
``compare``), print.

Errors go up to the one handler in :func:`fiberlab.cli.main.main`: the experiments raise
:class:`~fiberlab.errors.BadInput` for bad input themselves. ``--train-dir DIR`` and a
``train_dir=DIR`` override are the same setting here, as in ``fiberlab train``: the folder the
source runs are read from and the new runs are written to.
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from fiberlab.cli import count, overrides_with_train_dir, resolve_train_dir
from fiberlab.errors import BadInput

if TYPE_CHECKING:  # imported lazily at run time: the parser must not import torch
    from fiberlab.fibration import Target, TargetResult, Thresholds

DEFAULT_TRAIN_DIR = "./train_dir"
TARGET_FLAGS = (("target-fraction", "target_fraction", "nodes"), ("target-params", "target_params", "params"))
THRESHOLD_FLAGS = (("threshold", "threshold"), ("linear-thr", "linear_thr"), ("cnn-thr", "cnn_thr"), ("lstm-thr", "lstm_thr"), ("critic-thr", "critic_thr"))
SUMMARY_KEYS = ("run", "kind", "source_run", "source_epoch", "source_agent_step", "node_fraction", "param_fraction", "return_original", "return_collapsed", "draw")


def parse_thresholds(args: argparse.Namespace):
    """``--threshold T`` sets all four; per-type flags override; defaults otherwise."""
    from fiberlab.fibration import Thresholds

    for flag, attr in THRESHOLD_FLAGS:
        v = getattr(args, attr)
        if v is not None and not 0.0 <= v <= 2.0:  # also refuses NaN
            raise BadInput(f"bad value {v} for --{flag}: thresholds are in [0, 2]")
    t = args.threshold
    base = Thresholds() if t is None else Thresholds(linear=t, cnn=t, lstm=t, critic=t)
    update = {k: getattr(args, f"{k}_thr") for k in ("linear", "cnn", "lstm", "critic") if getattr(args, f"{k}_thr") is not None}
    return base.model_copy(update=update)


def parse_target(args: argparse.Namespace) -> Target | None:
    """``--target-fraction F`` (hidden nodes kept) or ``--target-params F`` (parameters kept), F in
    (0, 1], at most one of them: a :class:`~fiberlab.fibration.target.Target`, or None."""
    from fiberlab.fibration.target import Target, check_fraction

    given = [(flag, getattr(args, attr), measure) for flag, attr, measure in TARGET_FLAGS if getattr(args, attr, None) is not None]
    if len(given) > 1:
        raise BadInput(f"--{given[0][0]} {given[0][1]} and --{given[1][0]} {given[1][1]} given together: give one of them")
    if not given:
        return None
    flag, value, measure = given[0]
    return Target(check_fraction(value, f"--{flag}"), measure)


def _find_target(train_dir: str, args: argparse.Namespace, thr: Thresholds, target: Target | None) -> TargetResult | None:
    """The thresholds search on the source checkpoint (None without a target), its result printed
    in one line before anything trains."""
    if target is None:
        return None
    from fiberlab.experiments.fibration_runs import find_target

    found = find_target(train_dir, args.run, target, thr, args.epoch)
    print(found.describe(), flush=True)
    return found


def _train_dir(args: argparse.Namespace) -> str:
    """Merge ``--train-dir`` and ``train_dir=`` (taken out of ``args.overrides``)."""
    train_dir, args.overrides = resolve_train_dir(args.train_dir, list(getattr(args, "overrides", [])))
    return train_dir or DEFAULT_TRAIN_DIR


def _source_checks(args: argparse.Namespace) -> None:
    count("--epoch", args.epoch)
    count("--eval-episodes", args.eval_episodes)


def _print_runs(result: dict | list[dict]) -> int:
    for row in result if isinstance(result, list) else [result]:
        print(json.dumps({k: row.get(k) for k in SUMMARY_KEYS}))
    return 0


def cmd_collapse(args: argparse.Namespace) -> int:
    from fiberlab.experiments.fibration_runs import collapse_run

    _source_checks(args)
    thr, target, train_dir = parse_thresholds(args), parse_target(args), _train_dir(args)
    found = _find_target(train_dir, args, thr, target)
    return _print_runs(collapse_run(train_dir, args.run, thr, args.epoch, args.overrides, eval_episodes=args.eval_episodes, target=found))


def cmd_ablate(args: argparse.Namespace) -> int:
    from fiberlab.experiments.fibration_runs import ablate_run

    _source_checks(args)
    count("--draws", args.draws, minimum=1)
    thr, target, train_dir = parse_thresholds(args), parse_target(args), _train_dir(args)
    found = _find_target(train_dir, args, thr, target)
    return _print_runs(ablate_run(train_dir, args.run, thr, args.epoch, args.overrides, draws=args.draws, eval_episodes=args.eval_episodes, target=found))


def cmd_continue(args: argparse.Namespace) -> int:
    from fiberlab.experiments.fibration_runs import continue_run

    _source_checks(args)
    return _print_runs(continue_run(_train_dir(args), args.run, args.epoch, args.overrides, eval_episodes=args.eval_episodes))


def cmd_scratch(args: argparse.Namespace) -> int:
    from fiberlab.experiments.fibration_runs import scratch_run

    return _print_runs(scratch_run(_train_dir(args), args.like, args.overrides))


def cmd_pipeline(args: argparse.Namespace) -> int:
    if args.name == "ad":  # fiberlab pipeline ad ENV: Algorithm Distillation (fiberlab.cli.ad)
        from fiberlab.cli.ad import cmd_pipeline_ad

        given = [flag for flag, attr, _ in TARGET_FLAGS if getattr(args, attr) is not None]
        if given:
            raise BadInput(f"--{given[0]} is a fibration flag: the ad pipeline collapses nothing")

        return cmd_pipeline_ad(args)
    from fiberlab.experiments.fibration_pipeline import run_pipeline

    if args.name != "fibration":
        raise BadInput(f"unknown pipeline {args.name!r}: allowed are fibration, ad")
    args.seeds = 1 if args.seeds is None else args.seeds
    count("--seeds", args.seeds, minimum=1)
    count("--jobs", args.jobs, minimum=1)
    count("--eval-episodes", args.eval_episodes)
    if not 0.0 < args.retrain_fraction <= 10.0:
        raise BadInput(f"bad value {args.retrain_fraction} for --retrain-fraction: (0, 10] is allowed")
    overrides = overrides_with_train_dir(args.train_dir, args.overrides)
    thr, target = parse_thresholds(args), parse_target(args)
    res = run_pipeline(args.recipe, overrides, thr, seeds=args.seeds, retrain_fraction=args.retrain_fraction, eval_episodes=args.eval_episodes,
                       workers=args.jobs, target=target)
    for stage, runs in res.runs.items():
        print(f"{stage:<10} {', '.join(runs)}")
    if res.skipped:
        print(f"skipped (already finished): {', '.join(res.skipped)}")
    print(f"figure:    {res.figure}")
    print(f"table:     {res.figure.with_suffix('.md')}")
    return 0


def cmd_fibers(args: argparse.Namespace) -> int:
    from fiberlab.experiments.fibers_over_time import write_fibers_over_time

    train_dir = _train_dir(args)
    if args.overrides:
        raise BadInput(f"unknown argument {args.overrides[0]!r}: fibers takes train_dir=DIR only")
    csv, png = write_fibers_over_time(f"{train_dir}/{args.run}", parse_thresholds(args))
    print(f"csv: {csv}\npng: {png}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fiberlab.experiments.compare import compare_runs

    train_dir, runs = resolve_train_dir(args.train_dir, args.runs)  # a train_dir=DIR among the runs
    train_dir = train_dir or DEFAULT_TRAIN_DIR
    if not runs:
        raise BadInput("no runs given: name at least one run (under --train-dir) or run folder")
    if not args.out.lower().endswith(".png"):
        raise BadInput(f"bad value {args.out!r} for --out: a FILE.png path is allowed")
    if args.random_episodes < 0:
        raise BadInput(f"bad value {args.random_episodes} for --random-episodes: an integer >= 0 is allowed (0: no random-play line)")
    png, csv, md, summary = compare_runs([f"{train_dir}/{r}" if "/" not in r else r for r in runs], args.out, args.random_episodes)
    print(f"png: {png}\ncsv: {csv}\nmd:  {md}\nsummary csv: {summary}")
    return 0


TRAIN_DIR_HELP = "the folder runs are read from and written to (the same as train_dir=DIR; default ./train_dir)"


def _thr_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, help="one threshold for every layer type, in [0, 2]")
    for kind, default in (("linear", 0.7), ("cnn", 0.5), ("lstm", 1.0), ("critic", 0.8)):
        p.add_argument(f"--{kind}-thr", type=float, help=f"{kind} layers' threshold in [0, 2] (default {default})")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-fraction", metavar="F", help="collapse to about this fraction of the hidden nodes, F in (0, 1]: the thresholds "
                   "are scaled together (ratios kept: the defaults, or the thresholds given) to the scale whose collapse comes closest")
    p.add_argument("--target-params", metavar="F", help="the same for the fraction of parameters kept (not with --target-fraction)")


def _source_args(p: argparse.ArgumentParser, thresholds: bool = True) -> None:
    p.add_argument("--run", required=True, help="the source run (EXP)")
    p.add_argument("--epoch", type=int, help="checkpoint epoch (closest one; ties: the earlier; default: latest)")
    if thresholds:
        _thr_args(p)
        _target_args(p)
    p.add_argument("--train-dir", help=TRAIN_DIR_HELP)
    p.add_argument("--eval-episodes", type=int, default=32, help="episodes for the zero-shot returns (0: skip)")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides of the new run (trainer.total_timesteps = steps to train)")


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
    p.add_argument("--train-dir", help=TRAIN_DIR_HELP)
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides of the new run")
    p.set_defaults(func=cmd_scratch)
    p = sub.add_parser("fibers", help="fiber counts per layer at every checkpoint of a run (CSV and PNG)")
    p.add_argument("--run", required=True)
    p.add_argument("--train-dir", help=TRAIN_DIR_HELP)
    p.add_argument("overrides", nargs="*", default=[], metavar="train_dir=DIR", help="the same as --train-dir")
    _thr_args(p)
    p.set_defaults(func=cmd_fibers)
    p = sub.add_parser("compare", help="return against agent steps of several runs: PNG, CSV and markdown table")
    p.add_argument("runs", nargs="+", help="run names (under --train-dir) or run folders; train_dir=DIR is the same as --train-dir")
    p.add_argument("--out", required=True, help="FILE.png (FILE.csv and FILE.md are written next to it)")
    p.add_argument("--random-episodes", type=int, default=32, metavar="N",
                   help="episodes of uniform random play on the runs' env, drawn as the floor line and put in the tables (default 32; 0: none)")
    p.add_argument("--train-dir", help=TRAIN_DIR_HELP)
    p.set_defaults(func=cmd_compare, _kv_into="runs")  # a train_dir=DIR after --out joins the runs
    p = sub.add_parser("pipeline", help="fiberlab pipeline fibration RECIPE: baseline, original continued, collapse, ablation, scratch, compare; "
                       "fiberlab pipeline ad ENV: collect, train AD/CompressedAD/random markers, evaluate, compare (both resumable)")
    p.add_argument("name", help="fibration or ad")
    p.add_argument("recipe", help="fibration: the recipe; ad: the env (darkroom, darkroom_permuted, dark_key_to_door)")
    _thr_args(p)
    _target_args(p)
    p.add_argument("--seeds", type=int, help="seeds (default: fibration 1, ad 3)")
    p.add_argument("--retrain-fraction", type=float, default=0.5, help="steps of each retraining as a fraction of the baseline's")
    p.add_argument("--eval-episodes", type=int, default=32)
    p.add_argument("--train-dir", help="where the runs go (the same as train_dir=DIR; default ./train_dir)")
    p.add_argument("--jobs", type=int, default=2, help="independent runs trained at once, each in its own process (default 2: one per core of a laptop)")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides of the baseline (run=NAME names the experiment); "
                   "ad: CollectConfig/ADConfig keys, collect.KEY=V or train.KEY=V for one of them, eval_timesteps=N, out=DIR (docs/distill.md)")
    p.set_defaults(func=cmd_pipeline)
