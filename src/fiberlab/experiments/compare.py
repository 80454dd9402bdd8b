"""Return against agent steps of several runs on one plot, seeds averaged (the Metta validation plot).

Runs whose names differ only by a ``_seed<N>`` (trailing, or before ``_epoch_<E>_`` in a run derived
from a seed's checkpoint), or share a name across train_dirs, form one group (runs collapsed or
ablated to a target size are grouped by the target, not by each seed's own thresholds:
:func:`group_name`): each seed's return curve is smoothed (trailing moving mean over ``len // 20`` epochs, as in
the learning-curve plot), interpolated onto the group's step grid, and averaged; the band is the
95 % Student-t interval of that mean over the seeds present at that step (where there are at least
two). Kind comes from ``collapse_report.json`` ("original" without it); scratch runs are placed at
their ``source_agent_step``.

Every figure averaged over seeds (final return, node and parameter fractions, zero-shot returns)
is an :class:`Estimate`: the mean, its 95 % t-interval over the seeds' values
(:func:`fiberlab.intervals.t_interval`: mean ± t_{0.975, n-1} · sd / √n) and n; one seed gives the
value alone (no spread can be estimated). Outputs: the figure, ``FILE.csv`` (the curves: mean, lo,
hi, n per step), ``FILE.md`` (the tables) and ``FILE_summary.csv`` (the tables' numbers, one
mean/lo/hi/n column set per figure). With ``random_episodes``, uniform random play on the runs' env
is measured in the same call, drawn as the floor line, and given in FILE.md and FILE_summary.csv.
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
from fiberlab.experiments.fibration_runs import threshold_tail
from fiberlab.intervals import t_interval
from fiberlab.rl.logging import read_metrics

KIND_COLORS = {"original": "tab:green", "continued": "tab:green", "collapsed": "tab:red", "ablation": "tab:orange", "scratch": "tab:purple"}
PALETTE = ["tab:blue", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
LINESTYLES = ["-", "--", "-.", ":"]
FIRST_LINESTYLE = {"continued": "--"}  # the original's own continuation: same color, dashed
SEED_RE = re.compile(r"_seed\d+(?=$|_epoch_\d+_)")  # trailing, or before a derived run's _epoch_<E>_
MAX_GRID = 400
CONFIDENCE = 0.95
ZERO_SHOT_KINDS = ("collapsed", "ablation")  # kinds whose report holds the zero-shot return right after the collapse


def group_name(run_name: str, report: dict[str, Any] | None = None) -> str:
    """``exp_seed3`` -> ``exp`` and ``exp_seed3_epoch_9_continued`` -> ``exp_epoch_9_continued`` (the
    runs the pipeline derives from each seed's baseline group across seeds); other names are their own group.

    A run collapsed (or ablated, or its scratch twin) to a target size carries its own seed's
    thresholds in its name; with its ``report`` the thresholds are replaced by the target, e.g.
    ``exp_seed2_epoch_9_base_0.35_0.25_0.5_0.4`` -> ``exp_epoch_9_base_target_nodes0.2`` (and
    ``..._ablationsrandom_target_nodes0.2``), so the seeds made with one target form one group.
    Runs made with thresholds given by hand keep them: two threshold settings are two groups.
    """
    name = SEED_RE.sub("", run_name)
    target, thresholds = (report or {}).get("target"), (report or {}).get("thresholds")
    if isinstance(target, dict) and isinstance(thresholds, dict) and target.get("fraction") is not None:
        try:
            tail = threshold_tail(thresholds)
        except (KeyError, TypeError, ValueError):
            return name
        label = f"target_{target.get('measure', 'nodes')}{float(target['fraction']):g}"
        name = re.sub(rf"_(base_|ablationsrandom){re.escape(tail)}(?=$|_)", lambda m: f"_{m.group(1).rstrip('_')}_{label}", name)
    return name


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


@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values (seeds) and the bounds ``lo``, ``hi`` of its 95 % t-interval (nan when
    n < 2: one seed has no spread to estimate; mean nan when n = 0)."""

    mean: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Any) -> Estimate:
        """Of the finite values among ``values`` (None and nan are not measurements: left out)."""
        x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        mean, half = t_interval(x, CONFIDENCE)
        return cls(mean, mean - half, mean + half, len(x))

    def text(self, spec: str = ".4g") -> str:
        """``mean [lo, hi]`` for n >= 2, the value alone for n = 1, ``n/a`` for none."""
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return format(self.mean, spec)
        return f"{format(self.mean, spec)} [{format(self.lo, spec)}, {format(self.hi, spec)}]"

    def columns(self, name: str) -> dict[str, str]:
        """CSV cells ``<name>_mean``, ``_lo``, ``_hi``, ``_n``; empty where undefined."""
        cell = {k: "" if math.isnan(v) else f"{v:.10g}" for k, v in (("mean", self.mean), ("lo", self.lo), ("hi", self.hi))}
        return {f"{name}_{k}": v for k, v in {**cell, "n": str(self.n)}.items()}


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


def seed_band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per column of ``curves`` [seeds, steps]: the 95 % t-interval of the mean over the
    seeds present there (nan where fewer than two are)."""
    est = [Estimate.of(curves[:, j]) for j in range(curves.shape[1])]
    return np.array([e.lo for e in est]), np.array([e.hi for e in est])


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
    lo: np.ndarray | None = None  # 95 % t-interval of the mean over seeds, per grid step
    hi: np.ndarray | None = None
    count: np.ndarray | None = None

    @property
    def collapse_step(self) -> int | None:
        steps = [r.report.get("source_agent_step") for r in self.runs if r.report]
        steps = [int(s) for s in steps if s is not None]
        return round(float(np.mean(steps))) if steps else None

    @property
    def source_runs(self) -> list[str]:
        return [str(r.report["source_run"]) for r in self.runs if r.report and r.report.get("source_run")]

    def fraction(self, key: str) -> Estimate:
        """``key`` (node_fraction, param_fraction) over the seeds' reports; the original keeps all (1)."""
        if self.kind == "original":
            return Estimate.of([1.0] * len(self.runs))
        return Estimate.of(r.report.get(key) for r in self.runs if r.report)

    def report_values(self, key: str) -> list[Any]:
        """``key`` of every seed's report (None where missing)."""
        return [r.report.get(key) if r.report else None for r in self.runs]


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
    """Load and group runs (by :func:`group_name`, and by kind), in first-seen order."""
    if not run_dirs:
        raise BadInput("no runs given")
    groups: dict[tuple[str, str], Group] = {}
    for d in run_dirs:
        run = load_run(d)
        key = (group_name(run.name, run.report), run.kind)
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
        g.lo, g.hi = seed_band(curves)
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


def _original_zero_shot(run: RunCurve, runs: list[RunCurve]) -> float | None:
    """The zero-shot return of the original ``run`` was made from: its own report's, else that of
    another compared run from the same checkpoint (ablation folders written before ablations
    recorded it)."""
    report = run.report or {}
    if report.get("return_original") is not None:
        return float(report["return_original"])
    for other in runs:
        o = other.report or {}
        same_source = report.get("source_checkpoint") is not None and o.get("source_checkpoint") == report.get("source_checkpoint")
        if same_source and o.get("return_original") is not None:
            return float(o["return_original"])
    return None


def _zero_shot(g: Group, runs: list[RunCurve]) -> tuple[Estimate, Estimate]:
    """(zero-shot return right after the collapse, the original's) over the group's seeds; no
    estimate for kinds other than collapsed and ablation."""
    if g.kind not in ZERO_SHOT_KINDS:
        return NO_ESTIMATE, NO_ESTIMATE
    return Estimate.of(g.report_values("return_collapsed")), Estimate.of(_original_zero_shot(r, runs) for r in g.runs)


def summarize(groups: list[Group]) -> list[dict[str, Any]]:
    """One dict per group: name, kind, n (seeds), final return, collapse step, steps to 90 %,
    fractions and zero-shot returns (each averaged figure an :class:`Estimate` over the seeds).

    The 90 % target is ``orig - 0.1 * |orig|`` (``orig`` = the source original's final return), so it
    means "within 10 %" for negative returns too; it is read off the seed-mean curve (one figure,
    not an average over seeds).
    """
    out = []
    every_run = [r for g in groups for r in g.runs]
    for g in groups:
        zero_shot, original_zero_shot = _zero_shot(g, every_run)
        row: dict[str, Any] = {
            "group": g.name, "kind": g.kind, "n": len(g.runs), "final": Estimate.of(r.final for r in g.runs),
            "collapse_step": g.collapse_step, "original_final": None, "steps_to_90": None,
            "node_fraction": g.fraction("node_fraction"), "param_fraction": g.fraction("param_fraction"),
            "zero_shot": zero_shot, "original_zero_shot": original_zero_shot,
        }
        if g.kind != "original" and g.collapse_step is not None:
            orig = _original_final(g, groups)
            row["original_final"] = orig
            if orig is not None:
                row["steps_to_90"] = steps_to_reach(g.grid, g.mean, orig - 0.1 * abs(orig), g.collapse_step)
        out.append(row)
    return out


@dataclass(frozen=True)
class RandomPlay:
    """Uniform random play on the compared runs' env: the floor every return is read against.
    ``estimate``: mean return with its 95 % normal interval over ``estimate.n`` episodes (one
    policy, so the spread is over episodes, not seeds)."""

    env: str
    estimate: Estimate
    extras: dict[str, float] = field(default_factory=dict)  # the env's per-episode extras, averaged


def random_reference(groups: list[Group], episodes: int) -> RandomPlay | None:
    """:func:`fiberlab.rl.evaluate.random_play` on the env of the first original run (else the first
    run), from its ``config.json``; None when ``episodes`` is 0. BadInput (naming ``--random-episodes 0``)
    when that config is missing or unreadable, or its env cannot be built."""
    if episodes <= 0:
        return None
    from pydantic import ValidationError

    from fiberlab.config import TrainConfig
    from fiberlab.rl.evaluate import random_play

    run = next((g.runs[0] for g in groups if g.kind == "original"), groups[0].runs[0])
    path = run.path / "config.json"
    try:
        cfg = TrainConfig.model_validate_json(path.read_text())
    except (OSError, ValueError, ValidationError) as e:
        raise BadInput(f"cannot read {path} for the random-play reference ({type(e).__name__}); pass --random-episodes 0 to skip it") from None
    try:
        res = random_play(cfg, episodes)
    except BadInput as e:  # the env cannot be built here (a package missing, an env renamed since)
        raise BadInput(f"random-play reference on {cfg.env.name}: {e}; pass --random-episodes 0 to skip it") from None
    mean, half = res["mean_return"], res["ci95_return"]
    return RandomPlay(cfg.env.name, Estimate(mean, mean - half, mean + half, res["episodes"]), res.get("extras", {}))


def _reach(s: dict[str, Any]) -> str:
    """The steps-to-90 % cell: a number, or why there is none."""
    if s["kind"] == "original":
        return "—"
    if s["original_final"] is None:
        return "n/a (original not found)"
    return "not reached" if s["steps_to_90"] is None else str(s["steps_to_90"])


INTERVAL_NOTE = (
    "n: seeds. With n >= 2 a figure averaged over seeds is `mean [lo, hi]`, the 95 % Student-t interval "
    "of the mean over the seeds (mean ± t_{0.975, n-1} · sd / √n); with n = 1 the value alone."
)


def _markdown(summary: list[dict[str, Any]], random: RandomPlay | None = None) -> str:
    lines = [
        "# Run comparison", "", INTERVAL_NOTE, "",
        (
            "Final return: each seed's mean over the last 10 % of its epochs, averaged over seeds. "
            "Steps to 90 %: agent steps after the collapse step until the seed-mean smoothed curve "
            "reaches 90 % of the source original's final return (one figure, from the mean curve)."
        ),
        "",
        "| group | kind | n | final return | collapse step | steps to 90 % of original | node fraction | param fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['group']} | {s['kind']} | {s['n']} | {s['final'].text()} | "
            f"{'—' if s['collapse_step'] is None else s['collapse_step']} | {_reach(s)} | "
            f"{s['node_fraction'].text('.3f')} | {s['param_fraction'].text('.3f')} |"
        )
    if random is not None:
        extras = "".join(f", {k} {v:.3g}" for k, v in random.extras.items())
        lines += ["", (f"Random play (uniform actions) on {random.env}: {random.estimate.text()} over "
                       f"{random.estimate.n} episodes (95 % normal interval over episodes): the floor to read the returns against."
                       + (f" Per episode{extras}." if extras else ""))]
    zero = [s for s in summary if s["kind"] in ZERO_SHOT_KINDS]
    if zero:
        lines += [
            "", "## Zero-shot return right after the collapse", "",
            ("Before any retraining, from each run's collapse_report.json: the collapsed (or randomly ablated) "
             "policy and the original it was made from, on the same evaluation episodes; n: seeds with a measurement."),
            "",
            "| group | kind | n | zero-shot return | original's zero-shot return | n (original) | node fraction |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in zero:
            z, o = s["zero_shot"], s["original_zero_shot"]
            lines.append(f"| {s['group']} | {s['kind']} | {z.n} | {z.text()} | {o.text()} | {o.n} | {s['node_fraction'].text('.3f')} |")
    return "\n".join(lines) + "\n"


def _csv(groups: list[Group]) -> str:
    """The curves: per group and grid step the seed mean, its 95 % interval (empty where n < 2) and n."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "kind", "seeds", "step", "mean", "lo", "hi", "n"])
    for g in groups:
        for step, m, lo, hi, n in zip(g.grid, g.mean, g.lo, g.hi, g.count):
            band = ["", ""] if n < 2 else [f"{lo:.6g}", f"{hi:.6g}"]
            w.writerow([g.name, g.kind, len(g.runs), f"{step:.10g}", f"{m:.6g}", *band, int(n)])
    return buf.getvalue()


ESTIMATES = ("final", "node_fraction", "param_fraction", "zero_shot", "original_zero_shot")


def _summary_csv(summary: list[dict[str, Any]], random: RandomPlay | None = None) -> str:
    """The tables' numbers: one row per group, each averaged figure as ``<name>_mean, _lo, _hi, _n``;
    random play as a row of kind ``random`` (its n and final_n count episodes)."""
    if random is not None:
        summary = [*summary, {"group": f"random play ({random.env})", "kind": "random", "n": random.estimate.n,
                              "final": random.estimate, "collapse_step": None, "original_final": None, "steps_to_90": None,
                              **{name: NO_ESTIMATE for name in ESTIMATES[1:]}}]
    rows = [{"group": s["group"], "kind": s["kind"], "n": s["n"], "collapse_step": s["collapse_step"],
             "original_final": s["original_final"], "steps_to_90": s["steps_to_90"],
             **{k: v for name in ESTIMATES for k, v in s[name].columns(name).items()}} for s in summary]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    return buf.getvalue()


def compare_runs(run_dirs: list[str | Path], out_png: str | Path, random_episodes: int = 0) -> tuple[Path, Path, Path, Path]:
    """Plot several runs (seed groups averaged) and write ``out_png`` plus ``<out>.csv`` (per group:
    step grid, mean, 95 % interval, n seeds there), ``<out>.md`` (summary and zero-shot tables) and
    ``<out>_summary.csv`` (the tables' numbers). Returns (png, csv, md, summary csv).

    ``random_episodes`` > 0: also play that many episodes of uniform random actions on the runs'
    env (:func:`random_reference`) and show that return as a line on the figure, in the markdown and in the summary CSV.

    Raises BadInput (one line) for an unknown run folder or one without returns in its metrics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = build_groups(list(run_dirs))
    summary = summarize(groups)
    random = random_reference(groups, random_episodes)
    png = Path(out_png)
    png.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = png.with_suffix(".csv"), png.with_suffix(".md")
    summary_path = png.with_name(f"{png.stem}_summary.csv")

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
        if len(g.runs) > 1:  # nan (fewer than two seeds at a step) leaves a gap in the band
            ax.fill_between(g.grid, g.lo, g.hi, color=color, alpha=0.18, lw=0)
    if random is not None:
        ax.axhline(random.estimate.mean, color="black", ls="--", lw=1.0, alpha=0.6, label=f"random play (n={random.estimate.n} episodes)")
    for step in sorted({g.collapse_step for g in groups if g.collapse_step is not None}):
        ax.axvline(step, color="black", ls=":", lw=1.2)
        ax.annotate(f"collapse @ {step:,}", (step, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    ha="left", va="top", xytext=(3, -3), textcoords="offset points")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("mean episode return (smoothed)")
    ax.set_title("return vs agent steps (mean over seeds; band: 95 % t-interval of the mean, n ≥ 2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure_atomic(fig, png)
    write_text_atomic(csv_path, _csv(groups))
    write_text_atomic(md_path, _markdown(summary, random))
    write_text_atomic(summary_path, _summary_csv(summary, random))
    return png, csv_path, md_path, summary_path
