"""``--executor ray``: each cell is a Ray Core task (``ray.remote`` with the cell's ``num_cpus`` and
``num_gpus``), on this machine (``ray.init()``) or on an existing cluster (``--ray-address auto`` or
``host:port``). On a cluster the sweep folder (``train_dir``) must be on storage every node sees
(NFS, a mounted bucket): the cells write their run folders there and the orchestrator reads them.

Why tasks and not Tune: the grid is fixed and resumed by skipping finished cells, which Tune's
restore cannot extend with new cells; plain tasks plus our index are lighter (sweeps.md section 3).

Retries: a cell's own failure (``run_cell`` returns it) is retried by us, as the local executor does,
so every attempt is recorded; ``max_retries`` covers what Ray alone sees, a worker or node that died
(then Ray runs the task again, and the trainer resumes the run from its newest checkpoint).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import ray

from fiberlab.sweep.cell import CellJob, OnResult, OnStart, run_cell
from fiberlab.sweep.executors import drive

SYSTEM_RETRIES = 3  # Ray's own retries of a task whose worker or node died


class RayExecutor:
    """Runs cells as Ray tasks, at most ``max_parallel`` at once (default: as many as Ray fits)."""

    def __init__(self, max_parallel: int | None = None, address: str | None = None, num_cpus: int = 1, num_gpus: float = 0) -> None:
        self.max_parallel, self.address = max_parallel, address
        self.num_cpus, self.num_gpus = num_cpus, num_gpus

    def _init(self) -> bool:
        """Start (or join) Ray unless it runs already; True when this call started it."""
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs = {"address": self.address} if self.address else {"num_cpus": self.max_parallel or os.cpu_count() or 1}
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", **kwargs)
        return True

    def run(self, jobs: Sequence[CellJob], retries: int, on_start: OnStart, on_result: OnResult) -> None:
        if not jobs:
            return
        started_here = self._init()
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=SYSTEM_RETRIES)(run_cell)
        try:
            drive(jobs, retries, self.max_parallel or len(jobs), task.remote,
                  lambda refs: [(r, ray.get(r)) for r in ray.wait(refs, num_returns=1)[0]], on_start, on_result)
        finally:
            if started_here:
                ray.shutdown()
