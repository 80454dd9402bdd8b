"""The figures of a sweep report: learning curves with t bands, final value per variant, scaling with
parameters and with ``policy.d_hidden`` / ``policy.num_layers``, the ``^`` comparison, env difficulty
and the aggregates over envs, each saved as PDF and PNG; :func:`draw_figures` draws those that apply and
says why the others are skipped. Matplotlib is imported only when drawing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from fiberlab.atomic import save_figure_atomic
from fiberlab.experiments.compare import MAX_GRID, smooth
from fiberlab.sweep.report_data import (
    CONFIDENCE,
    PATTERN_AXIS,
    SCALING_AXES,
    TASK_PREFIX,
    Cell,
    is_task_axis,
    num,
    task_of,
)


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    """PDF then PNG, each through a temporary name."""
    pdf = save_figure_atomic(fig, out / f"{name}.pdf", close=False)
    return [save_figure_atomic(fig, out / f"{name}.png"), pdf]


def _colors(n: int) -> list[Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds' smoothed curves on one step grid: grid, mean over the seeds present, 95 % t half-width."""
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    grid = np.linspace(steps[0], steps[-1], MAX_GRID) if len(steps) > MAX_GRID else steps
    mat = np.full((len(curves), len(grid)), np.nan)
    for i, (s, v) in enumerate(curves):
        inside = (grid >= s[0]) & (grid <= s[-1])
        mat[i, inside] = np.interp(grid[inside], s, smooth(v))
    n = np.sum(~np.isnan(mat), axis=0)
    keep = n > 0
    grid, mat, n = grid[keep], mat[:, keep], n[keep]
    mean = np.nanmean(mat, axis=0)
    half = np.full(len(grid), np.nan)
    many = n > 1
    if many.any():
        sd = np.nanstd(mat[:, many], axis=0, ddof=1)
        half[many] = sps.t.ppf((1 + CONFIDENCE) / 2, n[many] - 1) * sd / np.sqrt(n[many])
    return grid, mean, half


def _fig_learning_curves(plt, rows, by_variant, metric, out):
    groups = list(dict.fromkeys(r["group"] for r in rows if r["done"]))
    fig, axs = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), dpi=110, squeeze=False)
    colors = dict(zip([r["variant"] for r in rows], _colors(len(rows)), strict=True))
    for ax, g in zip(axs[0], groups, strict=True):
        for r in (r for r in rows if r["group"] == g and r["done"]):
            grid, mean, half = _mean_band([(c.steps, c.values) for c in by_variant[r["variant"]] if c.has_data])
            col = colors[r["variant"]]
            ax.plot(grid, mean, color=col, lw=1.8, label=f"{r['variant']} (n={r['done']})")
            ax.fill_between(grid, mean - half, mean + half, color=col, alpha=0.2, lw=0)
        ax.set_title(g or "all variants", fontsize=9)
        ax.set_xlabel("agent steps")
        ax.set_ylabel(f"{metric} (smoothed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("learning curves: mean over seeds, 95 % t band", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "learning_curves")


def _fig_final(plt, rows, by_variant, metric, out):
    shown = [r for r in rows if r["done"]]
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.38 * len(shown)), dpi=110)
    for y, r in enumerate(shown):
        f = r["final"]
        err = None if math.isnan(f["half"]) else [[f["half"]], [f["half"]]]
        ax.errorbar([f["mean"]], [y], xerr=err, fmt="o", mfc="white" if err is None else None,
                    color="tab:red" if r["best"] else "tab:blue", capsize=3)
        ax.scatter(r["finals"], [y] * len(r["finals"]), s=9, color="gray", alpha=0.6, zorder=1)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([r["variant"] for r in shown], fontsize=7)
    for lab, r in zip(ax.get_yticklabels(), shown, strict=True):
        if r["best"]:
            lab.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlabel(f"final {metric} (mean of the last 10 % of steps)")
    ax.set_title("final value per variant: mean and 95 % t interval (gray: seeds; hollow: one seed)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(fig, out, "final_return")


def _fig_scaling(plt, rows, metric, out, name, xkey, xlabel, connect=True):
    """Final value against ``xkey(row)``, one colour per series (joined by lines when ``connect``)."""
    series: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for r in rows:
        if not r["done"]:
            continue
        x, label = xkey(r)
        if x is not None:
            series.setdefault(label, []).append((x, r))
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    xs_all = [x for pts in series.values() for x, _ in pts]
    for col, (label, pts) in zip(_colors(len(series)), series.items(), strict=True):
        pts.sort(key=lambda p: p[0])
        xs = [x for x, _ in pts]
        ys = [r["final"]["mean"] for _, r in pts]
        hs = [0.0 if math.isnan(r["final"]["half"]) else r["final"]["half"] for _, r in pts]
        ax.errorbar(xs, ys, yerr=hs, fmt="o-" if connect else "o", color=col, capsize=3, label=label or "all", lw=1.4)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"final {metric}")
    ax.set_title(f"scaling: final value against {xlabel} (95 % t intervals)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _save(fig, out, name)


def _fig_caret(plt, groups, metric, out):
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(groups)), dpi=110)
    labels = []
    for y, g in enumerate(groups):
        g = sorted(g, key=lambda r: (r["axes"][PATTERN_AXIS].count("^"), r["axes"][PATTERN_AXIS]))
        for j, r in enumerate(g):
            f = r["final"]
            carets = r["axes"][PATTERN_AXIS].count("^")
            ax.errorbar([f["mean"]], [y + 0.12 * (j - (len(g) - 1) / 2)],
                        xerr=None if math.isnan(f["half"]) else [[f["half"]], [f["half"]]],
                        fmt="s" if carets else "o", color="tab:orange" if carets else "tab:blue", capsize=3)
            ax.annotate(r["axes"][PATTERN_AXIS], (f["mean"], y + 0.12 * (j - (len(g) - 1) / 2)), fontsize=6,
                        xytext=(4, 3), textcoords="offset points")
        others = ", ".join(f"{k}={v}" for k, v in g[0]["axes"].items() if k != PATTERN_AXIS)
        labels.append(f"{g[0]['axes'][PATTERN_AXIS].replace('^', '')}" + (f"\n{others}" if others else ""))
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(f"final {metric}")
    ax.set_title("^ comparison: patterns differing only by ^ (blue: without, orange: with)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(fig, out, "caret_comparison")


def _fig_env_difficulty(plt, rows, envs, out):
    archs = list(dict.fromkeys(r["architecture"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(envs) * max(1, len(archs)) ** 0.5), 4.2), dpi=110)
    width = 0.8 / max(1, len(archs))
    labelled: set[str] = set()
    for j, (arch, col) in enumerate(zip(archs, _colors(len(archs)), strict=True)):
        for i, env in enumerate(envs):
            r = next((r for r in rows if r["architecture"] == arch and task_of(r["axes"]) == env), None)
            if r is None or not r["done"]:
                continue
            c = r["convergence"]
            x = i + (j - (len(archs) - 1) / 2) * width
            if c["converged"]:
                ax.bar(x, c["mean"], width, color=col, label=None if arch in labelled else arch,
                       yerr=None if math.isnan(c["half"]) else c["half"], capsize=2)
                labelled.add(arch)
                ax.annotate(f"{c['converged']}/{c['of']}", (x, c["mean"]), ha="center", fontsize=6, xytext=(0, 2), textcoords="offset points")
            else:
                ax.annotate(f"0/{c['of']}", (x, 0), ha="center", fontsize=6, xytext=(0, 2), textcoords="offset points")
    if labelled:
        ax.legend(fontsize=6, loc="best")
    ax.set_xticks(range(len(envs)))
    ax.set_xticklabels(envs, fontsize=7)
    ax.set_ylabel("agent steps to convergence")
    ax.set_title("env difficulty: steps to convergence\n(mean and 95 % t interval over converged seeds; k/n converged)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, out, "env_difficulty")


def _fig_aggregates(plt, agg, out):
    archs = agg["architectures"]
    fig, axs = plt.subplots(1, 2, figsize=(9, 1.2 + 0.4 * len(archs)), dpi=110, sharey=True)
    for ax, key, title in ((axs[0], "iqm", "IQM"), (axs[1], "mean", "mean")):
        for y, a in enumerate(archs):
            d = a[key]
            ax.errorbar([d["point"]], [y], xerr=[[d["point"] - d["low"]], [d["high"] - d["point"]]], fmt="o", color="tab:blue", capsize=3)
        ax.set_title(f"{title} of min-max normalised final (95 % stratified bootstrap)", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        ax.set_xlabel("normalised final")
    axs[0].set_yticks(range(len(archs)))
    axs[0].set_yticklabels([a["architecture"] for a in archs], fontsize=7)
    axs[0].invert_yaxis()
    fig.tight_layout()
    return _save(fig, out, "aggregates")


def draw_figures(rows, cells, index, metric, agg, caret_groups, out) -> tuple[dict[str, list[Path]], dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(index.get("axes") or [])
    by_variant: dict[str, list[Cell]] = {}
    for c in cells:
        by_variant.setdefault(c.variant, []).append(c)
    written: dict[str, list[Path]] = {}
    skipped: dict[str, str] = {}
    written["learning_curves"] = _fig_learning_curves(plt, rows, by_variant, metric, out)
    written["final_return"] = _fig_final(plt, rows, by_variant, metric, out)

    data_rows = [r for r in rows if r["done"]]
    params = {r["params"] for r in data_rows if isinstance(r["params"], int)}
    if len(params) >= 2:
        def by_params(r):
            label = task_of(r["axes"])
            return (r["params"] if isinstance(r["params"], int) else None), label
        written["scaling_params"] = _fig_scaling(plt, rows, metric, out, "scaling_params", by_params, "policy parameters", connect=False)
    elif not params:
        skipped["scaling_params"] = "no parameter counts in index.json for variants with data"
    else:
        skipped["scaling_params"] = "fewer than two distinct parameter counts among variants with data"
    for ax_key in SCALING_AXES:
        name = "scaling_" + ax_key.split(".")[-1]
        if ax_key not in axes:
            skipped[name] = f"{ax_key} is not an axis of the sweep"
            continue
        values = {stats_x for r in data_rows if (stats_x := num(r["axes"].get(ax_key))) is not None}
        if len(values) < 2:
            skipped[name] = f"fewer than two values of {ax_key} among variants with data"
            continue

        def by_axis(r, k=ax_key):
            return num(r["axes"].get(k)), ".".join(f"{a}={r['axes'][a]}" for a in axes if a != k and a in r["axes"])
        written[name] = _fig_scaling(plt, rows, metric, out, name, by_axis, ax_key)
    if PATTERN_AXIS not in axes:
        skipped["caret_comparison"] = f"{PATTERN_AXIS} is not an axis of the sweep"
    elif not caret_groups:
        skipped["caret_comparison"] = "no two variants with data differ only by ^ in policy.pattern"
    else:
        written["caret_comparison"] = _fig_caret(plt, caret_groups, metric, out)
    if not any(is_task_axis(k) for k in axes):
        skipped["env_difficulty"] = f"no {TASK_PREFIX}* axis in the sweep"
        skipped["aggregates"] = f"no {TASK_PREFIX}* axis in the sweep"
    else:
        if not any(r["convergence"]["converged"] for r in data_rows):
            skipped["env_difficulty"] = "no seed converged in any env"
        else:
            written["env_difficulty"] = _fig_env_difficulty(plt, rows, agg["envs"], out)
        if agg["architectures"]:
            written["aggregates"] = _fig_aggregates(plt, agg, out)
        else:
            skipped["aggregates"] = "no architecture has done cells with data in every env"
    return written, skipped
