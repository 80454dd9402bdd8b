"""``fiberlab ad stats`` and ``fiberlab ad plot-segments``: what the segment rule marks in a file.

Both read a learning-history file (:mod:`fiberlab.distill.histories`) and use either the mask
stored with it or one recomputed from ``action_probs`` with another threshold, window or rule, so a
researcher can sweep the rule without collecting again.

Reading the numbers: every logged step is on-policy by construction (the behaviour policy IS the
logged policy), so the "compression ratio" is the share of steps in runs where the policy was
CONFIDENT (``P(taken action) >= threshold`` for long enough), not a share of on-policy data. The
guide expects 30-50 %; these functions measure it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fiberlab.distill.config import CollectConfig
from fiberlab.distill.segments import (
    RULES,
    boundaries,
    check_rule,
    check_threshold,
    check_window,
    run_lengths,
    segment_mask,
)
from fiberlab.errors import BadInput

PERCENTILES = (5, 25, 50, 75, 95)
_DEFAULTS = {  # the collection defaults, for a file whose attributes do not say
    "threshold": CollectConfig.model_fields["on_policy_threshold"].default,
    "window": CollectConfig.model_fields["compression_window"].default,
    "rule": CollectConfig.model_fields["mask_rule"].default,
}


@dataclass(frozen=True)
class GoalSegmentStats:
    """One goal's segments over all its streams."""

    goal: int
    steps: int  # T x S
    marked_steps: int
    compression_ratio: float  # marked_steps / steps
    confident_ratio: float | None  # share of steps with p >= threshold (None: threshold unknown)
    n_segments: int
    mean_length: float  # nan without segments
    median_length: float


@dataclass(frozen=True)
class SegmentStats:
    """Segments of a whole history file: per goal and pooled over goals and streams.

    Segment lengths count steps of one stream; a segment still open at a stream's last step is
    counted with the length it has there (``open_segments`` of them: lower bounds)."""

    path: str
    env: str
    source: str  # "stored": the file's compression_mask; "recomputed": from action_probs
    threshold: float | None
    window: int | None
    rule: str | None
    n_stream: int
    steps_per_stream: int
    goals: list[GoalSegmentStats]
    total_steps: int
    marked_steps: int
    compression_ratio: float
    confident_ratio: float | None
    n_segments: int
    open_segments: int
    mean_length: float
    median_length: float
    max_length: int
    length_percentiles: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (nan stays a float nan)."""
        return asdict(self)


def _open(history_file: Any) -> tuple[Any, bool]:
    """An open HistoryFile and whether we opened it (and so must close it)."""
    if hasattr(history_file, "goal") and hasattr(history_file, "goals"):
        return history_file, False
    from fiberlab.distill.histories import open_history

    return open_history(history_file), True


def _attr(attrs: dict, key: str) -> Any:
    value = attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _settings(attrs: dict, threshold: Any, window: Any, rule: Any) -> tuple[float, int, str]:
    """The (threshold, window, rule) to use: given values, else the file's, else the defaults."""
    threshold = threshold if threshold is not None else _attr(attrs, "on_policy_threshold")
    window = window if window is not None else _attr(attrs, "compression_window")
    rule = rule if rule is not None else _attr(attrs, "mask_rule")
    return (check_threshold(_DEFAULTS["threshold"] if threshold is None else threshold),
            check_window(_DEFAULTS["window"] if window is None else window),
            check_rule(_DEFAULTS["rule"] if rule is None else rule))


def _goal_arrays(hf: Any, goal: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(action_probs, compression_mask, dones) of one goal, reading only those datasets."""
    names = ("action_probs", "compression_mask", "dones")
    fields = getattr(hf, "fields", None)
    if fields is not None and hasattr(hf, "stack"):
        have = [n for n in names if n in fields]
        got = hf.stack([int(goal)], have)
        arrays = [got[n][0] if n in got else None for n in names]
        return arrays[0], arrays[1], arrays[2]
    gh = hf.goal(int(goal))
    return gh.action_probs, gh.compression_mask, gh.dones


def _need_probs(path: str, goal: int, probs: np.ndarray | None) -> np.ndarray:
    if probs is None:
        raise BadInput(f"{path}: goal {goal} has no action_probs (a plain DICP file?): segments "
                       f"need the _compressed.hdf5 file that fiberlab ad collect writes")
    return probs


def _stored_mask(path: str, goal: int, mask: np.ndarray, probs: np.ndarray | None) -> np.ndarray:
    m = np.asarray(mask)
    if probs is not None and m.shape != probs.shape:
        raise BadInput(f"{path}: goal {goal} compression_mask has shape {m.shape} but "
                       f"action_probs has {probs.shape}: the file is inconsistent")
    if m.dtype != np.bool_ and bool(((m != 0) & (m != 1)).any()):
        raise BadInput(f"{path}: goal {goal} compression_mask holds values other than 0 and 1")
    return m.astype(bool)


def segment_stats(history_file: str | Path | Any, threshold: float | None = None,
                  window: int | None = None, rule: str | None = None,
                  goals: Sequence[int] | None = None) -> SegmentStats:
    """Compression ratio per goal and overall, the number of segments and their lengths.

    With ``threshold``, ``window`` and ``rule`` all None the file's stored ``compression_mask`` is
    used (its rule from the file attributes); give any of them to recompute the mask from
    ``action_probs`` (the others from the file attributes, else the collection defaults).
    ``goals``: a subset (default every goal in the file); a missing goal is BadInput."""
    hf, owned = _open(history_file)
    try:
        path = str(getattr(hf, "path", history_file))
        attrs = dict(getattr(hf, "attrs", {}) or {})
        recompute = threshold is not None or window is not None or rule is not None
        thr, win, rul = _settings(attrs, threshold, window, rule)
        goal_list = list(hf.goals) if goals is None else [int(g) for g in goals]
        per_goal: list[GoalSegmentStats] = []
        lengths: list[np.ndarray] = []
        open_segments = 0
        any_recomputed = False
        n_stream = steps = 0
        for g in goal_list:
            probs, stored, _ = _goal_arrays(hf, g)
            if recompute or stored is None:
                mask = segment_mask(_need_probs(path, g, probs), thr, win, rul).astype(bool)
                any_recomputed = True
            else:
                mask = _stored_mask(path, g, stored, probs)
            if mask.ndim == 1:
                mask = mask[:, None]
            steps, n_stream = mask.shape[0], mask.shape[1]
            start, _ = boundaries(mask)
            seg_len = run_lengths(mask, total=True)[start]  # one length per segment, at its start
            open_segments += int(mask[-1].sum()) if mask.shape[0] else 0
            lengths.append(seg_len)
            confident = None if probs is None else float((np.asarray(probs) >= thr).mean())
            per_goal.append(GoalSegmentStats(
                goal=int(g), steps=int(mask.size), marked_steps=int(mask.sum()),
                compression_ratio=float(mask.mean()) if mask.size else 0.0,
                confident_ratio=confident, n_segments=int(start.sum()),
                mean_length=float(seg_len.mean()) if seg_len.size else math.nan,
                median_length=float(np.median(seg_len)) if seg_len.size else math.nan))
        all_len = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        total = sum(s.steps for s in per_goal)
        marked = sum(s.marked_steps for s in per_goal)
        conf = [s.confident_ratio for s in per_goal]
        confident_ratio = (None if not per_goal or any(c is None for c in conf)
                           else sum(c * s.steps for c, s in zip(conf, per_goal)) / max(total, 1))
        # the settings that describe the mask: the stored one's come from the file attributes
        if any_recomputed or recompute:
            source, desc = "recomputed", (thr, win, rul)
        else:
            source = "stored"
            desc = (_attr(attrs, "on_policy_threshold"), _attr(attrs, "compression_window"),
                    _attr(attrs, "mask_rule"))
        pct = ({p: float(v) for p, v in zip(PERCENTILES, np.percentile(all_len, PERCENTILES))}
               if all_len.size else {p: math.nan for p in PERCENTILES})
        return SegmentStats(
            path=path, env=str(_attr(attrs, "env") or getattr(hf, "env", "?")), source=source,
            threshold=None if desc[0] is None else float(desc[0]),
            window=None if desc[1] is None else int(desc[1]),
            rule=None if desc[2] is None else str(desc[2]),
            n_stream=int(n_stream), steps_per_stream=int(steps), goals=per_goal,
            total_steps=int(total), marked_steps=int(marked),
            compression_ratio=marked / total if total else 0.0, confident_ratio=confident_ratio,
            n_segments=int(all_len.size), open_segments=open_segments,
            mean_length=float(all_len.mean()) if all_len.size else math.nan,
            median_length=float(np.median(all_len)) if all_len.size else math.nan,
            max_length=int(all_len.max()) if all_len.size else 0, length_percentiles=pct)
    finally:
        if owned:
            hf.close()


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def format_stats(stats: SegmentStats, per_goal: bool = True) -> str:
    """A compact plain-text report for the CLI: the pooled numbers, then one row per goal."""
    rule = (f"rule {stats.rule or '?'}, threshold {_num(stats.threshold, '{:g}')}, "
            f"window {_num(stats.window, '{:d}')}")
    lines = [
        (f"{stats.path}: {stats.env}, {len(stats.goals)} goals x {stats.n_stream} streams x "
         f"{stats.steps_per_stream} steps"),
        f"mask ({stats.source}): {rule}",
        (f"marked {100 * stats.compression_ratio:.1f}% of {stats.total_steps:,} steps"
         + (f" (steps with p >= threshold: {100 * stats.confident_ratio:.1f}%)"
            if stats.confident_ratio is not None else "")),
        (f"segments: {stats.n_segments:,}; length mean {_num(stats.mean_length)}, "
         + ", ".join(f"p{p} {_num(v, '{:g}')}" for p, v in stats.length_percentiles.items())
         + f", max {stats.max_length}"
         + (f" ({stats.open_segments:,} still open at a stream's end: lengths are lower bounds)"
            if stats.open_segments else "")),
        ("every logged step is on-policy by construction: the threshold measures the policy's "
         "confidence"),
    ]
    if per_goal and stats.goals:
        lines += ["", (f"{'goal':>5} {'marked':>7} {'p>=thr':>7} {'segments':>9} "
                       f"{'mean len':>9} {'median':>7}")]
        for g in stats.goals:
            conf = "-" if g.confident_ratio is None else f"{100 * g.confident_ratio:.1f}%"
            lines.append(f"{g.goal:>5} {100 * g.compression_ratio:>6.1f}% {conf:>7} "
                         f"{g.n_segments:>9,} {_num(g.mean_length):>9} "
                         f"{_num(g.median_length, '{:g}'):>7}")
    return "\n".join(lines)


def _steps_slice(steps: int | tuple[int, int] | None, T: int) -> slice:
    if steps is None:
        return slice(0, T)
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if not 1 <= steps:
            raise BadInput(f"steps={steps}: show at least 1 step (the stream has {T})")
        return slice(0, min(int(steps), T))
    if (isinstance(steps, (tuple, list)) and len(steps) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in steps)):
        a, b = int(steps[0]), int(steps[1])
        if not 0 <= a < b <= T:
            raise BadInput(f"steps={tuple(steps)}: need 0 <= start < stop <= {T} (steps per stream)")
        return slice(a, b)
    raise BadInput(f"steps={steps!r}: give a number of steps or a (start, stop) pair")


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first step, length) of each segment of a 1-D mask (for broken_barh)."""
    start, _ = boundaries(mask)
    s = np.flatnonzero(start)
    return [(int(a), int(n)) for a, n in zip(s, run_lengths(mask, total=True)[s])]


def plot_segments(history_file: str | Path | Any, goal: int, stream: int, out_path: str | Path,
                  threshold: float | None = None, window: int | None = None,
                  rule: str | None = None, steps: int | tuple[int, int] | None = None,
                  ) -> list[Path]:
    """The guide's plot done right: one stream's P(taken action) over time (the guide indexed the
    time-major array as ``[0, :200]``, i.e. 200 streams at step 0), segments shaded, the
    threshold line, episode ends as faint ticks.

    ``rule``: "lookahead" or "causal" (recomputed), "both" (one shaded band each), or None with
    threshold and window None: the file's stored mask. ``steps``: the first N steps or a
    (start, stop) pair (default all). Writes ``out_path`` as PNG; a ``.pdf`` path writes the PDF
    and a PNG beside it. Returns the paths written."""
    out = Path(out_path)
    if out.suffix.lower() not in (".png", ".pdf"):
        raise BadInput(f"{out}: the figure must be a .png or .pdf file")
    if rule is not None and rule != "both":
        check_rule(rule)
    hf, owned = _open(history_file)
    try:
        path = str(getattr(hf, "path", history_file))
        attrs = dict(getattr(hf, "attrs", {}) or {})
        probs_all, stored, dones = _goal_arrays(hf, int(goal))
        probs_all = _need_probs(path, int(goal), probs_all)
        n_stream = probs_all.shape[1]
        if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) \
                or not 0 <= int(stream) < n_stream:
            raise BadInput(f"stream={stream!r} is out of range: goal {goal} has streams "
                           f"0..{n_stream - 1}")
        stream = int(stream)
        probs = np.asarray(probs_all[:, stream], dtype=np.float64)
        thr, win, rul = _settings(attrs, threshold, window, None if rule == "both" else rule)
        bands: list[tuple[str, np.ndarray]] = []
        if rule is None and threshold is None and window is None and stored is not None:
            label = f"stored mask ({_attr(attrs, 'mask_rule') or '?'})"
            bands.append((label, _stored_mask(path, int(goal), stored, probs_all)[:, stream]))
        else:
            for r in (RULES if rule == "both" else (rul,)):
                bands.append((r, segment_mask(probs, thr, win, r).astype(bool)))
        done_col = None if dones is None else np.asarray(dones)[:, stream].astype(bool)
    finally:
        if owned:
            hf.close()
    sl = _steps_slice(steps, probs.shape[0])
    return _draw(probs, bands, done_col, sl, thr, win, out,
                 title=f"{_attr(attrs, 'env') or getattr(hf, 'env', '')} goal {goal}, stream {stream}")


def _draw(probs: np.ndarray, bands: list[tuple[str, np.ndarray]], dones: np.ndarray | None,
          sl: slice, thr: float, win: int, out: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fiberlab.atomic import save_figure_atomic

    t = np.arange(sl.start, sl.stop)
    p = probs[sl]
    fig, ax = plt.subplots(figsize=(12, 4), dpi=120)
    colors = ("tab:green", "tab:orange")
    # several rules: stacked bands (each a share of the height) so overlaps stay readable
    n = len(bands)
    for i, (label, mask) in enumerate(bands):
        # the mask is computed on the whole stream first, then cut: a cut never invents a segment
        spans = [(a - 0.5, length) for a, length in _spans(mask[sl].astype(bool))]
        share = mask[sl].mean() if mask[sl].size else 0.0
        lo, hi = (i / n, (i + 1) / n)
        ax.broken_barh(spans, (lo, hi - lo), facecolors=colors[i % 2], alpha=0.25, linewidth=0,
                       label=f"segment: {label} ({100 * share:.0f}% of shown steps)")
    if dones is not None:
        ends = np.flatnonzero(dones[sl]) + sl.start + 0.5  # an episode ends after its done step
        ax.vlines(ends, 0.0, 0.04, colors="0.4", linewidth=0.6, alpha=0.5, label="episode end")
    ax.plot(t, p, color="tab:blue", lw=0.8, marker="." if len(t) <= 200 else None, ms=3,
            label="P(taken action)")
    ax.axhline(thr, color="tab:red", ls="--", lw=1, label=f"threshold {thr:g}")
    ax.set_xlim(sl.start - 0.5, sl.stop - 0.5)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("step of the stream (learning history)")
    ax.set_ylabel("P(taken action) = confidence")
    ax.set_title(f"{title}: window {win}; every step is on-policy, p measures the policy's "
                 f"confidence", fontsize=10)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if out.suffix.lower() == ".pdf":
        written.append(save_figure_atomic(fig, out, close=False))
        out = out.with_suffix(".png")
    written.append(save_figure_atomic(fig, out))
    return written
