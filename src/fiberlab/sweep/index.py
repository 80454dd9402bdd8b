"""The sweep folder's record: ``train_dir/<sweep>/spec.json`` (the resolved spec) and ``index.json``
(one entry per cell: status, attempts, exit code, the error's last lines, wall time, SPS, steps).

Only the orchestrating process writes it, atomically (temporary name, then rename), after every
change, so a killed sweep leaves a readable index; a rerun trusts the run folders (their
checkpoints) over a ``running`` status the kill left behind.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fiberlab.atomic import write_json_atomic
from fiberlab.errors import BadInput, first_line
from fiberlab.sweep.cells import Cell
from fiberlab.sweep.spec import SweepSpec

STATUSES = ("pending", "running", "done", "failed")


@dataclass
class CellRecord:
    """One cell's line in ``index.json`` (the report reads the same fields)."""

    name: str
    variant: str
    axes: dict[str, Any]
    seed: int
    run_dir: str  # relative to the sweep folder
    status: str = "pending"
    attempts: int = 0
    exit_code: int | None = None
    error: str | None = None
    wall_time: float | None = None
    sps: float | None = None
    agent_step: int | None = None
    params: int | None = None


class SweepIndex:
    """``index.json`` of one sweep folder, kept in memory and rewritten whole on every update."""

    def __init__(self, sweep_dir: Path, spec: SweepSpec, records: dict[str, CellRecord]) -> None:
        self.sweep_dir, self.spec, self.records = Path(sweep_dir), spec, records

    @classmethod
    def open(cls, sweep_dir: str | Path, spec: SweepSpec, cells: list[Cell], force: bool = False) -> SweepIndex:
        """The sweep's index with an entry for every cell of ``spec``; entries of cells the spec no
        longer names are kept (their runs exist). A different base than the recorded one is refused
        unless ``force``: old and new cells would not be comparable."""
        sweep_dir = Path(sweep_dir)
        old = read_index(sweep_dir) if (sweep_dir / "index.json").is_file() else None
        if old is not None and old.get("base_hash") != spec.base_hash() and not force:
            raise BadInput(f"sweep {spec.name} in {sweep_dir} was run with another base or budget (base hash {old.get('base_hash')} != {spec.base_hash()}): "
                           "use another sweep name, or --force to run the changed cells anyway")
        records = {r["name"]: CellRecord(**r) for r in (old or {}).get("cells", [])}
        for cell in cells:
            if cell.name not in records:
                records[cell.name] = CellRecord(cell.name, cell.variant, dict(cell.axes), cell.seed, run_dir=cell.name)
        index = cls(sweep_dir, spec, records)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sweep_dir / "spec.json", spec.model_dump())
        index.save()
        return index

    def update(self, name: str, **fields: Any) -> None:
        record = self.records[name]
        for key, value in fields.items():
            setattr(record, key, value)
        self.save()

    def save(self) -> None:
        spec = self.spec
        keys = list(spec.axes) + [k for group in spec.zip for k in group]
        write_json_atomic(self.sweep_dir / "index.json", {
            "sweep": spec.name, "spec_hash": spec.spec_hash(), "base_hash": spec.base_hash(), "metric": spec.metric,
            "axes": keys, "budget": spec.budget, "cells": [asdict(r) for r in self.records.values()],
        })

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.records.values()) for s in STATUSES}


def read_index(sweep_dir: str | Path) -> dict[str, Any]:
    """The raw ``index.json`` of a sweep folder; missing or unreadable: one BadInput line."""
    path = Path(sweep_dir) / "index.json"
    if not path.is_file():
        raise BadInput(f"{sweep_dir}: not a sweep folder (no index.json); run 'fiberlab sweep run SPEC' first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: unreadable ({first_line(e)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise BadInput(f"{path}: not a sweep index (no 'cells' list)")
    return data
