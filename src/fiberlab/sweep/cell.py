"""One cell's work, wherever it runs (a local worker process, a Ray task): train its run and say
how it went. A failure is returned, not raised, so every executor records it the same way.
"""
from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ERROR_LINES = 5  # the last lines of a failure's traceback kept in the index


@dataclass(frozen=True)
class CellJob:
    """What a worker needs: the cell's name and its fully resolved run config (a plain dict, so it
    pickles to any process or node)."""

    name: str
    config: dict[str, Any]


@dataclass(frozen=True)
class CellResult:
    name: str
    status: str  # "done" | "failed"
    exit_code: int
    error: str | None
    wall_time: float
    sps: float | None
    agent_step: int | None
    params: int | None


# what every executor reports, attempt by attempt
OnStart = Callable[[str, int], None]  # (cell name, attempt)
OnResult = Callable[[CellResult, int], None]  # (result, attempt)


def run_cell(job: CellJob) -> CellResult:
    """Train the cell's run (resuming it if its folder has checkpoints) and summarise it.

    ``sps`` is the mean of the epochs' SPS after the first (the warm-up), as the training benchmark
    counts it; the exit code is what ``fiberlab train`` would return (2 bad input, 1 failed work).
    """
    from fiberlab.config import TrainConfig
    from fiberlab.errors import FiberlabError, first_line
    from fiberlab.rl.logging import read_metrics
    from fiberlab.rl.trainer import Trainer

    t0 = time.time()
    try:
        cfg = TrainConfig.model_validate(job.config)
        result = Trainer(cfg).train()
    except Exception as e:  # recorded in the index; the sweep goes on
        code = e.exit_code if isinstance(e, FiberlabError) else 1
        tail = traceback.format_exception(e)[-ERROR_LINES:] if not isinstance(e, FiberlabError) else []
        message = f"{type(e).__name__}: {first_line(e)}"
        error = message if not tail else message + "\n" + "".join(tail).rstrip()
        return CellResult(job.name, "failed", code, error, time.time() - t0, None, None, None)
    rows = read_metrics(result.run_dir)
    sps = [r["sps"] for r in rows[1:] if r.get("sps")] or [r["sps"] for r in rows if r.get("sps")]
    params = sum(p.numel() for p in result.policy.parameters()) if result.policy is not None else None
    return CellResult(job.name, "done", 0, None, time.time() - t0, statistics.fmean(sps) if sps else None, result.agent_step, params)
