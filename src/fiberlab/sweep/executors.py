"""Where cells run. Every executor takes the same jobs and reports each attempt's result through
the same callbacks, so the runner's bookkeeping (index, retries recorded, progress) is one piece of
code; the executors themselves are existing engines, not a scheduler of ours:

- ``local``: ``concurrent.futures.ProcessPoolExecutor`` (spawned workers, one torch thread per run),
  ``max_parallel`` at a time; inline when ``max_parallel`` is 1.
- ``ray``: Ray Core tasks (``fiberlab.sweep.ray_executor``), when the ``ray`` extra is installed.
- ``skypilot`` does not run cells here: it writes task files to launch (``fiberlab.sweep.skypilot``).
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Protocol

from fiberlab.errors import BadInput
from fiberlab.sweep.cell import CellJob, OnResult, OnStart, run_cell


class Executor(Protocol):
    def run(self, jobs: Sequence[CellJob], retries: int, on_start: OnStart, on_result: OnResult) -> None:
        """Run every job; a failed one is tried again up to ``retries`` more times."""


class LocalExecutor:
    """A process pool on this machine: ``max_parallel`` cells at once (default: the core count)."""

    def __init__(self, max_parallel: int | None = None) -> None:
        self.max_parallel = max_parallel or os.cpu_count() or 1

    def run(self, jobs: Sequence[CellJob], retries: int, on_start: OnStart, on_result: OnResult) -> None:
        if self.max_parallel == 1 or len(jobs) <= 1:
            for job in jobs:
                for attempt in range(1, retries + 2):
                    on_start(job.name, attempt)
                    result = run_cell(job)
                    on_result(result, attempt)
                    if result.status == "done":
                        break
            return
        # spawn, not fork: the parent has used torch, whose thread pools do not survive a fork
        ctx = multiprocessing.get_context("spawn")
        queue = [(job, 1) for job in jobs]  # submitted only when a worker is free, so "running" is true
        with ProcessPoolExecutor(max_workers=min(self.max_parallel, len(jobs)), mp_context=ctx) as pool:
            running: dict = {}
            while queue or running:
                while queue and len(running) < self.max_parallel:
                    job, attempt = queue.pop(0)
                    on_start(job.name, attempt)
                    running[pool.submit(run_cell, job)] = (job, attempt)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job, attempt = running.pop(future)
                    result = future.result()  # run_cell returns failures; an exception here is a broken worker
                    on_result(result, attempt)
                    if result.status != "done" and attempt <= retries:
                        queue.insert(0, (job, attempt + 1))

EXECUTORS = ("local", "ray", "skypilot")


def get_executor(name: str, max_parallel: int | None = None, ray_address: str | None = None, cpus: int = 1, gpus: float = 0) -> Executor:
    """The executor called ``name`` (``cpus``/``gpus``: what one cell asks of Ray); an engine that is
    not installed is one line naming its extra."""
    if name == "local":
        return LocalExecutor(max_parallel)
    if name == "ray":
        try:
            from fiberlab.sweep.ray_executor import RayExecutor
        except ImportError as e:
            raise BadInput(f"--executor ray needs Ray: pip install -c constraints.txt 'fiberlab[ray]' ({e})") from None
        return RayExecutor(max_parallel=max_parallel, address=ray_address, num_cpus=cpus, num_gpus=gpus)
    if name == "skypilot":
        raise BadInput("--executor skypilot writes task files to launch with 'sky jobs launch'; it does not run cells here (see docs/sweeps.md)")
    raise BadInput(f"bad value {name!r} for --executor: {', '.join(EXECUTORS)} is allowed")
