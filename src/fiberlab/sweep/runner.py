"""Run, plan and inspect a sweep.

:func:`run_sweep` builds and validates every cell, opens the sweep's index, skips the cells whose
run already reached the budget, and hands the rest to an executor; each result is recorded as it
arrives. Rerunning the same command finishes an interrupted sweep (the trainer resumes each run
from its newest checkpoint) and runs only the cells a grown spec adds.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fiberlab.errors import BadInput, first_line
from fiberlab.rl.run_dir import run_finished
from fiberlab.sweep.cell import CellJob, CellResult
from fiberlab.sweep.cells import Cell, build_cells
from fiberlab.sweep.executors import Executor, LocalExecutor
from fiberlab.sweep.index import SweepIndex, read_index
from fiberlab.sweep.progress import LiveTable
from fiberlab.sweep.spec import SweepSpec


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


@dataclass
class SweepOutcome:
    sweep_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished
    failed: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What ``--dry-run`` prints: the cells, what is left to run, and what it costs."""

    cells: list[Cell]
    todo: list[Cell]
    steps_per_cell: int
    sps: float | None  # per cell, for the hours estimate

    @property
    def agent_steps(self) -> int:
        return self.steps_per_cell * len(self.todo)

    def hours(self, parallel: int = 1) -> float | None:
        """Wall hours for the cells left, ``parallel`` at a time at ``sps`` each."""
        if not self.sps:
            return None
        return self.agent_steps / (self.sps * max(1, min(parallel, len(self.todo) or 1))) / 3600


def plan_sweep(spec: SweepSpec, train_dir: str | Path, sps: float | None = None) -> Plan:
    """Every cell (validated) and the ones not finished yet. ``sps``: per-cell speed for the cost;
    without it, the median SPS the sweep's finished cells recorded, if any."""
    cells = build_cells(spec, train_dir)
    sweep_dir = Path(train_dir) / spec.name
    todo = [c for c in cells if not run_finished(sweep_dir / c.name, c.config.trainer.total_timesteps)]
    if sps is None and (sweep_dir / "index.json").is_file():
        seen = sorted(r["sps"] for r in read_index(sweep_dir)["cells"] if r.get("sps"))
        sps = seen[len(seen) // 2] if seen else None
    steps = cells[0].config.trainer.total_timesteps if cells else 0
    return Plan(cells, todo, steps, sps)


def run_sweep(spec: SweepSpec, train_dir: str | Path = "./train_dir", executor: str = "local", max_parallel: int | None = None,
              retries: int = 0, force: bool = False, ray_address: str | None = None, log: Callable[[str], Any] = print,
              live: bool | None = None) -> SweepOutcome:
    """Run the cells of ``spec`` not finished yet under ``train_dir/<spec.name>/``; return what happened.

    ``live``: the live table of every cell (default: when stdout is a terminal)."""
    plan = plan_sweep(spec, train_dir)
    sweep_dir = Path(train_dir) / spec.name
    engine = get_executor(executor, max_parallel, ray_address, spec.resources.cpus, spec.resources.gpus)
    index = SweepIndex.open(sweep_dir, spec, plan.cells, force=force)
    outcome = SweepOutcome(sweep_dir)
    todo_names = {c.name for c in plan.todo}
    for cell in plan.cells:
        if cell.name not in todo_names:
            outcome.skipped.append(cell.name)
            if index.records[cell.name].status != "done":  # finished, but the index did not know (a lost index)
                index.update(cell.name, status="done")
    log(f"[sweep {spec.name}] {len(plan.cells)} cells: {len(plan.todo)} to run, {len(outcome.skipped)} finished; executor {executor}")
    started: dict[str, float] = {}

    def on_start(name: str, attempt: int) -> None:
        started[name] = time.time()
        index.update(name, status="running", attempts=index.records[name].attempts + 1)
        log(f"[sweep {spec.name}] start {name} (attempt {attempt})")

    def on_result(result: CellResult, attempt: int) -> None:
        index.update(result.name, status=result.status, exit_code=result.exit_code, error=result.error,
                     wall_time=round(result.wall_time, 3), sps=result.sps, agent_step=result.agent_step, params=result.params)
        if result.status == "done":
            outcome.ran.append(result.name)
            log(f"[sweep {spec.name}] done  {result.name} in {result.wall_time:.1f} s ({result.sps or 0:,.0f} SPS)")
        else:
            log(f"[sweep {spec.name}] FAILED {result.name} (attempt {attempt}, exit {result.exit_code}): {first_line(result.error or '')}")

    jobs = [CellJob(c.name, c.config.model_dump()) for c in plan.todo]
    with LiveTable(index, plan.steps_per_cell, enabled=live):
        engine.run(jobs, retries, on_start, on_result)
    outcome.failed = [n for n in todo_names if index.records[n].status == "failed"]
    counts = index.counts()
    log(f"[sweep {spec.name}] {counts['done']} done, {counts['failed']} failed, {counts['pending'] + counts['running']} not run: {sweep_dir / 'index.json'}")
    return outcome


def sweep_status(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The index's cells, each with its newest step read from its run folder (live for running ones)."""
    from fiberlab.rl.logging import read_metrics

    data = read_index(sweep_dir)
    rows = []
    for record in data["cells"]:
        metrics = read_metrics(Path(sweep_dir) / record["run_dir"])
        last = metrics[-1] if metrics else {}
        returns = [m["episode_return"] for m in metrics if m.get("episode_return") is not None]
        rows.append({**record, "step": last.get("agent_step"), "return": returns[-1] if returns else None})
    return rows
