"""find_fibers: the fibers of every hidden layer of a policy (spec: ../shared/specs/fibration.md).

For a layer with weights W [m, n], bias b and input colors c (K classes, one-hot P [K, n]), each
output unit i gets the feature row a_i = [(W P^T)_i, b_i] (incoming weights SUMMED per input
fiber, the bias appended); rows are clustered by cosine distance with average linkage at the
layer type's threshold. Conv filters are summed per input-channel fiber with kernel positions kept
apart; flatten gives feature (channel c, position p) the color (fiber(c), p); LSTM gate rows
[W_ih P_in^T | W_hh P_h^T | b_ih + b_hh] of all 4 gates are clustered jointly and the hidden
partition is iterated to a fixed point: c <- (i, f, g, c_prev), h <- (o, c); when that iteration
cycles instead, a refinement from the meet of the cycle's phases returns a stable partition
(:func:`_lstm_fibers`), and ``Fibers`` records which happened.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fiberlab.fibration.graph import Layer, conv_output_positions, layer_graph
from fiberlab.fibration.partition import cluster_gram, cluster_rows, meet, one_hot, sum_columns

LSTM_MAX_ROUNDS = 50


class Thresholds(BaseModel):
    """Cosine-distance thresholds per layer type, each in [0, 2] (defaults: the Metta guide's)."""

    model_config = ConfigDict(extra="forbid")
    linear: float = Field(0.7, ge=0.0, le=2.0)
    cnn: float = Field(0.5, ge=0.0, le=2.0)
    lstm: float = Field(1.0, ge=0.0, le=2.0)
    critic: float = Field(0.8, ge=0.0, le=2.0)


LSTM_KEYS = ("lstm_rounds", "lstm_converged", "lstm_cycle", "lstm_refine_rounds")


@dataclass
class Fibers:
    """Fiber labels per layer (``labels[name][unit] = fiber``) and what produced them.

    The LSTM's hidden partition (see :func:`_lstm_fibers`): ``lstm_rounds`` rounds of the plain
    iteration; ``lstm_converged`` whether they reached a fixed point (None: not recorded, a file
    from before these fields); ``lstm_cycle`` the period when they cycled instead (else None);
    ``lstm_refine_rounds`` rounds of the refinement that made the returned partition stable when
    they did not converge (0 when they did).
    """

    labels: dict[str, np.ndarray]
    thresholds: Thresholds
    architecture: str
    positions: int = 1  # spatial positions per channel at flatten
    lstm_rounds: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    lstm_converged: bool | None = None
    lstm_cycle: int | None = None
    lstm_refine_rounds: int = 0

    def widths(self) -> dict[str, tuple[int, int]]:
        """(units before, fibers after) per layer."""
        return {k: (len(v), int(v.max()) + 1) for k, v in self.labels.items()}

    def lstm_report(self) -> dict[str, Any]:
        """How the LSTM partition was reached (``LSTM_KEYS``), for fibers.json and collapse_report.json."""
        return {k: getattr(self, k) for k in LSTM_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (the run workflows write it as ``fibers.json``, readable without fiberlab)."""
        return {
            "architecture": self.architecture,
            "thresholds": self.thresholds.model_dump(),
            "positions": self.positions,
            **self.lstm_report(),
            "layers": {k: {"units": len(v), "fibers": int(v.max()) + 1, "labels": v.tolist()} for k, v in self.labels.items()},
            **self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fibers":
        """Inverse of :meth:`to_dict`; files written before the LSTM fields load with their defaults."""
        labels = {k: np.asarray(v["labels"], dtype=np.int64) for k, v in d["layers"].items()}
        meta = {k: v for k, v in d.items() if k not in ("architecture", "thresholds", "positions", "layers", *LSTM_KEYS)}
        lstm = {k: d[k] for k in LSTM_KEYS if k in d}
        return cls(labels, Thresholds(**d["thresholds"]), d["architecture"], d.get("positions", 1), meta=meta, **lstm)


def _w(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _input_colors(layer: Layer, labels: dict[str, np.ndarray], fan_in: int, positions: int, graph_kinds: dict[str, str]) -> np.ndarray:
    """Colors of a layer's inputs: identity for the observation, else the source's fibers
    (expanded to (fiber, position) when a conv feeds a linear through flatten)."""
    if layer.source is None:
        return np.arange(fan_in)
    src = labels[layer.source]
    if graph_kinds[layer.source] == "conv" and layer.kind != "conv":
        return (src[:, None] * positions + np.arange(positions)[None, :]).reshape(-1)
    return src


class LstmGates:
    """G(h): the gate partition [4, H] (PyTorch gate order i, f, g, o) of hidden partition ``h``,
    the 4H rows [W_ih P_in^T | W_hh P_h^T | b_ih + b_hh] clustered jointly.

    Only the W_hh P_h^T columns depend on h, so the Gram matrix of the rows is kept as
    (fixed part) + Q Q^T with Q = W_hh P_h^T [4H, K_h]; an h clustered before reuses its labels
    (same rows, same clustering).
    """

    def __init__(self, lstm: torch.nn.LSTM, in_colors: np.ndarray, thr: float) -> None:
        fixed = np.hstack([sum_columns(_w(lstm.weight_ih_l0), in_colors), (_w(lstm.bias_ih_l0) + _w(lstm.bias_hh_l0))[:, None]])
        self.gram_fixed = fixed @ fixed.T
        self.w_hh = _w(lstm.weight_hh_l0)
        self.hidden = lstm.hidden_size
        self.thr = thr
        self._cache: dict[bytes, np.ndarray] = {}

    def __call__(self, h: np.ndarray) -> np.ndarray:
        key = h.tobytes()
        if key not in self._cache:
            q = sum_columns(self.w_hh, h)
            gram = q @ q.T
            gram += self.gram_fixed
            self._cache[key] = cluster_gram(gram, self.thr).reshape(4, self.hidden)
        return self._cache[key]


def lstm_step(gates: LstmGates, h: np.ndarray, c: np.ndarray, refine: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One round F(h, c) = (meet(o, c'), c') with c' = meet(i, f, g, c), gates G(h) = (i, f, g, o);
    ``refine``: R(h, c) = (meet(h, o, c'), c'), which never coarsens h."""
    g = gates(h)
    c_new = meet(g[0], g[1], g[2], c)
    return (meet(h, g[3], c_new) if refine else meet(g[3], c_new)), c_new


@dataclass(frozen=True)
class LstmFibers:
    """The hidden partition ``h`` (and cell partition ``c``) and how it was reached: ``rounds`` of
    the plain iteration, ``converged`` (it reached a fixed point), ``cycle`` (the period it cycled
    with instead, or None), ``refine_rounds`` (rounds of the refinement; 0 when converged)."""

    h: np.ndarray
    c: np.ndarray
    rounds: int
    converged: bool
    cycle: int | None
    refine_rounds: int


def _lstm_fibers(lstm: torch.nn.LSTM, in_colors: np.ndarray, thr: float) -> LstmFibers:
    """The plain iteration (h, c) <- F(h, c) from one block each, to a fixed point; if it cycles
    (or runs past LSTM_MAX_ROUNDS), the refinement R from the meet of the cycle's phases.

    Why cycles happen: at threshold 0, clusters are groups of parallel rows, and rows parallel
    under a finer h stay parallel after summing their columns over a coarser one, so G is monotone
    (up to rounding) and each round of F only refines (h, c): a fixed point within 2H rounds.
    Average linkage at a threshold > 0 is not monotone (rows (1, -0.9) and (1, -1.1) are 0.005
    apart, their sums 0.1 and -0.1 are 2 apart), and trained weights cycle (periods 2 and 8 seen
    on a demo policy); stopping at the cap would return whichever phase it lands on, and phases
    can disagree almost completely.

    Detection: the state (h, c) after each round is remembered; a repeat of round j's state at
    round r is a cycle of period r - j (period 1: a fixed point). c only ever refines
    (c' = meet(i, f, g, c)), so c is the same in every phase and only h cycles.

    What is returned on a cycle: start from Q = meet of the phases' h (two units together only if
    every phase puts them together) and the cycle's c, and iterate R. R only refines h and c,
    each has at most H blocks, so R stops changing within 2H - 1 rounds, at h* = meet(h*, o, c*)
    and c* = meet(i, f, g, c*) for the gates G(h*), i.e. h* refines c*, which refines i, f and g,
    and h* refines o: any two units in one fiber of h* are in one cluster of every gate computed
    from h* itself. That is the consistency the collapse needs: if h_t and c_t are constant on
    the fibers of h*, each unit's gate pre-activation (W_ih x + W_hh h_t + b)_j depends only on its
    fiber-summed row, so gates, c_{t+1} = f c_t + i g and h_{t+1} = o tanh(c_{t+1}) are constant
    on fibers again (exactly so when the rows clustered together are equal, as for planted copies
    at threshold 0). A fixed point of F satisfies the same condition, so both cases return a partition of the same kind. The result
    is well defined: the iteration is deterministic, its cycle (a set of phases) does not depend
    on the cap or on the phase it stops at, nor does Q, and R is deterministic. Starting from the
    join of the phases instead would be just as well defined, but could merge units that some
    phase of the iteration keeps apart; the meet merges only what all phases agree on.
    Past the cap without a repeat (a transient or a period too long for the cap), R starts from
    the current state: still a stable partition, reported as neither converged nor cyclic.
    """
    gates = LstmGates(lstm, in_colors, thr)
    h = c = np.zeros(lstm.hidden_size, dtype=np.int64)
    seen = {h.tobytes() + c.tobytes(): 0}  # state -> the round it was first reached
    phases = [h]  # h after round 0, 1, ...
    cycle = None
    for rounds in range(1, LSTM_MAX_ROUNDS + 1):
        h, c = lstm_step(gates, h, c)
        first = seen.setdefault(h.tobytes() + c.tobytes(), rounds)
        if first < rounds:
            cycle = rounds - first
            break
        phases.append(h)
    if cycle == 1:
        return LstmFibers(h, c, rounds, True, None, 0)
    if cycle is not None:
        h = meet(*phases[first:])
    for refine_rounds in itertools.count(1):
        h_new, c_new = lstm_step(gates, h, c, refine=True)
        if np.array_equal(h_new, h) and np.array_equal(c_new, c):
            return LstmFibers(h, c, rounds, False, cycle, refine_rounds)
        h, c = h_new, c_new


def find_fibers(policy: torch.nn.Module, thresholds: Thresholds | dict | None = None) -> Fibers:
    """Fibers of every hidden layer of ``policy`` (outputs of actor and value heads are kept)."""
    thr = thresholds if isinstance(thresholds, Thresholds) else Thresholds(**(thresholds or {}))
    graph = layer_graph(policy)
    kinds = {layer.name: layer.kind for layer in graph}
    positions = conv_output_positions(policy)
    labels: dict[str, np.ndarray] = {}
    lstm: dict[str, Any] = {}
    for layer in graph:
        t = getattr(thr, layer.threshold)
        if layer.kind == "lstm":
            fan_in = layer.module.input_size
            colors = _input_colors(layer, labels, fan_in, positions, kinds)
            r = _lstm_fibers(layer.module, colors, t)
            labels[layer.name] = r.h
            lstm = dict(lstm_rounds=r.rounds, lstm_converged=r.converged, lstm_cycle=r.cycle, lstm_refine_rounds=r.refine_rounds)
            continue
        w = _w(layer.module.weight)
        colors = _input_colors(layer, labels, w.shape[1], positions, kinds)
        if layer.kind == "conv":  # [o, i, kh, kw] -> summed per input fiber, positions apart
            p = one_hot(colors, colors.max() + 1)
            summed = np.einsum("oiab,ki->okab", w, p).reshape(w.shape[0], -1)
        else:
            summed = sum_columns(w, colors)
        if layer.kind == "out":
            labels[layer.name] = np.arange(w.shape[0])
            continue
        rows = np.hstack([summed, _w(layer.module.bias)[:, None]])
        labels[layer.name] = cluster_rows(rows, t)
    return Fibers(labels, thr, policy.config.name, positions, **lstm)
