"""``fiberlab ad collect | stats | plot-segments | train | evaluate | compare``: parse, call
:mod:`fiberlab.distill`, print (docs/distill.md).

The workflow: ``collect`` PPO learning histories -> look at their segments (``stats``,
``plot-segments``) -> ``train`` AD, CompressedAD or the random-marker control -> ``evaluate`` a
checkpoint in context -> ``compare`` the runs. ``fiberlab pipeline ad darkroom`` runs all of it.

Bad input (a threshold outside [0, 1], a window < 1, a missing path, a file of another schema, a
missing goal group, an unknown key or model) is a :class:`~fiberlab.errors.BadInput` raised by the
library; the one handler in :func:`fiberlab.cli.main.main` prints it as one line, exit code 2.
Importing this module imports no torch: every command imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from fiberlab.cli import count, overrides_with_train_dir, resolve_train_dir
from fiberlab.errors import BadInput

REPORT_EPISODES = (1, 5, 10, 25, 50)


def _existing(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{path}: no such {what}")
    return p


def _segment_flags(args: argparse.Namespace) -> None:
    """Judge ``--threshold`` and ``--window`` with the segments module's own checks, before any
    file is opened (the same one-line errors a Python user gets)."""
    from fiberlab.distill.segments import check_threshold, check_window

    if args.threshold is not None:
        check_threshold(args.threshold)
    if args.window is not None:
        check_window(args.window)


def cmd_collect(args: argparse.Namespace) -> int:
    from fiberlab.config import apply_overrides
    from fiberlab.distill.config import CollectConfig

    cfg = apply_overrides(CollectConfig(), args.overrides)
    from fiberlab.distill.collect import collect_histories

    res = collect_histories(cfg)
    if res.skipped:
        print(f"history:  {res.path} (complete with these settings already: nothing to do)")
    else:
        resumed = f", {len(res.resumed)} resumed from an interrupted run" if res.resumed else ""
        print(f"history:  {res.path}")
        print(f"goals:    {len(res.learned)} learned{resumed} in {res.seconds:.0f} s ({res.steps_per_second:,.0f} agent steps/s)")
    finals = [v for v in res.final_return.values() if math.isfinite(v)]
    if finals:
        print(f"final:    mean last-episode return over goals {sum(finals) / len(finals):.2f}")
    print(f"marked:   {100 * res.compression_ratio:.1f} % of steps (compression ratio; see fiberlab ad stats)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    _segment_flags(args)
    _existing(args.file, "history file")
    from fiberlab.distill.segment_report import format_stats, segment_stats

    stats = segment_stats(args.file, threshold=args.threshold, window=args.window, rule=args.rule)
    print(format_stats(stats, per_goal=not args.pooled))
    return 0


def cmd_plot_segments(args: argparse.Namespace) -> int:
    _segment_flags(args)
    count("--goal", args.goal)
    count("--stream", args.stream)
    count("--steps", args.steps, minimum=1)
    _existing(args.file, "history file")
    from fiberlab.distill.segment_report import plot_segments

    out = args.out or f"segments_goal{args.goal}_stream{args.stream}.png"
    written = plot_segments(args.file, args.goal, args.stream, out, threshold=args.threshold, window=args.window,
                            rule=args.rule, steps=args.steps)
    for path in written if isinstance(written, (list, tuple)) else [written]:
        print(f"figure: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fiberlab.config import apply_overrides
    from fiberlab.distill.config import ADConfig

    overrides = overrides_with_train_dir(args.train_dir, args.overrides)
    cfg = apply_overrides(ADConfig(), overrides)
    from fiberlab.distill.histories import open_history

    open_history(args.dataset).close()  # the schema checked (metadata only) before torch starts
    from fiberlab.distill.train import train_ad

    res = train_ad(cfg, args.dataset)
    if getattr(res, "skipped", False):
        print(f"finished already ({cfg.train_steps:,} steps): nothing trained")
    print(f"run:          {res.run_dir}")
    print(f"metrics:      {Path(res.run_dir) / 'metrics.jsonl'}")
    print(f"best:         {res.best_checkpoint} (test accuracy {_fmt(res.best_test_accuracy)})")
    print(f"last:         {res.last_checkpoint}")
    return 0


def _fmt(x: object, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint file, or a run folder (its ``checkpoints/best.safetensors``)."""
    p = _existing(path, "checkpoint or run folder")
    if p.is_dir():
        best = p / "checkpoints" / "best.safetensors"
        if not best.is_file():
            raise BadInput(f"{path}: a folder without checkpoints/best.safetensors (not an AD run folder?)")
        return best
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    count("--timesteps", args.timesteps, minimum=1)
    count("--train-goals", args.train_goals, minimum=1)
    _segment_flags(args)
    ckpt = resolve_checkpoint(args.checkpoint)
    from fiberlab.atomic import write_json_atomic
    from fiberlab.distill.in_context import evaluate_checkpoint

    res = evaluate_checkpoint(ckpt, goals=args.goals, eval_timesteps=args.timesteps, markers=args.markers, seed=args.seed,
                              n_train_goals=args.train_goals, sample=not args.greedy, device=args.device,
                              threshold=args.threshold, window=args.window)
    curve = res["mean_per_episode"]
    picks = [e for e in REPORT_EPISODES if e <= len(curve)]
    print(f"{res['model']} on {len(res['tasks'])} {res['goals']} goals, markers {res['markers']}, "
          f"{'sampled' if res['sample'] else 'greedy'}, {res['eval_timesteps']} steps = {len(curve)} episodes")
    print("return at episode " + ", ".join(f"{e}: {curve[e - 1]:.2f}" for e in picks))
    print(f"mean over episodes (area under the curve): {res['auc']:.2f}; best possible: {res['best_return_mean']:.2f}")
    per_goal = [sum(r) / len(r) for r in res["returns"]]
    print("per goal (mean over episodes): " + ", ".join(f"{t}: {v:.2f}" for t, v in zip(res["tasks"], per_goal)))
    placed = res["markers_placed"]
    if res["markers"] != "none":
        print(f"markers placed: {placed['start']} starts, {placed['end']} ends in {placed['env_steps']:,} env steps")
    if args.out:
        write_json_atomic(Path(args.out), res)
        print(f"json: {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    count("--timesteps", args.timesteps, minimum=1)
    from fiberlab.distill.compare import compare_ad_runs, find_runs
    from fiberlab.distill.pipeline import evaluate_runs

    runs = find_runs([_existing(p, "train folder or run folder") for p in args.runs])
    if not args.no_evaluate:
        evaluate_runs(runs, eval_timesteps=args.timesteps)
    # the evaluations of --timesteps steps; with --no-evaluate, the longest each run has
    res = compare_ad_runs(runs, args.out, history=args.history, timesteps=None if args.no_evaluate else args.timesteps)
    print(f"table:  {res.table_md}\ncsv:    {res.table_csv}\nfigure: {res.figure_png}\npdf:    {res.figure_pdf}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ad", help="Algorithm Distillation on Darkroom: collect, stats, plot-segments, train, evaluate, compare (docs/distill.md)")
    asub = p.add_subparsers(dest="ad_command", required=True)

    c = asub.add_parser("collect", help="PPO learning histories of every goal, batched, into one HDF5 file (resumable)")
    c.add_argument("overrides", nargs="*", default=[], help="CollectConfig key=value overrides, e.g. n_stream=10 steps_per_goal=20000")
    c.set_defaults(func=cmd_collect)

    def segment_flags(q: argparse.ArgumentParser, rules: list[str]) -> None:
        q.add_argument("--threshold", type=float, help="P(taken action) threshold in [0, 1] (default: the file's)")
        q.add_argument("--window", type=int, help="steps a confident run must last, >= 1 (default: the file's)")
        q.add_argument("--rule", choices=rules, help="mask rule (default: the file's stored mask)")

    s = asub.add_parser("stats", help="compression ratio per goal and overall, segment lengths")
    s.add_argument("file", help="a history file (history_<env>_PPO_alg-seed<N>_compressed.hdf5)")
    segment_flags(s, ["lookahead", "causal"])
    s.add_argument("--pooled", action="store_true", help="the pooled numbers only, no row per goal")
    s.set_defaults(func=cmd_stats)

    g = asub.add_parser("plot-segments", help="one stream's P(taken action) over time, segments shaded, threshold line")
    g.add_argument("file", help="a history file")
    g.add_argument("--goal", type=int, required=True, help="task index (darkroom: 9x + y)")
    g.add_argument("--stream", type=int, required=True, help="stream index")
    g.add_argument("--out", help="FILE.png or FILE.pdf (default segments_goal<G>_stream<S>.png)")
    g.add_argument("--steps", type=int, help="the first N steps only (default all)")
    segment_flags(g, ["lookahead", "causal", "both"])
    g.set_defaults(func=cmd_plot_segments)

    t = asub.add_parser("train", help="train AD, CompressedAD or the random-marker control on a history file")
    t.add_argument("dataset", help="the history file")
    t.add_argument("overrides", nargs="*", default=[], help="ADConfig key=value overrides, e.g. model=compressed seed=1 train_steps=5000")
    t.add_argument("--train-dir", help="where the run folder goes (the same as train_dir=DIR; default ./train_dir/ad)")
    t.set_defaults(func=cmd_train)

    e = asub.add_parser("evaluate", help="in-context returns of a checkpoint on held-out (or train) goals")
    e.add_argument("checkpoint", help="a checkpoint (.safetensors) or a run folder (its best checkpoint)")
    e.add_argument("--goals", choices=["test", "train"], default="test", help="the split's test goals, or its first --train-goals train goals")
    e.add_argument("--train-goals", type=int, default=10, help="how many train goals with --goals train (default 10)")
    e.add_argument("--markers", choices=["none", "causal", "random"], default="none", help="markers at inference (default none)")
    e.add_argument("--threshold", type=float, help="causal markers: threshold in [0, 1] (default: the model's training one)")
    e.add_argument("--window", type=int, help="causal markers: window >= 1 (default: the model's training one)")
    e.add_argument("--timesteps", type=int, default=1000, help="in-context steps (default 1000 = 50 Darkroom episodes)")
    e.add_argument("--greedy", action="store_true", help="argmax actions instead of sampling (sampling is DICP's evaluation)")
    e.add_argument("--seed", type=int, default=0, help="the sampling seed")
    e.add_argument("--device", default="auto")
    e.add_argument("--out", help="write the full result (returns per goal and episode) to this JSON file")
    e.set_defaults(func=cmd_evaluate)

    m = asub.add_parser("compare", help="AD vs CompressedAD vs random markers over seeds: table (md, csv) and figure (png, pdf)")
    m.add_argument("runs", nargs="+", help="a train folder holding run folders, or run folders")
    m.add_argument("--out", required=True, help="the output folder")
    m.add_argument("--history", help="the history file the runs were trained on (default: the one the runs record)")
    m.add_argument("--timesteps", type=int, default=1000, help="in-context steps for runs not evaluated yet (default 1000)")
    m.add_argument("--no-evaluate", action="store_true", help="use the evaluations present only; evaluate nothing")
    m.set_defaults(func=cmd_compare)


# --------------------------------------------------------------------------- fiberlab pipeline ad ENV
PIPELINE_ONLY_KEYS = ("eval_timesteps", "out")
PIPELINE_SET_KEYS = ("model", "seed", "run")
# keys both configs have with the same meaning (a bare key sets both); any other shared key (batch_size:
# PPO's minibatch vs AD's batch) means different things and must be scoped
SAME_IN_BOTH = ("on_policy_threshold", "compression_window", "mask_rule", "device", "torch_threads")


def split_pipeline_overrides(items: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """Route ``key=value`` items of ``fiberlab pipeline ad`` to the collection, the training or
    the pipeline itself: ``collect.KEY=V`` and ``train.KEY=V`` go where they say; a bare key goes to
    every config that has it (``on_policy_threshold`` to both); ``eval_timesteps`` and ``out`` are
    the pipeline's. ``model``, ``seed`` and ``run`` are set by the pipeline, and a bare key both
    configs have with different meanings (``batch_size``) is ambiguous: BadInput."""
    from fiberlab.distill.config import ADConfig, CollectConfig

    collect, train, own = [], [], {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise BadInput(f"override {item!r} is not of the form key=value")
        scope, dot, bare = key.partition(".")
        if dot and scope in ("collect", "train"):
            (collect if scope == "collect" else train).append(f"{bare}={val}")
            if scope == "train" and bare.split(".")[0] in PIPELINE_SET_KEYS:
                raise BadInput(f"{key!r}: the pipeline sets model, seed and run itself (use --seeds N)")
            continue
        if key in PIPELINE_ONLY_KEYS:
            own[key] = val
            continue
        if key in PIPELINE_SET_KEYS:
            raise BadInput(f"{key!r}: the pipeline sets model, seed and run itself (use --seeds N)")
        top = key.split(".")[0]
        in_c, in_t = top in CollectConfig.model_fields, top in ADConfig.model_fields
        if not (in_c or in_t):
            allowed = sorted(set(CollectConfig.model_fields) | set(ADConfig.model_fields) - set(PIPELINE_SET_KEYS))
            raise BadInput(f"unknown key {key!r}: allowed are {', '.join(allowed)}, {', '.join(PIPELINE_ONLY_KEYS)} "
                           f"(collect.KEY= / train.KEY= to pick one config)")
        if in_c and in_t and top not in SAME_IN_BOTH:
            raise BadInput(f"{key!r} means different things for the collection and the training: "
                           f"give collect.{key}={val} or train.{key}={val}")
        if in_c:
            collect.append(item)
        if in_t:
            train.append(item)
    return collect, train, own


def cmd_pipeline_ad(args: argparse.Namespace) -> int:
    """``fiberlab pipeline ad ENV``: collect -> train x seeds -> evaluate -> compare (resumable)."""
    from fiberlab.envs.darkroom import check_env

    env = check_env(args.recipe)
    seeds = 3 if args.seeds is None else args.seeds  # the comparison needs at least 3 seeds a model
    count("--seeds", seeds, minimum=1)
    given = [flag for flag, attr in (("--threshold", "threshold"), ("--linear-thr", "linear_thr"), ("--cnn-thr", "cnn_thr"),
                                     ("--lstm-thr", "lstm_thr"), ("--critic-thr", "critic_thr")) if getattr(args, attr, None) is not None]
    if given:
        raise BadInput(f"{given[0]} is a fibration flag: for the ad pipeline give on_policy_threshold=T (in [0, 1])")
    train_dir, items = resolve_train_dir(args.train_dir, args.overrides)
    collect, train, own = split_pipeline_overrides(items)
    if train_dir is not None:
        train.append(f"train_dir={train_dir}")
    timesteps = own.get("eval_timesteps", "1000")
    if not timesteps.isdigit() or int(timesteps) < 1:
        raise BadInput(f"bad value {timesteps!r} for 'eval_timesteps': a positive integer is allowed")
    from fiberlab.distill.pipeline import run_ad_pipeline

    res = run_ad_pipeline(env=env, seeds=seeds, collect_overrides=collect, train_overrides=train,
                          eval_timesteps=int(timesteps), out=own.get("out"))
    print(f"history:   {res.dataset}")
    for model, runs in res.runs.items():
        print(f"{model:<15} {', '.join(str(r) for r in runs)}")
    if res.skipped:
        print(f"skipped (already done): {', '.join(res.skipped)}")
    print(f"table:     {res.table_md}")
    print(f"csv:       {res.table_csv}")
    print(f"figure:    {res.figure_png}")
    return 0


__all__ = ["add_parser", "cmd_pipeline_ad", "split_pipeline_overrides"]
