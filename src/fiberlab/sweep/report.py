"""The report of a finished (or partly finished) sweep: tables, figures and aggregates over envs.

``write_report(SWEEP_DIR)`` reads ``SWEEP_DIR/index.json`` and each done cell's ``metrics.jsonl``
(only cells with status ``done`` are reported; the others are counted) and writes, into
``SWEEP_DIR/report/`` unless told otherwise:

- ``report.md``, ``report.csv``, ``report.tex`` (booktabs) and ``summary.json`` (every number, nan
  written as ``null``): one row per variant over its seeds: done / no data / failed / pending
  counts, final value and AUC as mean ± 95 % Student-t half-width, steps to convergence over the
  seeds that converged (and how many did), wall time, SPS and parameter count;
- figures as PNG and PDF: learning curves, final value per variant and, where they apply, scaling
  with params and with ``policy.d_hidden`` / ``policy.num_layers``, the ``^`` comparison, env
  difficulty and the aggregates over envs. Figures that do not apply are listed in
  ``summary.json["skipped_figures"]`` with the reason.

Per-run numbers come from :mod:`fiberlab.sweep.stats` (final value = mean over the last 10 % of the
steps; AUC = mean height; convergence detector documented there). Higher is better for the metric.
The best variant of each comparison group (all variants, or those of one env when ``env.name`` is an
axis, since returns of different envs do not compare) is marked only when its t interval does not
overlap the runner-up's; otherwise a note says the top two are not separated.

Aggregates (when ``env.name`` is an axis): per architecture (the variant without its env), final
values are min-max normalised per env, ``(x - lo) / (hi - lo)``, with ``lo``/``hi`` the smallest and
largest per-seed final value observed in that env across the whole sweep unless ``score_ranges``
gives a known range (e.g. random and best possible return); a zero range normalises to 0. The
``[runs, envs]`` matrix keeps, per env, the lowest-numbered ``n`` done seeds with ``n`` the smallest
count done across the architecture's envs (a rectangular matrix; the rest are counted as dropped);
IQM and mean get stratified-bootstrap 95 % percentile intervals.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fiberlab.atomic import write_json_atomic, write_text_atomic
from fiberlab.errors import BadInput
from fiberlab.sweep.index import read_index
from fiberlab.sweep.report_data import (
    CONFIDENCE,
    aggregates,
    caret_pairs,
    cell_counts,
    find_caret_groups,
    is_task_axis,
    load_cells,
    mark_best,
    variant_rows,
)
from fiberlab.sweep.report_figures import draw_figures
from fiberlab.sweep.report_tables import csv_text, latex, markdown, tex_escape

__all__ = ["CONVENTIONS", "tex_escape", "write_report"]

CONVENTIONS = {
    "final": "mean of the metric over the last 10 % of the agent steps of each run (at least one point)",
    "auc": "trapezoid area under the metric divided by the run's step range (mean height)",
    "convergence": (
        "trailing moving mean over max(1, n // 20) points; converged at the first step from which the "
        "smoothed curve stays within 5 % of its range of the final value, the step being where that "
        "smoothing window starts; not converged when it settles only inside the last 10 % of steps"
    ),
    "interval": "mean ± half-width of the 95 % Student-t interval over seeds (n = 1: no interval, shown as n/a)",
    "best": "marked only when the best variant's interval does not overlap the runner-up's (per env when env.name is an axis)",
    "aggregates": (
        "per env min-max normalisation by the smallest and largest per-seed final value observed in that env "
        "(or a given range); IQM (floor(0.25 n) trimmed from each end) and mean over the [runs, envs] matrix "
        "with stratified-bootstrap 95 % percentile intervals ({reps} replicates)"
    ),
    "learning_curves": (
        "each seed smoothed (trailing moving mean over max(1, n // 20) epochs), interpolated on the variant's "
        "step grid; mean over the seeds present with a 95 % t band"
    ),
}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x



def write_report(
    sweep_dir: str | Path,
    metric: str | None = "episode_return",
    out: str | Path | None = None,
    *,
    score_ranges: Mapping[str, tuple[float, float]] | None = None,
    reps: int = 2000,
) -> dict[str, Path]:
    """Write the report of ``sweep_dir`` into ``out`` (default ``sweep_dir/report/``).

    ``metric`` None means the index's metric. ``score_ranges`` maps an env name to a known
    ``(low, high)`` (e.g. random and best possible return) for the normalisation of the aggregates.
    Returns ``{file name: path}`` of everything written. Raises BadInput (one line) for a folder
    without ``index.json``, a sweep with no done cell, or a metric no done cell logs.
    """
    sweep_dir = Path(sweep_dir)
    index = read_index(sweep_dir)
    metric = metric or str(index.get("metric") or "episode_return")
    cells, logged = load_cells(sweep_dir, index, metric)
    counts = cell_counts(cells)
    if counts["done"] == 0:
        raise BadInput(
            f"sweep {sweep_dir} has no done cells ({counts['failed']} failed, {counts['pending']} pending, "
            f"{counts['running']} running of {counts['total']}); a report needs at least one"
        )
    if counts["done_with_data"] == 0:
        have = ", ".join(sorted(logged)[:15]) or "none (no metrics.jsonl with rows)"
        raise BadInput(f"metric {metric!r} has no values in any done cell of {sweep_dir}; metrics logged: {have}")
    axes = list(index.get("axes") or dict.fromkeys(k for c in cells for k in c.axes))
    task_axes = [k for k in axes if is_task_axis(k)]
    rows = variant_rows(cells, task_axes)
    if task_axes:  # rows of one env together, the envs in index order
        envs = list(dict.fromkeys(r["group"] for r in rows))
        rows.sort(key=lambda r: envs.index(r["group"]))
    best = mark_best(rows)
    agg = aggregates(cells, rows, score_ranges, reps) if task_axes else None
    caret_groups = find_caret_groups(rows)
    caret = caret_pairs(caret_groups)

    out_dir = Path(out) if out is not None else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    figures, skipped = draw_figures(rows, cells, {**index, "axes": axes}, metric, agg, caret_groups, out_dir)
    written: dict[str, Path] = {p.name: p for paths in figures.values() for p in paths}

    md, csv_path, tex, summ = (out_dir / n for n in ("report.md", "report.csv", "report.tex", "summary.json"))
    conventions = {**CONVENTIONS, "aggregates": CONVENTIONS["aggregates"].format(reps=reps)}
    write_text_atomic(md, markdown(index, metric, rows, best, cells, agg, caret, figures, skipped, conventions))
    write_text_atomic(csv_path, csv_text(rows, axes))
    write_text_atomic(tex, latex(index, metric, rows))
    summary = {
        "sweep": index.get("sweep"), "spec_hash": index.get("spec_hash"), "metric": metric,
        "budget": index.get("budget"), "axes": axes, "confidence": CONFIDENCE, "counts": counts,
        "conventions": conventions,
        "variants": rows,
        "best": best,
        "cells": [
            {"name": c.name, "variant": c.variant, "seed": c.seed, "status": c.status,
             "run_dir": c.raw.get("run_dir"),
             "final": c.final, "auc": c.auc, "convergence": c.convergence, "wall_time": c.wall_time,
             "sps": c.sps, "params": c.params, "points": len(c.values), "nonfinite_points": c.nonfinite,
             "no_data": c.no_data, "exit_code": c.raw.get("exit_code"), "error": c.raw.get("error")}
            for c in cells
        ],
        "aggregates": agg,
        "caret_pairs": caret,
        "figures": {k: [p.name for p in v] for k, v in figures.items()},
        "skipped_figures": skipped,
    }
    write_json_atomic(summ, _jsonable(summary))
    written.update({"report.md": md, "report.csv": csv_path, "report.tex": tex, "summary.json": summ})
    return written
