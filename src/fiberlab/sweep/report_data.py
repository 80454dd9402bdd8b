"""The numbers of a sweep report: reading the sweep and computing everything the report shows.

Reads the index's cells and each done cell's ``metrics.jsonl`` into :class:`Cell` objects with their
per-run numbers (from :mod:`fiberlab.sweep.stats`), groups them into one row per variant with mean and
95 % Student-t intervals over seeds, marks the best variant of each comparison group when separated
from the runner-up, computes the normalised aggregates over envs (IQM and mean with stratified-bootstrap
intervals) and finds the variants differing only by ``^`` in ``policy.pattern``. Nothing here formats
text, draws or writes files.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fiberlab.errors import BadInput
from fiberlab.rl.logging import read_metrics
from fiberlab.sweep import stats

CONFIDENCE = 0.95
TASK_AXIS = "env.name"
TASK_PREFIX = "env."  # every env.* axis says which task a cell ran (env.name, a curriculum, a level)


def is_task_axis(key: str) -> bool:
    return key.startswith(TASK_PREFIX)


def task_of(axes: Mapping[str, Any]) -> str:
    """The task a cell ran, from its env.* axis values: the env name alone when that is the only
    one (``popgym.RepeatPreviousEasy``), else the name then ``knob=value`` for the others
    (``mettagrid.assembly_lines curriculum=level_0``)."""
    keys = [k for k in axes if is_task_axis(k)]
    parts = [str(axes[TASK_AXIS])] if TASK_AXIS in keys else []
    parts += [f"{k.split('.')[-1]}={axes[k]}" for k in keys if k != TASK_AXIS]
    return " ".join(parts)
PATTERN_AXIS = "policy.pattern"
SCALING_AXES = ("policy.d_hidden", "policy.num_layers")


@dataclass
class Cell:
    name: str
    variant: str
    axes: dict[str, Any]
    seed: Any
    status: str
    run_dir: Path | None
    raw: dict[str, Any]
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nonfinite: int = 0
    final: float | None = None
    auc: float | None = None
    convergence: float | None = None
    convergence_wall: float | None = None  # seconds of the run's wall clock at the convergence step
    wall_time: float | None = None
    sps: float | None = None
    params: int | None = None
    no_data: str | None = None  # reason, for a done cell without values of the metric

    @property
    def has_data(self) -> bool:
        return self.status == "done" and self.no_data is None


# ---------------------------------------------------------------- reading


def num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _variant_name(raw: dict[str, Any], axes: dict[str, Any]) -> str:
    v = raw.get("variant")
    if isinstance(v, str) and v:
        return v
    return ".".join(f"{k}={val}" for k, val in axes.items()) or "(all)"


def load_cells(sweep_dir: Path, index: dict[str, Any], metric: str) -> tuple[list[Cell], set[str]]:
    """Every cell of the index; done cells get their curve and per-run numbers. Also the metric
    names logged by done cells (for the unknown-metric message)."""
    cells: list[Cell] = []
    logged: set[str] = set()
    for i, raw in enumerate(index["cells"]):
        if not isinstance(raw, dict):
            raise BadInput(f"cell {i} of index.json is not an object; a JSON object per cell is allowed")
        axes = raw.get("axes") if isinstance(raw.get("axes"), dict) else {}
        rd = raw.get("run_dir")
        cell = Cell(
            name=str(raw.get("name", f"cell{i}")), variant=_variant_name(raw, axes), axes=dict(axes),
            seed=raw.get("seed"), status=str(raw.get("status", "pending")),
            run_dir=(sweep_dir / str(rd)) if rd else None, raw=raw,
            wall_time=num(raw.get("wall_time")), sps=num(raw.get("sps")),
            params=int(raw["params"]) if num(raw.get("params")) is not None else None,
        )
        cells.append(cell)
        if cell.status != "done":
            continue
        if cell.run_dir is None:
            cell.no_data = "no run_dir in index.json"
            continue
        rows = read_metrics(cell.run_dir)
        if not rows:
            cell.no_data = "metrics.jsonl missing" if not (cell.run_dir / "metrics.jsonl").is_file() else "metrics.jsonl empty"
            continue
        for r in rows:
            logged.update(k for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        pts = [(r.get("agent_step"), r.get(metric)) for r in rows if isinstance(r, dict)]
        pts = [(num(s), v) for s, v in pts if v is not None and num(s) is not None]
        vals = [num(v) for _, v in pts]
        cell.nonfinite = sum(v is None for v in vals)
        good = [(s, v) for (s, _), v in zip(pts, vals, strict=True) if v is not None]
        if not good:
            cell.no_data = f"no finite '{metric}' values in metrics.jsonl"
            continue
        cell.steps = np.array([s for s, _ in good], dtype=float)
        cell.values = np.array([v for _, v in good], dtype=float)
        order = np.argsort(cell.steps, kind="stable")
        cell.steps, cell.values = cell.steps[order], cell.values[order]
        cell.final = stats.final_value(cell.steps, cell.values)
        cell.auc = stats.area_under_curve(cell.steps, cell.values)
        cell.convergence = stats.steps_to_convergence(cell.steps, cell.values)
        cell.convergence_wall = _wall_at(rows, cell.convergence)
        if cell.wall_time is None:
            walls = [num(r.get("wall_time")) for r in rows]
            walls = [w for w in walls if w is not None]
            cell.wall_time = walls[-1] if walls else None
        if cell.sps is None:
            rates = [num(r.get("sps")) for r in rows]
            rates = [x for x in rates if x is not None]
            cell.sps = float(np.mean(rates)) if rates else None
    return cells, logged


def _wall_at(rows: list[dict[str, Any]], step: float | None) -> float | None:
    """The run's wall time (its own clock, ``wall_time`` of metrics.jsonl) at agent step ``step``,
    interpolated linearly between the logged rows; None without a step or without wall times."""
    if step is None:
        return None
    pts = sorted((s, w) for r in rows if (s := num(r.get("agent_step"))) is not None and (w := num(r.get("wall_time"))) is not None)
    if not pts:
        return None
    return float(np.interp(step, [s for s, _ in pts], [w for _, w in pts]))


# ---------------------------------------------------------------- per-variant table


def _ci(values: list[float]) -> dict[str, Any]:
    mean, half = stats.t_interval(values, CONFIDENCE) if values else (math.nan, math.nan)
    return {"mean": mean, "half": half, "low": mean - half, "high": mean + half, "n": len(values)}


def variant_rows(cells: list[Cell], task_axes: list[str]) -> list[dict[str, Any]]:
    by_variant: dict[str, list[Cell]] = {}
    for c in cells:
        by_variant.setdefault(c.variant, []).append(c)
    rows = []
    for name, group in by_variant.items():
        data = sorted((c for c in group if c.has_data), key=lambda c: (str(type(c.seed)), c.seed))
        axes = dict(group[0].axes)
        params = sorted({c.params for c in group if c.params is not None})
        conv = [c.convergence for c in data if c.convergence is not None]
        conv_wall = [c.convergence_wall for c in data if c.convergence_wall is not None]
        walls = [c.wall_time for c in data if c.wall_time is not None]
        rates = [c.sps for c in data if c.sps is not None]
        status = [c.status for c in group]
        rows.append({
            "variant": name,
            "axes": axes,
            "group": " ".join(f"{k}={axes.get(k)}" for k in task_axes) or None,
            "architecture": ".".join(f"{k}={v}" for k, v in axes.items() if k not in task_axes) or "(all)",
            "cells": len(group),
            "done": len(data),
            "no_data": sum(c.status == "done" and not c.has_data for c in group),
            "failed": status.count("failed"),
            "pending": status.count("pending"),
            "running": status.count("running"),
            "other": sum(s not in ("done", "failed", "pending", "running") for s in status),
            "seeds": [c.seed for c in data],
            "finals": [c.final for c in data],
            "final": _ci([c.final for c in data]),
            "auc": _ci([c.auc for c in data]),
            "convergence": {**_ci(conv), "converged": len(conv), "of": len(data)},
            "convergence_wall": _ci(conv_wall),  # over the converged seeds, as "convergence"
            "wall_time": float(np.mean(walls)) if walls else None,
            "sps": float(np.mean(rates)) if rates else None,
            "params": params[0] if len(params) == 1 else (params or None),
            "best": False,
        })
    return rows


def mark_best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per comparison group: the best variant by final mean, marked only when separated from the runner-up."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for g, members in groups.items():
        ranked = sorted((r for r in members if r["done"] > 0), key=lambda r: -r["final"]["mean"])
        where = f" ({g})" if g else ""
        entry: dict[str, Any] = {"group": g, "best": None, "runner_up": None, "separated": False}
        if not ranked:
            entry["note"] = f"no variant{where} has done cells with data: no best marked"
        elif len(ranked) == 1:
            entry["note"] = f"only one variant{where} has data ({ranked[0]['variant']}): no best marked"
        else:
            a, b = ranked[0], ranked[1]
            sep = stats.intervals_separate(a["final"]["low"], a["final"]["high"], b["final"]["low"], b["final"]["high"])
            entry.update(best=a["variant"] if sep else None, runner_up=b["variant"], separated=sep, leader=a["variant"])
            if sep:
                a["best"] = True
                entry["note"] = (
                    f"best{where}: {a['variant']} (final {a['final']['mean']:.4g}); its 95 % interval does not "
                    f"overlap the runner-up's ({b['variant']}, {b['final']['mean']:.4g})"
                )
            else:
                why = " (an interval from one seed)" if a["final"]["n"] < 2 or b["final"]["n"] < 2 else ""
                entry["note"] = (
                    f"top variants{where} not separated: {a['variant']} ({a['final']['mean']:.4g}) and "
                    f"{b['variant']} ({b['final']['mean']:.4g}) have overlapping 95 % intervals{why}; no best marked"
                )
        out.append(entry)
    return out


# ---------------------------------------------------------------- aggregates over envs


def aggregates(
    cells: list[Cell], rows: list[dict[str, Any]], ranges: Mapping[str, tuple[float, float]] | None, reps: int
) -> dict[str, Any]:
    done = [c for c in cells if c.has_data]
    envs = list(dict.fromkeys(task_of(c.axes) for c in cells))
    finals_env: dict[str, list[float]] = {e: [] for e in envs}
    for c in done:
        finals_env[task_of(c.axes)].append(c.final)
    norm: dict[str, dict[str, Any]] = {}
    for e in envs:
        if ranges and e in ranges:
            lo, hi = (float(x) for x in ranges[e])
            norm[e] = {"low": lo, "high": hi, "source": "given"}
        elif finals_env[e]:
            norm[e] = {"low": min(finals_env[e]), "high": max(finals_env[e]), "source": "observed"}
    notes = [f"env {e}: all final values equal ({v['low']:.4g}); normalised to 0" for e, v in norm.items() if not v["high"] > v["low"]]
    archs: dict[str, dict[str, list[Cell]]] = {}
    for r in rows:
        archs.setdefault(r["architecture"], {})
    for c in done:
        arch = ".".join(f"{k}={v}" for k, v in c.axes.items() if not is_task_axis(k)) or "(all)"
        archs.setdefault(arch, {}).setdefault(task_of(c.axes), []).append(c)
    out_archs, skipped = [], []
    for arch, per_env in archs.items():
        missing = [e for e in envs if not per_env.get(e)]
        if missing:
            skipped.append({"architecture": arch, "reason": f"no done cells with data in env(s) {', '.join(missing)}"})
            continue
        n = min(len(per_env[e]) for e in envs)
        cols = []
        for e in envs:
            chosen = sorted(per_env[e], key=lambda c: (str(type(c.seed)), c.seed))[:n]
            cols.append(stats.minmax_normalise([c.final for c in chosen], norm[e]["low"], norm[e]["high"]))
        mat = np.stack(cols, axis=1)  # [runs, envs]
        iq = stats.stratified_bootstrap_ci(mat, stats.iqm, reps=reps, confidence=CONFIDENCE, seed=0)
        mn = stats.stratified_bootstrap_ci(mat, np.mean, reps=reps, confidence=CONFIDENCE, seed=0)
        dropped = sum(len(per_env[e]) for e in envs) - n * len(envs)
        out_archs.append({
            "architecture": arch, "runs_per_env": n, "dropped_runs": dropped,
            "iqm": dict(zip(("point", "low", "high"), iq, strict=True)), "mean": dict(zip(("point", "low", "high"), mn, strict=True)),
            "scores": mat.tolist(),
        })
        if n == 1:
            notes.append(f"{arch}: one run per env, so its bootstrap intervals have no width")
    return {"envs": envs, "normalisation": norm, "architectures": out_archs, "skipped": skipped, "notes": notes}


# ---------------------------------------------------------------- caret pairs


def find_caret_groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Variants with data whose policy.pattern differs only by ``^`` (all other axes equal), per group."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        pat = r["axes"].get(PATTERN_AXIS)
        if r["done"] == 0 or not isinstance(pat, str):
            continue
        others = tuple((k, str(v)) for k, v in r["axes"].items() if k != PATTERN_AXIS)
        groups.setdefault((pat.replace("^", ""), others), []).append(r)
    return [g for g in groups.values() if len({r["axes"][PATTERN_AXIS] for r in g}) > 1]


def caret_pairs(groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    pairs = []
    for g in groups:
        g = sorted(g, key=lambda r: (r["axes"][PATTERN_AXIS].count("^"), r["axes"][PATTERN_AXIS]))
        for i, a in enumerate(g):
            for b in g[i + 1 :]:
                fa, fb = a["final"], b["final"]
                pairs.append({
                    "a": a["variant"], "b": b["variant"],
                    "pattern_a": a["axes"][PATTERN_AXIS], "pattern_b": b["axes"][PATTERN_AXIS],
                    "final_a": fa["mean"], "final_b": fb["mean"], "difference": fb["mean"] - fa["mean"],
                    "separated": stats.intervals_separate(fa["low"], fa["high"], fb["low"], fb["high"]),
                })
    return pairs



def cell_counts(cells: list[Cell]) -> dict[str, int]:
    """How many cells there are in all and per status (done split by whether it has data)."""
    status = [c.status for c in cells]
    return {
        "total": len(cells), "done": status.count("done"), "done_with_data": sum(c.has_data for c in cells),
        "no_data": sum(c.status == "done" and not c.has_data for c in cells), "failed": status.count("failed"),
        "pending": status.count("pending"), "running": status.count("running"),
    }
