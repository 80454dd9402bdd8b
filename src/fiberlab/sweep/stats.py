"""Statistics of a sweep's runs: per-run curve summaries and intervals over seeds and tasks.

Pure functions on numpy arrays. Curves are ``(steps, values)`` pairs: agent steps and the metric at
each logged epoch. Every curve function first drops the points whose value is not finite (a ``null``
metric in an epoch where no episode finished) and sorts the rest by step (stably), so callers may
pass the raw columns of ``metrics.jsonl``.

Conventions (chosen here, used by the report):

- final value: mean over the last ``frac`` (10 %) of the *step range*, inclusive, at least one point;
- area under the curve: trapezoid area divided by the step range (the curve's mean height);
- convergence: trailing moving mean over ``max(1, n // 20)`` points (the project's learning-curve
  smoothing, :func:`fiberlab.experiments.compare.smooth`), tolerance 5 % of the smoothed curve's
  range around the final value, and a curve must settle before the final window (see
  :func:`steps_to_convergence`);
- intervals over seeds: Student's t; aggregates over tasks: IQM with rliable's trimming
  (``floor(0.25 n)`` whole points cut from each end, as ``scipy.stats.trim_mean``) and percentile
  stratified-bootstrap intervals (Agarwal et al. 2021, "Deep RL at the edge of the statistical
  precipice").
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fiberlab.errors import BadInput
from fiberlab.experiments.compare import smooth
from fiberlab.intervals import t_interval  # noqa: F401  (re-exported: the report reads stats.t_interval)

FINAL_FRAC = 0.1
CONV_TOL = 0.05


def _curve(steps, values) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of one curve, non-finite values dropped, sorted by step; BadInput if nothing is left."""
    s = np.asarray(steps, dtype=float).ravel()
    v = np.asarray(values, dtype=float).ravel()
    if s.shape != v.shape:
        raise BadInput(f"steps and values differ in length ({len(s)} vs {len(v)}); one value per step is allowed")
    keep = np.isfinite(v) & np.isfinite(s)
    s, v = s[keep], v[keep]
    if len(s) == 0:
        raise BadInput("curve has no finite points; at least one (step, value) pair is needed")
    order = np.argsort(s, kind="stable")
    return s[order], v[order]


def _check_frac(frac: float) -> None:
    if not 0.0 < frac <= 1.0:
        raise BadInput(f"frac {frac!r} is not usable; a fraction in (0, 1] is allowed")


def _final_window(s: np.ndarray, frac: float) -> np.ndarray:
    """Mask of the points with ``step >= last - frac * (last - first)`` (inclusive; the last point always)."""
    span = s[-1] - s[0]
    start = s[-1] - frac * span
    return s >= start - 1e-9 * max(1.0, abs(span))


def final_value(steps, values, frac: float = FINAL_FRAC) -> float:
    """Mean of the metric over the last ``frac`` of the steps (by agent step, not by row count).

    ``final = mean{ v_i : s_i >= s_last - frac * (s_last - s_first) }``; the window always holds the
    last point, so a one-point curve gives that point. Uneven logging does not change which part of
    training is averaged (a run logging densely at the end does not shrink its window to a few steps).
    """
    _check_frac(frac)
    s, v = _curve(steps, values)
    return float(np.mean(v[_final_window(s, frac)]))


def area_under_curve(steps, values) -> float:
    """Trapezoid area divided by the step range: the mean height of the curve.

    ``auc = sum_i (s_{i+1} - s_i) * (v_i + v_{i+1}) / 2 / (s_last - s_first)``, so runs of different
    budgets compare on the metric's own scale. A curve whose steps are all equal (one point) has no
    width: its AUC is the mean of its values.
    """
    s, v = _curve(steps, values)
    span = s[-1] - s[0]
    if span <= 0:
        return float(np.mean(v))
    area = float(np.sum(np.diff(s) * (v[1:] + v[:-1]) / 2.0))
    return area / span


def steps_to_convergence(
    steps, values, frac: float = FINAL_FRAC, tol: float = CONV_TOL, tol_abs: float | None = None
) -> float | None:
    """First agent step from which the smoothed curve stays near its final value; None if it does not.

    1. Smooth: ``m_i`` = trailing moving mean of the values over ``k = max(1, n // 20)`` points (the
       learning-curve plot's window, shorter at the start), so ``m_i`` summarises points
       ``max(0, i-k+1) .. i``.
    2. Plateau ``p`` = :func:`final_value` (mean over the last ``frac`` of the steps, raw values).
    3. Band ``b = tol * (max m - min m)`` (``tol_abs`` replaces it when given), plus a rounding
       allowance ``1e-9 * max(1, |p|)`` so a constant curve converges.
    4. ``i*`` = the first index with ``|m_j - p| <= b`` for every ``j >= i*``. The result is the step
       where the window of ``m_{i*}`` *starts*, ``s[max(0, i*-k+1)]``: it undoes the trailing lag, so
       a step function jumping at step 500 converges at 500 whatever ``k``.
    5. ``None`` when there is no ``i*`` (the last smoothed point is outside the band), or when
       ``s[i*]`` already lies inside the final window (``s >= s_last - frac * range``): a curve that
       settles only among the points that define its plateau gives no evidence that it stopped
       moving (a linear ramp is "still rising", not "converged at 93 %"). ``i* = 0`` (in the band
       from the first point, e.g. a constant) converges at the first step.
    """
    _check_frac(frac)
    if tol_abs is None and not tol >= 0:
        raise BadInput(f"tol {tol!r} is not usable; a non-negative fraction of the curve's range is allowed")
    if tol_abs is not None and not tol_abs >= 0:
        raise BadInput(f"tol_abs {tol_abs!r} is not usable; a non-negative value is allowed")
    s, v = _curve(steps, values)
    n = len(v)
    k = max(1, n // 20)
    m = smooth(v)
    plateau = final_value(s, v, frac)
    band = tol_abs if tol_abs is not None else tol * float(m.max() - m.min())
    band += 1e-9 * max(1.0, abs(plateau))
    outside = np.nonzero(np.abs(m - plateau) > band)[0]
    first = 0 if len(outside) == 0 else int(outside[-1]) + 1
    if first >= n or (first > 0 and _final_window(s, frac)[first]):
        return None
    return float(s[max(0, first - k + 1)])


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50 % of all values (any shape, flattened).

    Trimming follows rliable (``scipy.stats.trim_mean(x, 0.25)``): ``g = floor(0.25 * n)`` whole
    points are cut from each end of the sorted values and the rest averaged, ``mean(sorted[g:n-g])``;
    no fractional weighting of boundary points. n < 4 cuts nothing (plain mean).
    """
    a = np.sort(np.asarray(x, dtype=float).ravel())
    n = len(a)
    if n == 0:
        raise BadInput("iqm of no values; at least one value is needed")
    g = int(math.floor(0.25 * n))
    return float(np.mean(a[g : n - g]))


def stratified_bootstrap_ci(
    scores,
    statistic: Callable[[np.ndarray], float],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile interval of ``statistic`` by stratified bootstrap over runs.

    ``scores`` is a 2-D matrix ``[runs, tasks]``: rows are independent runs (seeds), columns tasks
    (envs). Each replicate resamples, *within each task column independently*, ``runs`` rows with
    replacement (the strata are the tasks, so every replicate keeps every task), and applies
    ``statistic`` to the whole resampled ``[runs, tasks]`` matrix (e.g. :func:`iqm`, which flattens it,
    or ``np.mean``), as rliable does. Returns ``(statistic(scores), q_{(1-c)/2}, q_{(1+c)/2})`` with
    ``q`` the quantiles of the ``reps`` replicates; the same ``seed`` gives the same interval.

    The orientation cannot be checked from the numbers: a matrix passed as ``[tasks, runs]`` resamples
    across tasks and gives wrong (often zero-width) intervals, so build it as ``[runs, tasks]``.
    """
    m = np.asarray(scores, dtype=float)
    if m.ndim != 2:
        raise BadInput(f"scores has {m.ndim} dimension(s); a 2-D [runs, tasks] matrix is allowed")
    runs, tasks = m.shape
    if runs == 0 or tasks == 0:
        raise BadInput(f"scores has shape {m.shape}; at least one run and one task are needed")
    if not np.all(np.isfinite(m)):
        raise BadInput("scores holds non-finite values; finite [runs, tasks] scores are allowed")
    if int(reps) < 1:
        raise BadInput(f"reps {reps!r} is not usable; a positive number of replicates is allowed")
    if not 0.0 < confidence < 1.0:
        raise BadInput(f"confidence {confidence!r} is not usable; a value in (0, 1) is allowed")
    rng = np.random.default_rng(seed)
    cols = np.arange(tasks)
    reps_out = np.empty(int(reps))
    for r in range(int(reps)):
        rows = rng.integers(0, runs, size=(runs, tasks))
        reps_out[r] = float(statistic(m[rows, cols]))
    alpha = 1.0 - confidence
    low, high = np.quantile(reps_out, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(statistic(m)), float(low), float(high)


def intervals_separate(a_low: float, a_high: float, b_low: float, b_high: float) -> bool:
    """True when the closed intervals ``[a_low, a_high]`` and ``[b_low, b_high]`` do not overlap.

    A nan bound (an interval from one seed) never separates: there is no evidence either way.
    """
    bounds = (a_low, a_high, b_low, b_high)
    if any(b is None or not math.isfinite(float(b)) for b in bounds):
        return False
    return a_low > b_high or b_low > a_high


def minmax_normalise(x, low: float, high: float) -> np.ndarray:
    """``(x - low) / (high - low)``; a zero range maps everything to 0 (nothing to tell apart)."""
    a = np.asarray(x, dtype=float)
    if not high > low:
        return np.zeros_like(a)
    return (a - low) / (high - low)
