#!/usr/bin/env python
"""Learning-history collection (``fiberlab ad collect``): batched PPO against lone learners.

What it measures, in one run on the same machine:

1. **batched**: ``--goals`` Darkroom goals (default all 81) learning together in one
   :class:`~fiberlab.distill.batched_ppo.BatchedPPO` (100 streams a goal, DICP's PPO settings), for
   ``--updates`` updates after one untimed warm-up update. One update (a 20-step rollout of every
   stream, then 20 epochs of minibatches of 50) costs the same at every point of training, so the
   full collection (50 updates = 100 k steps a goal) is extrapolated as seconds per update x 50.
2. **lone**: the reference, the way DICP runs it: one goal at a time (``goals_per_batch=1``), the
   same code and settings, ``--lone-goals`` goals x ``--lone-updates`` updates after a warm-up,
   extrapolated to all goals x 50 updates.
3. the ratio lone / batched (the speed-up from batching), and with ``--full`` the real thing:
   ``collect_histories`` of every goal with full settings into a temporary folder, wall time
   measured (about 5-10 minutes on 2 cores).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ad_collect.py            # ~2 min on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ad_collect.py --quick    # smoke test, ~20 s
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ad_collect.py --full --json collect.json

DICP's own figure for its code (SB3 PPO, one goal per process): about 180 s a goal on this class
of CPU, 4 hours for the 81 goals; it is quoted, not measured here.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# imported before fiberlab: puts src/ on the path when fiberlab is not installed
from bench_common import machine, machine_line

from fiberlab.distill.batched_ppo import BatchedPPO, num_updates
from fiberlab.distill.config import CollectConfig

DICP_SECONDS_PER_GOAL = 180.0  # quoted from ../shared/specs/algorithm_distillation.md, not measured here


def time_updates(cfg: CollectConfig, goals: list[int], updates: int) -> float:
    """Seconds for ``updates`` updates of one BatchedPPO over ``goals``, after one untimed warm-up update."""
    ppo = BatchedPPO(cfg, goals)
    ppo.learn(1)
    t0 = time.perf_counter()
    ppo.learn(updates)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--goals", type=int, default=81, help="goals learned together in the batched row (default 81)")
    ap.add_argument("--updates", type=int, default=3, help="timed updates of the batched row (default 3)")
    ap.add_argument("--lone-goals", type=int, default=3, help="goals learned one at a time in the reference row (default 3)")
    ap.add_argument("--lone-updates", type=int, default=3, help="timed updates per lone goal (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="8 goals, 1 update, 1 lone goal x 1 update (smoke test)")
    ap.add_argument("--full", action="store_true", help="also run the full 81-goal collection and time it")
    ap.add_argument("--json", metavar="OUT", help="write every number to OUT")
    args = ap.parse_args(argv)
    if args.quick:
        args.goals, args.updates, args.lone_goals, args.lone_updates = 8, 1, 1, 1
    if not 1 <= args.goals <= 81 or not 1 <= args.lone_goals <= 81 or args.updates < 1 or args.lone_updates < 1:
        print("goals must be 1..81 and updates >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cfg = CollectConfig(progress="none", torch_threads=args.threads)
    full_updates = num_updates(cfg)  # 50
    per_update_steps = cfg.n_stream * cfg.n_steps  # agent steps per goal per update
    print(machine_line())
    print(f"PPO: {cfg.n_stream} streams a goal, rollouts of {cfg.n_steps}, {cfg.n_epochs} epochs, minibatch {cfg.batch_size}; "
          f"full collection: 81 goals x {full_updates} updates ({cfg.steps_per_goal:,} steps a goal)")
    out: dict[str, Any] = {"machine": machine(), "goals": args.goals, "updates": args.updates}

    goals = list(range(args.goals))
    s = time_updates(cfg, goals, args.updates)
    per_update = s / args.updates
    batched_full = per_update * full_updates * (81 / args.goals)
    sps = args.goals * per_update_steps / per_update
    print(f"batched: {args.goals} goals together, {args.updates} updates: {s:.2f} s ({per_update:.2f} s an update), "
          f"{sps:,.0f} agent steps/s")
    print(f"batched: 81 goals x {cfg.steps_per_goal:,} steps, extrapolated: {batched_full:.0f} s ({batched_full / 60:.1f} min)")
    out["batched"] = {"seconds": s, "seconds_per_update": per_update, "steps_per_second": sps, "extrapolated_81_goals_s": batched_full}

    lone_goals = [56, 3, 80, 40, 0, 8, 72, 44][: args.lone_goals] + [g for g in range(81) if g not in (56, 3, 80, 40, 0, 8, 72, 44)][: max(0, args.lone_goals - 8)]
    lone_s = sum(time_updates(cfg, [g], args.lone_updates) for g in lone_goals)
    lone_per_goal_update = lone_s / (len(lone_goals) * args.lone_updates)
    lone_full = lone_per_goal_update * full_updates * 81
    lone_sps = per_update_steps / lone_per_goal_update
    print(f"lone learner (goals_per_batch=1): {len(lone_goals)} goals x {args.lone_updates} updates: {lone_s:.2f} s, "
          f"{lone_sps:,.0f} agent steps/s, {lone_per_goal_update * full_updates:.0f} s a goal")
    print(f"lone learner: 81 goals x {cfg.steps_per_goal:,} steps, extrapolated: {lone_full:.0f} s ({lone_full / 3600:.2f} h)")
    out["lone"] = {"seconds": lone_s, "goals": lone_goals, "steps_per_second": lone_sps,
                   "seconds_per_goal": lone_per_goal_update * full_updates, "extrapolated_81_goals_s": lone_full}
    ratio = lone_full / batched_full
    print(f"ad collect: batched / lone speed-up: {ratio:.1f}x")
    print(f"DICP (quoted, not measured here): ~{DICP_SECONDS_PER_GOAL:.0f} s a goal, ~{DICP_SECONDS_PER_GOAL * 81 / 3600:.1f} h for 81 goals; "
          f"batched extrapolation vs that: {DICP_SECONDS_PER_GOAL * 81 / batched_full:.0f}x")
    out["ratio_lone_over_batched"] = ratio

    if args.full:
        from fiberlab.distill.collect import collect_histories

        with tempfile.TemporaryDirectory() as tmp:
            full_cfg = CollectConfig(out_dir=tmp, progress="plain", torch_threads=args.threads)
            res = collect_histories(full_cfg)
            size = res.path.stat().st_size
        print(f"full collection: 81 goals x {cfg.steps_per_goal:,} steps: {res.seconds:.0f} s ({res.seconds / 60:.1f} min) wall, "
              f"{res.steps_per_second:,.0f} agent steps/s while learning, file {size / 2**20:.1f} MiB, "
              f"compression ratio {res.compression_ratio:.3f}")
        mean_final = sum(res.final_return.values()) / len(res.final_return)
        print(f"full collection: mean final return over 81 goals {mean_final:.2f} (best possible 16.54); goal 56 (6,2): "
              f"{res.final_return[56]:.2f}")
        out["full"] = {"seconds": res.seconds, "steps_per_second": res.steps_per_second, "bytes": size,
                       "compression_ratio": res.compression_ratio, "final_return": {str(k): v for k, v in res.final_return.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
