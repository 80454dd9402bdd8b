"""Collapse to a target size: the thresholds whose collapse keeps a given fraction of the policy.

Why: a paper reports "collapsed to 19 % of the original size"; thresholds set the size only
indirectly, and the same thresholds keep 21 % of one checkpoint and 37 % of another. This module
searches one scale ``s`` for all four per-type thresholds, ``t(s) = s * r`` with ``r`` the base
thresholds (the defaults, or the user's), so their ratios stay as given; ``t`` lives in [0, 2], so
``s`` in [0, 2 / max(r)].

The kept fraction ``f(s)`` (hidden nodes, or parameters) is a step function of ``s`` that mostly
falls as ``s`` grows, but it is not monotone: average linkage is not monotone in the input
partition, and the LSTM's partition is a fixed point (or a refined cycle) of an iteration whose
result can jump either way. So bisection alone is not trusted:

1. ``s`` is searched on a grid of ``1 / GRID`` (thresholds to about 3 decimals, which keeps run
   names short; the fraction cannot move between two adjacent grid points by more than one jump).
2. A scan of ``SCAN`` evenly spaced scales (both ends included) brackets every crossing of the
   target visible at that spacing: adjacent scan points with ``f - F`` of opposite signs.
3. Each bracket, lowest scale first, is bisected (keeping one end above the target and one below,
   which holds whether or not ``f`` is monotone inside) until its ends are adjacent grid points or
   the evaluation budget (``MAX_EVALS``) is spent.
4. The result is the evaluated scale whose fraction is closest to ``F`` (ties: the larger
   fraction, then the lower scale), never just the last bisection point.

Limits: crossings between two scan points that cancel out (down and back up) are not seen; the
fraction moves in jumps (one fiber more or less in a layer of a few fibers is many nodes), so the
closest reachable fraction may be several points from ``F`` (a miss of more than ``JUMP_NOTE`` is
reported with the jump that causes it: two scales one grid step apart whose fractions straddle
``F``, e.g. 35.9 % and 5.1 % of a ``demo`` agent's nodes at scales 1.256 and 1.257); and the
result is the closest among the scales evaluated, not a global optimum. Callers report the fraction reached, not the target.
Cost: at most ``MAX_EVALS`` calls of :func:`find_fibers` (about 0.1 s each on ``fast``, 1 s on
``atari``); counting parameters builds the collapsed config on the meta device (no memory, no RNG).
Deterministic: the same policy, target and base thresholds give the same thresholds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from fiberlab.errors import BadInput
from fiberlab.fibration.collapse import collapsed_config
from fiberlab.fibration.controls import node_count, param_count
from fiberlab.fibration.fibers import Fibers, Thresholds, find_fibers
from fiberlab.fibration.graph import layer_graph

GRID = 1000  # scale steps per unit of scale
SCAN = 5  # evenly spaced scales evaluated first (both ends included)
MAX_EVALS = 24
THRESHOLD_TYPES = ("linear", "cnn", "lstm", "critic")
MEASURES = {"nodes": "hidden nodes", "params": "parameters"}
JUMP_NOTE = 0.05  # a miss larger than this (as a fraction) is explained: where the fraction jumps over the target


def check_fraction(value: Any, name: str = "target") -> float:
    """``value`` as a float in (0, 1]; else BadInput naming ``name`` and what is allowed (NaN and
    text included: the check is ``0 < v <= 1`` on the parsed number)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"bad value {value!r} for {name}: a fraction in (0, 1] is allowed") from None
    if not 0.0 < v <= 1.0:
        raise BadInput(f"bad value {value!r} for {name}: a fraction in (0, 1] is allowed")
    return v


@dataclass(frozen=True)
class Target:
    """What to keep: ``fraction`` (in (0, 1]) of the hidden ``nodes`` or of the ``params``."""

    fraction: float
    measure: str = "nodes"

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise BadInput(f"bad measure {self.measure!r} for a target: allowed are {', '.join(MEASURES)}")
        object.__setattr__(self, "fraction", check_fraction(self.fraction))


@dataclass(frozen=True)
class Evaluation:
    """One collapse the search made: the scale, its thresholds and the fractions kept."""

    scale: float
    thresholds: Thresholds
    node_fraction: float
    param_fraction: float

    def fraction(self, measure: str) -> float:
        return self.node_fraction if measure == "nodes" else self.param_fraction

    def to_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "node_fraction": self.node_fraction, "param_fraction": self.param_fraction}


@dataclass
class TargetResult:
    """The thresholds found (``best``), the base they scale, every evaluation in the order made,
    and the fibers at the thresholds found (so the caller need not find them again)."""

    target: Target
    base: Thresholds
    best: Evaluation
    evaluations: list[Evaluation] = field(default_factory=list)
    fibers: Fibers | None = None

    @property
    def thresholds(self) -> Thresholds:
        return self.best.thresholds

    @property
    def reached(self) -> float:
        """The fraction of the target's measure that the thresholds found keep."""
        return self.best.fraction(self.target.measure)

    def jump(self) -> tuple[Evaluation, Evaluation] | None:
        """The two evaluations one grid step apart whose fractions straddle the target, nearest it
        (the fraction jumps across the target there, so no scale of these ratios lands in between),
        when the fraction reached misses the target by more than ``JUMP_NOTE``; else None."""
        if abs(self.reached - self.target.fraction) <= JUMP_NOTE:
            return None
        m, f = self.target.measure, self.target.fraction
        by_step = {round(e.scale * GRID): e for e in self.evaluations}
        pairs = [(by_step[k], by_step[k + 1]) for k in sorted(by_step) if k + 1 in by_step
                 and (by_step[k].fraction(m) - f) * (by_step[k + 1].fraction(m) - f) < 0]
        return min(pairs, key=lambda p: abs(p[0].fraction(m) - f) + abs(p[1].fraction(m) - f)) if pairs else None

    def to_dict(self) -> dict[str, Any]:
        """What ``collapse_report.json`` records under ``target`` (plain JSON)."""
        jump = self.jump()
        return {
            "measure": self.target.measure, "fraction": self.target.fraction, "reached": self.reached,
            "scale": self.best.scale, "base_thresholds": self.base.model_dump(),
            "evaluations": [e.to_dict() for e in self.evaluations],
            "jump": None if jump is None else [e.to_dict() for e in jump],
        }

    def describe(self) -> str:
        """One line: target, fraction reached (nodes and parameters), thresholds found, cost."""
        thr = ", ".join(f"{k} {getattr(self.thresholds, k):g}" for k in THRESHOLD_TYPES)
        ratios = "/".join(f"{getattr(self.base, k):g}" for k in THRESHOLD_TYPES)
        return (f"target {self.target.fraction:.1%} of the {MEASURES[self.target.measure]}: reached "
                f"{self.best.node_fraction:.1%} of the hidden nodes and {self.best.param_fraction:.1%} of the parameters "
                f"at thresholds {thr} (= {self.best.scale:g} x {ratios}; {len(self.evaluations)} collapses evaluated)"
                + self._jump_text())

    def _jump_text(self) -> str:
        jump = self.jump()
        if jump is None:
            return ""
        m = self.target.measure
        (a, b) = jump
        return (f"; the fraction jumps from {a.fraction(m):.1%} at scale {a.scale:g} to {b.fraction(m):.1%} at {b.scale:g}, "
                f"so these ratios cannot land nearer: set the thresholds by hand (or other ratios) for a size in between")


def scaled(base: Thresholds, scale: float) -> Thresholds:
    """``scale * base`` per type, clipped to 2 and rounded to 10 decimals (float noise out of the
    run names and report, ratios kept to ~1e-10)."""
    return Thresholds(**{k: round(min(2.0, scale * getattr(base, k)), 10) for k in THRESHOLD_TYPES})


def kept_fractions(policy: torch.nn.Module, fibers: Fibers) -> tuple[float, float]:
    """(hidden nodes, parameters) of the collapse of ``policy`` by ``fibers``, as fractions of the
    policy's; the same numbers the collapsed policy gives (node_count, param_count), without
    building it: the collapsed config is built on the meta device (no weights, no RNG draws)."""
    from fiberlab.policies import build_policy  # lazily, as in collapse.project

    hidden = [layer.name for layer in layer_graph(policy) if layer.kind != "out"]
    nodes = sum(int(fibers.labels[name].max()) + 1 for name in hidden)
    with torch.device("meta"):
        small = build_policy(collapsed_config(policy, fibers))
    return nodes / node_count(policy), param_count(small) / param_count(policy)


class _Search:
    """The evaluations of one search, keyed by grid step ``k`` (scale ``k / GRID``)."""

    def __init__(self, policy: torch.nn.Module, target: Target, base: Thresholds, max_evals: int) -> None:
        self.policy, self.target, self.base, self.max_evals = policy, target, base, max_evals
        self.done: dict[int, tuple[Evaluation, Fibers]] = {}
        self.order: list[Evaluation] = []

    def gap(self, k: int) -> float:
        """f(k / GRID) - F, evaluating the scale first when new."""
        if k not in self.done:
            thr = scaled(self.base, k / GRID)
            fibers = find_fibers(self.policy, thr)
            ev = Evaluation(k / GRID, thr, *kept_fractions(self.policy, fibers))
            self.done[k] = (ev, fibers)
            self.order.append(ev)
        return self.done[k][0].fraction(self.target.measure) - self.target.fraction

    @property
    def hit(self) -> bool:
        """Some scale evaluated keeps exactly the target fraction."""
        return any(ev.fraction(self.target.measure) == self.target.fraction for ev in self.order)

    @property
    def budget_left(self) -> bool:
        return len(self.done) < self.max_evals

    def bisect(self, lo: int, hi: int) -> None:
        """Narrow [lo, hi] (gap(lo), gap(hi) nonzero with opposite signs) to adjacent grid steps,
        keeping the signs at the ends, or until a scale hits the target or the budget is spent."""
        below_at_lo = self.gap(lo) < 0
        while hi - lo > 1 and self.budget_left:
            mid = (lo + hi) // 2
            g = self.gap(mid)
            if g == 0:
                return
            if (g < 0) == below_at_lo:
                lo = mid
            else:
                hi = mid

    def best(self) -> tuple[Evaluation, Fibers]:
        """The evaluation closest to the target; ties: the larger fraction, then the lower scale."""
        def key(k: int) -> tuple[float, float, int]:
            g = self.gap(k)
            return (abs(g), -g, k)

        return self.done[min(self.done, key=key)]


def search_thresholds(policy: torch.nn.Module, target: Target | float, base: Thresholds | dict | None = None,
                      max_evals: int = MAX_EVALS) -> TargetResult:
    """The thresholds ``s * base`` whose collapse of ``policy`` keeps the fraction closest to
    ``target`` (a :class:`Target`, or a float: that fraction of the hidden nodes), found by scan,
    bisection of the brackets and the closest evaluated point (module docstring: method, limits).
    ``base``: the thresholds whose ratios are kept (default: the defaults); at least one must be
    positive. ``max_evals``: at most that many find_fibers calls (at least ``SCAN``)."""
    target = target if isinstance(target, Target) else Target(target)
    base = base if isinstance(base, Thresholds) else Thresholds(**(base or {}))
    top = max(getattr(base, k) for k in THRESHOLD_TYPES)
    if top <= 0.0:
        raise BadInput("all thresholds are 0: a target scales the thresholds, so at least one must be positive")
    if max_evals < SCAN:
        raise BadInput(f"bad value {max_evals} for max_evals: at least {SCAN} is allowed")
    kmax = math.floor(2.0 / top * GRID)  # s * top <= 2
    search = _Search(policy, target, base, max_evals)
    scan = sorted({round(i * kmax / (SCAN - 1)) for i in range(SCAN)})
    gaps = [search.gap(k) for k in scan]
    for (lo, g_lo), (hi, g_hi) in zip(zip(scan, gaps), zip(scan[1:], gaps[1:])):
        if search.hit or not search.budget_left:
            break
        if (g_lo < 0) != (g_hi < 0):
            search.bisect(lo, hi)
    best, fibers = search.best()
    return TargetResult(target, base, best, search.order, fibers)
