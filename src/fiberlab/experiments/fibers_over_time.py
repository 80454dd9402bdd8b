"""Fibers per layer at every checkpoint of a run: how the collapsible structure grows with training."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fiberlab.atomic import save_figure_atomic, write_text_atomic
from fiberlab.errors import BadInput
from fiberlab.fibration import Thresholds, find_fibers, layer_graph
from fiberlab.rl.run_dir import list_checkpoints


def _thresholds(thresholds: Thresholds | dict | None) -> Thresholds:
    return thresholds if isinstance(thresholds, Thresholds) else Thresholds(**(thresholds or {}))


def _layer_widths(run_dir: Path, thresholds: Thresholds) -> tuple[list[dict[str, Any]], dict[str, int]]:
    from fiberlab.checkpoint import load

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput(f"run folder not found: {run_dir}")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise BadInput(f"no checkpoints in {run_dir / 'checkpoints'}")
    rows: list[dict[str, Any]] = []
    units: dict[str, int] = {}
    for epoch, step, path in ckpts:
        policy = load(path).policy
        outputs = {layer.name for layer in layer_graph(policy) if layer.kind == "out"}
        widths = {k: v for k, v in find_fibers(policy, thresholds).widths().items() if k not in outputs}
        row: dict[str, Any] = {"epoch": epoch, "agent_step": step}
        for name, (n_units, n_fibers) in widths.items():
            units.setdefault(name, n_units)
            row[name] = n_fibers
        total_units = sum(u for u, _ in widths.values())
        row["nodes"] = sum(f for _, f in widths.values())
        row["units"] = total_units
        row["node_fraction"] = row["nodes"] / total_units if total_units else 1.0
        rows.append(row)
    return rows, units


def fibers_over_time(run_dir: str | Path, thresholds: Thresholds | dict | None = None) -> list[dict[str, Any]]:
    """One row per checkpoint, oldest first: ``epoch``, ``agent_step``, the fiber count of every
    hidden layer (key = layer name; the kept actor/value output layers are left out, as in
    ``fibration.controls.node_count``), ``nodes`` (fibers summed over those layers), ``units``
    (their units summed) and ``node_fraction`` (= nodes / units).

    Raises BadInput when ``run_dir`` is missing or holds no checkpoint.
    """
    return _layer_widths(Path(run_dir), _thresholds(thresholds))[0]


def _columns(rows: list[dict[str, Any]], layers: list[str]) -> list[str]:
    return ["epoch", "agent_step", *layers, "nodes", "units", "node_fraction"]


def write_fibers_over_time(
    run_dir: str | Path, thresholds: Thresholds | dict | None = None, out_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """Write ``fibers_over_time.csv`` and ``fibers_over_time.png`` (fibers / width per layer against
    agent steps) into ``out_dir`` (default: the run folder); returns (csv_path, png_path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    thr = _thresholds(thresholds)
    rows, units = _layer_widths(run_dir, thr)
    layers = list(units)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows, layers), restval="", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    csv_path = out / "fibers_over_time.csv"
    write_text_atomic(csv_path, buf.getvalue())

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    steps = [r["agent_step"] for r in rows]
    marker = "o" if len(rows) <= 30 else None
    for name in layers:
        pts = [(s, r[name] / units[name]) for s, r in zip(steps, rows) if name in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=3, lw=1.5, label=f"{name} ({units[name]})")
    ax.plot(steps, [r["node_fraction"] for r in rows], color="black", ls="--", lw=1.5, label="all layers")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("fibers / layer width")
    ax.set_ylim(0, 1.05)
    t = thr.model_dump()
    ax.set_title(f"{run_dir.name}: fibers over training\nthresholds " + ", ".join(f"{k}={v:g}" for k, v in t.items()), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    png_path = save_figure_atomic(fig, out / "fibers_over_time.png")
    return csv_path, png_path
