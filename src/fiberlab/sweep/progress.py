"""The sweep's live table on a terminal: one row per cell (status, step, return, SPS, ETA),
refreshed from the index and the cells' own ``metrics.jsonl`` every few seconds. Off a terminal the
runner's plain lines (one per start, finish and failure) are the progress.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from fiberlab.sweep.index import SweepIndex

REFRESH_S = 2.0


def _last_row(run_dir: Path) -> dict[str, Any]:
    from fiberlab.rl.logging import read_metrics

    rows = read_metrics(run_dir)
    returns = [r["episode_return"] for r in rows if r.get("episode_return") is not None]
    return {**(rows[-1] if rows else {}), "return": returns[-1] if returns else None}


class LiveTable:
    """A rich table of every cell, redrawn by a background thread while the executor runs."""

    def __init__(self, index: SweepIndex, budget: int, enabled: bool | None = None) -> None:
        self.index, self.budget = index, budget
        self.enabled = sys.stdout.isatty() if enabled is None else enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def table(self):
        from rich.table import Table

        t = Table(title=f"fiberlab sweep: {self.index.spec.name}")
        for col in ("cell", "status", "step", "return", "SPS", "ETA"):
            t.add_column(col, justify="left" if col in ("cell", "status") else "right")
        for rec in self.index.records.values():
            row = _last_row(self.index.sweep_dir / rec.run_dir) if rec.status in ("running", "done") else {}
            step, sps = row.get("agent_step"), row.get("sps")
            eta = f"{(self.budget - step) / sps:.0f}s" if rec.status == "running" and step and sps and self.budget else "-"
            ret = row.get("return")
            t.add_row(rec.name, rec.status, f"{step:,}" if step else "-", f"{ret:.3f}" if ret is not None else "-",
                      f"{sps:,.0f}" if sps else "-", eta)
        return t

    def __enter__(self) -> LiveTable:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        from rich.live import Live

        with Live(self.table(), refresh_per_second=1, transient=False) as live:
            while not self._stop.wait(REFRESH_S):
                live.update(self.table())
            live.update(self.table())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
