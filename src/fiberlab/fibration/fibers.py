"""find_fibers: the fibers of every hidden layer of a policy (spec: ../shared/specs/fibration.md).

For a layer with weights W [m, n], bias b and input colors c (K classes, one-hot P [K, n]), each
output unit i gets the feature row a_i = [(W P^T)_i, b_i] (incoming weights SUMMED per input
fiber, the bias appended); rows are clustered by cosine distance with average linkage at the
layer type's threshold. Conv filters are summed per input-channel fiber with kernel positions kept
apart; flatten gives feature (channel c, position p) the color (fiber(c), p); LSTM gate rows
[W_ih P_in^T | W_hh P_h^T | b_ih + b_hh] of all 4 gates are clustered jointly and the hidden
partition is iterated to a fixed point: c <- (i, f, g, c_prev), h <- (o, c).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fiberlab.fibration.graph import Layer, conv_output_positions, layer_graph
from fiberlab.fibration.partition import canonical, cluster_gram, cluster_rows, one_hot, sum_columns

LSTM_MAX_ROUNDS = 50


class Thresholds(BaseModel):
    """Cosine-distance thresholds per layer type, each in [0, 2] (defaults: the Metta guide's)."""

    model_config = ConfigDict(extra="forbid")
    linear: float = Field(0.7, ge=0.0, le=2.0)
    cnn: float = Field(0.5, ge=0.0, le=2.0)
    lstm: float = Field(1.0, ge=0.0, le=2.0)
    critic: float = Field(0.8, ge=0.0, le=2.0)


@dataclass
class Fibers:
    """Fiber labels per layer (``labels[name][unit] = fiber``) and what produced them."""

    labels: dict[str, np.ndarray]
    thresholds: Thresholds
    architecture: str
    positions: int = 1  # spatial positions per channel at flatten
    lstm_rounds: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def widths(self) -> dict[str, tuple[int, int]]:
        """(units before, fibers after) per layer."""
        return {k: (len(v), int(v.max()) + 1) for k, v in self.labels.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "thresholds": self.thresholds.model_dump(),
            "positions": self.positions,
            "lstm_rounds": self.lstm_rounds,
            "layers": {k: {"units": len(v), "fibers": int(v.max()) + 1, "labels": v.tolist()} for k, v in self.labels.items()},
            **self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fibers":
        labels = {k: np.asarray(v["labels"], dtype=np.int64) for k, v in d["layers"].items()}
        meta = {k: v for k, v in d.items() if k not in ("architecture", "thresholds", "positions", "lstm_rounds", "layers")}
        return cls(labels, Thresholds(**d["thresholds"]), d["architecture"], d.get("positions", 1), d.get("lstm_rounds", 0), meta)

    def save(self, path: str | Path) -> Path:
        """``fibers.json``: plain JSON, readable without fiberlab."""
        from fiberlab.atomic import write_json_atomic

        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path


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


def _lstm_fibers(lstm: torch.nn.LSTM, in_colors: np.ndarray, thr: float) -> tuple[np.ndarray, int]:
    """Gate rows a = [W_ih P_in^T | W_hh P_h^T | b_ih + b_hh], clustered jointly each round.

    Only the W_hh P_h^T columns change between rounds, so the Gram matrix of the rows is kept as
    (fixed part) + Q Q^T with Q = W_hh P_h^T [4H, K_h]; a round whose h partition equals the last
    clustered one reuses its gate labels (same rows, same clustering).
    """
    H = lstm.hidden_size
    fixed = np.hstack([sum_columns(_w(lstm.weight_ih_l0), in_colors), (_w(lstm.bias_ih_l0) + _w(lstm.bias_hh_l0))[:, None]])
    gram_fixed = fixed @ fixed.T
    w_hh = _w(lstm.weight_hh_l0)
    h = np.zeros(H, dtype=np.int64)
    c = np.zeros(H, dtype=np.int64)
    clustered_h: np.ndarray | None = None
    g = np.zeros((4, H), dtype=np.int64)
    for rounds in range(1, LSTM_MAX_ROUNDS + 1):
        if clustered_h is None or not np.array_equal(h, clustered_h):
            q = sum_columns(w_hh, h)
            gram = q @ q.T
            gram += gram_fixed
            g = cluster_gram(gram, thr).reshape(4, H)  # PyTorch gate order i, f, g, o
            clustered_h = h
        c_new = canonical(np.unique(np.stack([g[0], g[1], g[2], c], 1), axis=0, return_inverse=True)[1].ravel())
        h_new = canonical(np.unique(np.stack([g[3], c_new], 1), axis=0, return_inverse=True)[1].ravel())
        if np.array_equal(h_new, h) and np.array_equal(c_new, c):
            return h, rounds
        h, c = h_new, c_new
    return h, LSTM_MAX_ROUNDS


def find_fibers(policy: torch.nn.Module, thresholds: Thresholds | dict | None = None) -> Fibers:
    """Fibers of every hidden layer of ``policy`` (outputs of actor and value heads are kept)."""
    thr = thresholds if isinstance(thresholds, Thresholds) else Thresholds(**(thresholds or {}))
    graph = layer_graph(policy)
    kinds = {layer.name: layer.kind for layer in graph}
    positions = conv_output_positions(policy)
    labels: dict[str, np.ndarray] = {}
    rounds = 0
    for layer in graph:
        t = getattr(thr, layer.threshold)
        if layer.kind == "lstm":
            fan_in = layer.module.input_size
            colors = _input_colors(layer, labels, fan_in, positions, kinds)
            labels[layer.name], rounds = _lstm_fibers(layer.module, colors, t)
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
    return Fibers(labels, thr, policy.config.name, positions, rounds)
