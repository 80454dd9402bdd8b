"""``fiberlab sweep run SPEC | status SWEEP | report SWEEP``: parse, call ``fiberlab.sweep``, print.

``SWEEP`` is a sweep folder (``train_dir/<name>``) or a sweep name under ``--train-dir``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fiberlab.cli import count, resolve_train_dir
from fiberlab.errors import BadInput, OperationFailed, first_line

DEFAULT_TRAIN_DIR = "./train_dir"


def _sweep_dir(args: argparse.Namespace) -> Path:
    train_dir, _ = resolve_train_dir(args.train_dir, [])
    given = Path(args.sweep)
    return given if given.is_dir() or "/" in args.sweep else Path(train_dir or DEFAULT_TRAIN_DIR) / args.sweep


def cmd_run(args: argparse.Namespace) -> int:
    from fiberlab.sweep.runner import plan_sweep, run_sweep
    from fiberlab.sweep.spec import load_spec

    count("--max-parallel", args.max_parallel, minimum=1)
    count("--retries", args.retries)
    if args.sps is not None and not args.sps > 0:
        raise BadInput(f"bad value {args.sps} for --sps: a positive number of agent steps per second is allowed")
    spec = load_spec(args.spec)
    train_dir, _ = resolve_train_dir(args.train_dir, [])
    train_dir = train_dir or DEFAULT_TRAIN_DIR
    if args.dry_run:
        plan = plan_sweep(spec, train_dir, sps=args.sps)
        todo = {c.name for c in plan.todo}
        for cell in plan.cells:
            print(f"{'run ' if cell.name in todo else 'done'}  {cell.name}")
        parallel = args.max_parallel or 1
        hours = plan.hours(parallel)
        cost = f", {hours:.2f} h at {plan.sps:,.0f} SPS per cell x {min(parallel, len(plan.todo) or 1)} in parallel" if hours is not None else " (give --sps for hours)"
        print(f"{len(plan.cells)} cells, {len(plan.todo)} to run: {plan.agent_steps:,} agent steps{cost}")
        return 0
    if args.executor == "skypilot":
        from fiberlab.sweep.skypilot import write_skypilot

        out = write_skypilot(spec, train_dir, args.out)
        print(f"task files: {out.parent}\nlaunch:     bash {out}")
        return 0
    outcome = run_sweep(spec, train_dir, executor=args.executor, max_parallel=args.max_parallel, retries=args.retries,
                        force=args.force, ray_address=args.ray_address)
    if outcome.failed:
        raise OperationFailed(f"{len(outcome.failed)} cell(s) failed (see {outcome.sweep_dir / 'index.json'}): {', '.join(sorted(outcome.failed)[:3])}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fiberlab.sweep.runner import sweep_status

    rows = sweep_status(_sweep_dir(args))
    width = max((len(r["name"]) for r in rows), default=4)
    print(f"{'cell':<{width}}  {'status':<8} {'tries':>5} {'step':>10} {'return':>8} {'SPS':>9}  error")
    for r in rows:
        ret = f"{r['return']:.3f}" if r["return"] is not None else "-"
        sps = f"{r['sps']:,.0f}" if r.get("sps") else "-"
        err = first_line(r.get("error") or "")
        print(f"{r['name']:<{width}}  {r['status']:<8} {r['attempts']:>5} {r['step'] or '-':>10} {ret:>8} {sps:>9}  {err}")
    done = sum(r["status"] == "done" for r in rows)
    print(f"{done}/{len(rows)} done")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fiberlab.sweep.report import write_report

    written = write_report(_sweep_dir(args), metric=args.metric, out=args.out)
    for kind, path in written.items():
        print(f"{kind + ':':<12} {path}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run, inspect and report a sweep of runs from a YAML spec (docs/sweeps.md)")
    ssub = p.add_subparsers(dest="sweep_command", required=True)
    r = ssub.add_parser("run", help="run the cells of SPEC not finished yet (resumable)")
    r.add_argument("spec", help="the sweep spec, a YAML file")
    r.add_argument("--executor", default="local", choices=["local", "ray", "skypilot"])
    r.add_argument("--max-parallel", type=int, help="cells at once (local default: the core count)")
    r.add_argument("--retries", type=int, default=0, help="tries more for a failed cell before it is recorded as failed")
    r.add_argument("--dry-run", action="store_true", help="print the cells and the cost, run nothing")
    r.add_argument("--sps", type=float, help="per-cell agent steps per second for --dry-run's hours (default: what finished cells recorded)")
    r.add_argument("--force", action="store_true", help="run even though the spec's base or budget changed since the sweep started")
    r.add_argument("--ray-address", help="an existing Ray cluster ('auto' or host:port); default: start Ray on this machine")
    r.add_argument("--out", help="skypilot: the folder for the task files (default: the sweep folder's skypilot/)")
    r.add_argument("--train-dir", help="where the sweep folder goes (default ./train_dir)")
    r.set_defaults(func=cmd_run)
    s = ssub.add_parser("status", help="one line per cell: status, attempts, step, return, SPS, error")
    s.add_argument("sweep", help="a sweep folder, or a sweep name under --train-dir")
    s.add_argument("--train-dir")
    s.set_defaults(func=cmd_status)
    t = ssub.add_parser("report", help="tables (md, csv, tex) and figures (png, pdf) with 95%% intervals over seeds")
    t.add_argument("sweep", help="a sweep folder, or a sweep name under --train-dir")
    t.add_argument("--metric", help="the metrics.jsonl column to report (default: the spec's metric, episode_return)")
    t.add_argument("--out", help="output folder (default: SWEEP/report)")
    t.add_argument("--train-dir")
    t.set_defaults(func=cmd_report)
