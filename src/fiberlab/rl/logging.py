"""Where a run's numbers go: metrics.jsonl (always), TensorBoard, W&B, and the console.

``metrics.jsonl`` is the source of truth (one JSON object per epoch); everything else mirrors it.
Both writers are trainer callbacks (:mod:`fiberlab.rl.callbacks`) fed the same metrics row.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fiberlab.config import TrainConfig
from fiberlab.rl.callbacks import Callback


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsLogger(Callback):
    """Appends one JSON line per epoch and mirrors it to TensorBoard and W&B when enabled."""

    def __init__(self, run_dir: Path, cfg: TrainConfig) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.wandb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed: skipping TensorBoard events (pip install tensorboard)", file=sys.stderr)
        if cfg.wandb.enabled:
            os.environ.setdefault("WANDB_MODE", cfg.wandb.mode)
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(project=cfg.wandb.project, name=cfg.run, dir=str(run_dir), config=cfg.model_dump(), resume="allow",
                                    id=f"{cfg.wandb.group}--{cfg.run}" if cfg.wandb.group else cfg.run,  # a cell's name repeats across sweeps
                                    group=cfg.wandb.group, tags=cfg.wandb.tags or None)

    def log(self, row: dict[str, Any]) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        step = row["agent_step"]
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and v is not None and k != "agent_step":
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if v is not None}, step=step)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.log(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All epochs of ``run_dir/metrics.jsonl`` (skips a torn last line from a killed run)."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class LiveProgress:
    """The console side of any long job: a live rich table of ``keys`` on a terminal, one plain line
    at most every 2 s elsewhere (CI, pipes, files), or nothing (``mode="none"``).

    ``mode="auto"`` picks rich on a terminal and plain otherwise. ``plain(row)`` formats the plain
    line. Used by training (:class:`ProgressDisplay`) and by ``fiberlab ad collect``.
    """

    def __init__(self, mode: str, title: str, keys: tuple[str, ...], plain: Callable[[dict[str, Any]], str]) -> None:
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode, self.title, self.keys, self.plain = mode, title, keys, plain
        self.last_plain = 0.0
        self.live = None
        if mode == "rich":
            from rich.live import Live

            self.live = Live(self._table({}), refresh_per_second=4, transient=False)
            self.live.start()

    def _table(self, row: dict[str, Any]) -> Any:
        from rich.table import Table

        t = Table(title=self.title, show_header=False)
        for k in self.keys:
            t.add_row(k, _fmt(row.get(k)))
        return t

    def update(self, row: dict[str, Any], force: bool = False) -> None:
        """Show ``row``; a plain line only if 2 s have passed since the last one, or ``force``."""
        if self.live is not None:
            self.live.update(self._table(row))
        elif self.mode == "plain":
            now = time.time()
            if force or now - self.last_plain >= 2.0:
                self.last_plain = now
                print(self.plain(row), flush=True)

    def say(self, line: str) -> None:
        """One message line (above the live table on a terminal)."""
        if self.mode == "none":
            return
        if self.live is not None:
            self.live.console.print(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class ProgressDisplay(Callback):
    """Training's console: step, epoch, speed, the latest episode return and the time left."""

    def __init__(self, mode: str, total_steps: int, run: str) -> None:
        self.total, self.run = total_steps, run
        self.last_return: float | None = None  # episodes end in bursts: show the latest known
        self.display = LiveProgress(mode, f"fiberlab train: {run}", ("agent_step", "epoch", "sps", "episode_return", "episode_length", "eta"),
                                    lambda r: (f"[{run}] step {r['agent_step']}/{total_steps} epoch {r['epoch']} "
                                               f"sps {_fmt(r.get('sps'))} return {_fmt(r.get('episode_return'))} eta {r['eta']}"))

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        sps = row.get("sps") or 0
        eta = (self.total - row["agent_step"]) / sps if sps else None
        if row.get("episode_return") is not None:
            self.last_return = row["episode_return"]
        row = {**row, "eta": f"{max(eta, 0):.0f}s" if eta is not None else None, "episode_return": self.last_return}
        self.display.update(row, force=row["agent_step"] >= self.total)

    def close(self) -> None:
        self.display.close()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)
