"""Return against agent steps of several runs on one plot, seeds averaged (the Metta validation plot).

Runs whose names differ only by a ``_seed<N>`` (trailing, or before ``_epoch_<E>_`` in a run derived
from a seed's checkpoint), or share a name across train_dirs, form one group: each seed's return curve is smoothed (trailing moving mean over ``len // 20`` epochs, as in
the learning-curve plot), interpolated onto the group's step grid, and averaged; the band is ±1 std
over the seeds present at that step. Kind comes from ``collapse_report.json`` ("original" without
it); scratch runs are placed at their ``source_agent_step``.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fiberlab.atomic import save_figure_atomic, write_text_atomic
from fiberlab.errors import BadInput
from fiberlab.experiments.collapse_report import read_report
from fiberlab.rl.logging import read_metrics

KIND_COLORS = {"original": "tab:green", "continued": "tab:green", "collapsed": "tab:red", "ablation": "tab:orange", "scratch": "tab:purple"}
PALETTE = ["tab:blue", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
LINESTYLES = ["-", "--", "-.", ":"]
FIRST_LINESTYLE = {"continued": "--"}  # the original's own continuation: same color, dashed
SEED_RE = re.compile(r"_seed\d+(?=$|_epoch_\d+_)")  # trailing, or before a derived run's _epoch_<E>_
MAX_GRID = 400


def group_name(run_name: str) -> str:
    """``exp_seed3`` -> ``exp`` and ``exp_seed3_epoch_9_continued`` -> ``exp_epoch_9_continued`` (the
    runs the pipeline derives from each seed's baseline group across seeds); other names are their own group."""
    return SEED_RE.sub("", run_name)


def smooth(values: np.ndarray) -> np.ndarray:
    """Trailing moving mean over ``max(1, len // 20)`` points (the learning-curve plot's smoothing)."""
    k = max(1, len(values) // 20)
    if k == 1:
        return values.astype(float)
    c = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    out = np.empty(len(values))
    for i in range(len(values)):
        lo = max(0, i - k + 1)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


@dataclass
class RunCurve:
    path: Path
    name: str
    kind: str
    report: dict[str, Any] | None
    steps: np.ndarray  # placed on the plot (scratch shifted by source_agent_step)
    returns: np.ndarray  # raw per-epoch episode returns

    @property
    def final(self) -> float:
        """Mean of the last 10 % (at least one) of the per-epoch returns."""
        n = max(1, math.ceil(0.1 * len(self.returns)))
        return float(np.mean(self.returns[-n:]))


@dataclass
class Group:
    name: str
    kind: str
    runs: list[RunCurve] = field(default_factory=list)
    grid: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    count: np.ndarray | None = None

    @property
    def collapse_step(self) -> int | None:
        steps = [r.report.get("source_agent_step") for r in self.runs if r.report]
        steps = [int(s) for s in steps if s is not None]
        return round(float(np.mean(steps))) if steps else None

    @property
    def source_runs(self) -> list[str]:
        return [str(r.report["source_run"]) for r in self.runs if r.report and r.report.get("source_run")]

    def fraction(self, key: str) -> float | None:
        if self.kind == "original":
            return 1.0
        vals = [r.report.get(key) for r in self.runs if r.report]
        vals = [float(v) for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None


def load_run(run_dir: str | Path) -> RunCurve:
    """Read one run folder; BadInput (one line) when it is missing, has no returns or an unreadable report."""
    path = Path(run_dir)
    if not path.is_dir():
        raise BadInput(f"unknown run dir: {path}")
    if not (path / "metrics.jsonl").is_file():
        raise BadInput(f"run {path} has no metrics.jsonl")
    rows = [r for r in read_metrics(path) if r.get("episode_return") is not None and r.get("agent_step") is not None]
    if not rows:
        raise BadInput(f"run {path} has no finished episodes in metrics.jsonl")
    report = read_report(path)
    kind = str(report.get("kind") or "collapsed") if report else "original"
    rows.sort(key=lambda r: r["agent_step"])
    steps = np.array([float(r["agent_step"]) for r in rows])
    if kind == "scratch" and report and report.get("source_agent_step") is not None:
        steps = steps + float(report["source_agent_step"])
    returns = np.array([float(r["episode_return"]) for r in rows])
    return RunCurve(path, path.name, kind, report, steps, returns)


def _grid(runs: list[RunCurve]) -> np.ndarray:
    steps = np.unique(np.concatenate([r.steps for r in runs]))
    if len(steps) > MAX_GRID:
        steps = np.linspace(steps[0], steps[-1], MAX_GRID)
    return steps


def build_groups(run_dirs: list[str | Path]) -> list[Group]:
    """Load and group runs (by name without ``_seed<N>``, and by kind), in first-seen order."""
    if not run_dirs:
        raise BadInput("no runs given")
    groups: dict[tuple[str, str], Group] = {}
    for d in run_dirs:
        run = load_run(d)
        key = (group_name(run.name), run.kind)
        groups.setdefault(key, Group(key[0], run.kind)).runs.append(run)
    names = [g.name for g in groups.values()]
    for g in groups.values():
        if names.count(g.name) > 1:  # same name, different kinds: keep both apart in the legend
            g.name = f"{g.name} ({g.kind})"
        g.grid = _grid(g.runs)
        curves = np.full((len(g.runs), len(g.grid)), np.nan)
        for i, r in enumerate(g.runs):
            sm = smooth(r.returns)
            inside = (g.grid >= r.steps[0]) & (g.grid <= r.steps[-1])
            curves[i, inside] = np.interp(g.grid[inside], r.steps, sm)
        g.count = np.sum(~np.isnan(curves), axis=0)
        keep = g.count > 0
        g.grid, curves, g.count = g.grid[keep], curves[:, keep], g.count[keep]
        g.mean = np.nanmean(curves, axis=0)
        g.std = np.nanstd(curves, axis=0)
    return list(groups.values())


def steps_to_reach(grid: np.ndarray, mean: np.ndarray, target: float, start: float) -> int | None:
    """Steps after ``start`` until ``mean`` (on ``grid``) first reaches ``target``; None if never."""
    hit = np.nonzero((grid >= start) & (mean >= target))[0]
    return round(float(grid[hit[0]] - start)) if len(hit) else None


def _original_final(group: Group, groups: list[Group]) -> float | None:
    """Final return (mean over seeds) of the original this group was made from."""
    sources = group.source_runs
    if not sources:
        return None
    wanted = {group_name(s) for s in sources} | set(sources)
    for g in groups:
        if g.kind == "original" and ({r.name for r in g.runs} & set(sources) or group_name(g.runs[0].name) in wanted):
            return float(np.mean([r.final for r in g.runs]))
    finals = []  # not among the compared runs: look for the source next to this run
    for r in group.runs:
        src = r.report.get("source_run") if r.report else None
        if src and (r.path.parent / str(src)).is_dir():
            try:
                finals.append(load_run(r.path.parent / str(src)).final)
            except BadInput:
                continue
    return float(np.mean(finals)) if finals else None


def summarize(groups: list[Group]) -> list[dict[str, Any]]:
    """One dict per group: name, kind, seeds, final mean/std, collapse step, steps to 90 %, fractions.

    The 90 % target is ``orig - 0.1 * |orig|`` (``orig`` = the source original's final return), so it
    means "within 10 %" for negative returns too.
    """
    out = []
    for g in groups:
        finals = np.array([r.final for r in g.runs])
        row: dict[str, Any] = {
            "group": g.name, "kind": g.kind, "seeds": len(g.runs),
            "final_mean": float(finals.mean()), "final_std": float(finals.std()),
            "collapse_step": g.collapse_step, "original_final": None, "steps_to_90": None,
            "node_fraction": g.fraction("node_fraction"), "param_fraction": g.fraction("param_fraction"),
        }
        if g.kind != "original" and g.collapse_step is not None:
            orig = _original_final(g, groups)
            row["original_final"] = orig
            if orig is not None:
                row["steps_to_90"] = steps_to_reach(g.grid, g.mean, orig - 0.1 * abs(orig), g.collapse_step)
        out.append(row)
    return out


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def _markdown(summary: list[dict[str, Any]]) -> str:
    lines = [
        "# Run comparison", "",
        (
            "Final return: mean ± std over seeds of each seed's mean over the last 10 % of its epochs. "
            "Steps to 90 %: agent steps after the collapse step until the seed-mean smoothed curve "
            "reaches 90 % of the source original's final return."
        ),
        "",
        "| group | kind | seeds | final return | collapse step | steps to 90 % of original | node fraction | param fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        if s["kind"] == "original":
            reach = "—"
        elif s["original_final"] is None:
            reach = "n/a (original not found)"
        else:
            reach = "not reached" if s["steps_to_90"] is None else str(s["steps_to_90"])
        lines.append(
            f"| {s['group']} | {s['kind']} | {s['seeds']} | {s['final_mean']:.4g} ± {s['final_std']:.2g} | "
            f"{'—' if s['collapse_step'] is None else s['collapse_step']} | {reach} | "
            f"{_fmt(s['node_fraction'], '.3f')} | {_fmt(s['param_fraction'], '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def _csv(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "kind", "seeds", "step", "mean", "std", "n"])
    for g in groups:
        for step, m, s, n in zip(g.grid, g.mean, g.std, g.count):
            w.writerow([g.name, g.kind, len(g.runs), f"{step:.10g}", f"{m:.6g}", f"{s:.6g}", int(n)])
    return buf.getvalue()


def compare_runs(run_dirs: list[str | Path], out_png: str | Path) -> tuple[Path, Path, Path]:
    """Plot several runs (seed groups averaged) and write ``out_png`` plus ``<out>.csv`` (per group:
    step grid, mean, std, n seeds there) and ``<out>.md`` (summary table). Returns (png, csv, md).

    Raises BadInput (one line) for an unknown run folder or one without returns in its metrics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = build_groups(list(run_dirs))
    summary = summarize(groups)
    png = Path(out_png)
    png.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = png.with_suffix(".csv"), png.with_suffix(".md")

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    used: dict[str, int] = {}
    extra = iter(PALETTE * 10)
    kind_color: dict[str, str] = dict(KIND_COLORS)
    for g in groups:
        color = kind_color.setdefault(g.kind, next(extra))
        first = LINESTYLES.index(FIRST_LINESTYLE.get(g.kind, "-"))
        ls = LINESTYLES[(first + used.get(g.kind, 0)) % len(LINESTYLES)]
        used[g.kind] = used.get(g.kind, 0) + 1
        ax.plot(g.grid, g.mean, color=color, ls=ls, lw=1.8, label=f"{g.name} [{g.kind}] (n={len(g.runs)})")
        if len(g.runs) > 1:
            ax.fill_between(g.grid, g.mean - g.std, g.mean + g.std, color=color, alpha=0.18, lw=0)
    for step in sorted({g.collapse_step for g in groups if g.collapse_step is not None}):
        ax.axvline(step, color="black", ls=":", lw=1.2)
        ax.annotate(f"collapse @ {step:,}", (step, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    ha="left", va="top", xytext=(3, -3), textcoords="offset points")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("mean episode return (smoothed)")
    ax.set_title("return vs agent steps (mean ± 1 std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure_atomic(fig, png)
    write_text_atomic(csv_path, _csv(groups))
    write_text_atomic(md_path, _markdown(summary))
    return png, csv_path, md_path
