"""Where cells run. Every executor takes the same jobs and reports each attempt's result through
the same callbacks, so the runner's bookkeeping (index, retries recorded, progress) is one piece of
code; the executors themselves are existing engines, not a scheduler of ours:

- ``local``: ``concurrent.futures.ProcessPoolExecutor`` (spawned workers, one torch thread per run),
  ``max_parallel`` at a time; inline when ``max_parallel`` is 1.
- ``ray``: Ray Core tasks (``fiberlab.sweep.ray_executor``), when the ``ray`` extra is installed.
- ``skypilot`` does not run cells here: it writes task files to launch (``fiberlab.sweep.skypilot``).

:func:`fiberlab.sweep.runner.get_executor` picks one by name; :func:`drive` is the queue-and-retry
loop the pool and Ray share.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol

from fiberlab.sweep.cell import CellJob, CellResult, OnResult, OnStart, run_cell


class Executor(Protocol):
    def run(self, jobs: Sequence[CellJob], retries: int, on_start: OnStart, on_result: OnResult) -> None:
        """Run every job; a failed one is tried again up to ``retries`` more times."""


def drive(jobs: Sequence[CellJob], retries: int, limit: int, submit: Callable[[CellJob], Any],
          wait_any: Callable[[list[Any]], list[tuple[Any, CellResult]]], on_start: OnStart, on_result: OnResult) -> None:
    """The scheduling loop every engine shares: at most ``limit`` jobs submitted at once (so
    "running" in the index is true), each result reported as it arrives, a failed job put back at
    the front of the queue until it has had ``retries`` more attempts. ``submit`` returns a handle;
    ``wait_any`` blocks until some handles finish and returns them with their results."""
    queue = [(job, 1) for job in jobs]
    running: dict[Any, tuple[CellJob, int]] = {}
    while queue or running:
        while queue and len(running) < limit:
            job, attempt = queue.pop(0)
            on_start(job.name, attempt)
            running[submit(job)] = (job, attempt)
        for handle, result in wait_any(list(running)):
            job, attempt = running.pop(handle)
            on_result(result, attempt)
            if result.status != "done" and attempt <= retries:
                queue.insert(0, (job, attempt + 1))


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
        with ProcessPoolExecutor(max_workers=min(self.max_parallel, len(jobs)), mp_context=ctx) as pool:
            # run_cell returns failures; an exception from future.result() is a broken worker
            drive(jobs, retries, self.max_parallel, lambda job: pool.submit(run_cell, job),
                  lambda futures: [(f, f.result()) for f in wait(futures, return_when=FIRST_COMPLETED)[0]], on_start, on_result)
