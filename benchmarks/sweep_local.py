#!/usr/bin/env python
"""Sweep orchestration speed: does the local executor keep the cores busy, and what does it add?

Measured in one run, on the ``demo`` recipe with tensorboard off (``--steps`` agent steps per cell):

1. **Lone cell**: one cell through the local executor with ``--max-parallel 1`` (inline): its SPS
   (mean epoch SPS after the first, as ``fiberlab train`` logs it) is the reference.
2. **N in parallel**: 2N cells (N = ``--parallel``, default the core count) with ``--max-parallel N``
   in spawned worker processes. Efficiency = the cells' mean SPS / the lone cell's SPS, i.e. N cells
   at once give efficiency x N times a lone cell's throughput; the issue's target is >= 0.85 when N
   does not exceed the cores. The machine's limit is 1.0.
3. **Orchestration cost per cell**: (sweep wall time - the cells' own train time, summed over
   workers) / cells: spawning workers, importing torch in them, building and validating configs,
   writing the index. Target < 1 s.

    python benchmarks/sweep_local.py                 # ~1-2 min on 2 cores
    python benchmarks/sweep_local.py --steps 81920 --parallel 2
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench_common import machine_line

TINY = {"tensorboard": False, "progress": "none"}


def _sweep(name: str, seeds: list[int], steps: int, parallel: int, root: Path):
    from fiberlab.sweep.runner import run_sweep
    from fiberlab.sweep.spec import parse_spec

    spec = parse_spec({"name": name, "base": {"recipe": "demo", "overrides": TINY}, "seeds": seeds, "budget": steps})
    t0 = time.perf_counter()
    run_sweep(spec, root, max_parallel=parallel, log=lambda _line: None)
    wall = time.perf_counter() - t0
    cells = json.loads((root / name / "index.json").read_text())["cells"]
    assert all(c["status"] == "done" for c in cells), cells
    return wall, cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40_960, help="agent steps per cell")
    p.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="cells at once (default: the core count)")
    p.add_argument("--cells", type=int, help="cells in the parallel sweep (default 2 x --parallel: worker start-up is paid once per worker)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lone_wall, lone = _sweep("lone", [1], args.steps, 1, root)
        par_wall, par = _sweep("parallel", list(range(1, (args.cells or 2 * args.parallel) + 1)), args.steps, args.parallel, root)
    lone_sps = lone[0]["sps"]
    sum_sps = sum(c["sps"] for c in par)
    ratio = sum_sps / (len(par) * lone_sps)  # each cell's SPS against the lone cell's: 1.0 = no slow-down from sharing
    busy = sum(c["wall_time"] for c in par) / args.parallel  # each worker's own train time
    overhead = max(0.0, par_wall - busy) / len(par)
    lone_overhead = max(0.0, lone_wall - lone[0]["wall_time"])
    print(f"lone cell:            {lone_sps:,.0f} SPS, {lone[0]['wall_time']:.1f} s training, {lone_wall:.1f} s sweep")
    each = ", ".join(f"{c['sps']:,.0f}" for c in par)
    print(f"{len(par)} cells, {args.parallel} at a time: {each} SPS, {par_wall:.1f} s sweep")
    print(f"parallel efficiency:  {ratio:.2f} (mean cell SPS / lone cell SPS; target >= 0.85; the machine's limit is 1.00)")
    print(f"orchestration:        {overhead:.2f} s per cell in the pool (spawn, imports, index), {lone_overhead:.2f} s inline (target < 1 s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"lone_sps": lone_sps, "parallel_sps": [c["sps"] for c in par], "efficiency": ratio,
                                               "overhead_s_per_cell": overhead, "inline_overhead_s": lone_overhead, "steps": args.steps}, indent=2))


if __name__ == "__main__":
    main()
