"""Planted symmetries: lift a small policy into a bigger one that computes the same function.

Each unit k of the base becomes several copies whose incoming weights, summed over every input
fiber, equal the base unit's (each copy's incoming column is split into random shares that sum to
1 over the lifts of that input); copies have identical activations, so the big network equals the
base network and its fibers are exactly the copy groups.
"""
from __future__ import annotations

import numpy as np
import torch

from fiberlab.fibration.graph import layer_graph
from fiberlab.policies import build_policy


def _assign(n_base: int, rng: np.random.Generator, max_copies: int) -> np.ndarray:
    counts = rng.integers(1, max_copies + 1, size=n_base)
    a = np.repeat(np.arange(n_base), counts)
    rng.shuffle(a)
    return a


def _shares(assign: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = rng.uniform(0.2, 1.0, size=len(assign))
    totals = np.bincount(assign, weights=s)
    return s / totals[assign]


@torch.no_grad()
def lift(base: torch.nn.Module, seed: int = 0, max_copies: int = 3):
    """(big policy, planted assignment per layer: big unit -> base unit)."""
    rng = np.random.default_rng(seed)
    graph = layer_graph(base)
    kinds = {layer.name: layer.kind for layer in graph}
    assign: dict[str, np.ndarray] = {}
    updates: dict[str, object] = {}
    for layer in graph:
        if layer.width is None:
            continue
        n = layer.module.hidden_size if layer.kind == "lstm" else layer.module.weight.shape[0]
        assign[layer.name] = _assign(n, rng, max_copies)
        field, index = layer.width
        if index is None:
            updates[field] = len(assign[layer.name])
        else:
            values = list(updates.get(field, getattr(base.config, field)))
            values[index] = len(assign[layer.name])
            updates[field] = values
    big = build_policy(base.config.model_copy(update=updates))
    big_layers = {layer.name: layer for layer in layer_graph(big)}
    positions = None
    for layer in graph:
        out_a = assign.get(layer.name)
        if layer.kind == "out":
            out_a = np.arange(layer.module.weight.shape[0])
        # input assignment and shares (observation inputs are not lifted)
        if layer.source is None:
            fan_in = layer.module.input_size if layer.kind == "lstm" else layer.module.weight.shape[1]
            in_a, share = np.arange(fan_in), np.ones(fan_in)
        else:
            src_a = assign[layer.source]
            src_share = _shares(src_a, rng)
            if kinds[layer.source] == "conv" and layer.kind != "conv":
                n_base_ch = int(src_a.max()) + 1
                positions = layer.module.weight.shape[1] // n_base_ch
                p = np.arange(positions)
                in_a = (src_a[:, None] * positions + p[None, :]).reshape(-1)
                share = np.repeat(src_share, positions)
            else:
                in_a, share = src_a, src_share
        target = big_layers[layer.name].module
        sh = torch.from_numpy(share).float()
        ia, oa = torch.from_numpy(in_a), torch.from_numpy(out_a)
        if layer.kind == "lstm":
            H, h_a = layer.module.hidden_size, torch.from_numpy(out_a)
            h_share = torch.from_numpy(_shares(out_a, rng)).float()
            w_ih = layer.module.weight_ih_l0.reshape(4, H, -1)[:, h_a][:, :, ia] * sh
            w_hh = layer.module.weight_hh_l0.reshape(4, H, H)[:, h_a][:, :, h_a] * h_share
            target.weight_ih_l0.copy_(w_ih.reshape(target.weight_ih_l0.shape))
            target.weight_hh_l0.copy_(w_hh.reshape(target.weight_hh_l0.shape))
            for b in ("bias_ih_l0", "bias_hh_l0"):
                getattr(target, b).copy_(getattr(layer.module, b).reshape(4, H)[:, h_a].reshape(-1))
            continue
        w = layer.module.weight
        if layer.kind == "conv":
            target.weight.copy_(w[oa][:, ia] * sh[None, :, None, None])
        else:
            target.weight.copy_(w[oa][:, ia] * sh[None, :])
        target.bias.copy_(layer.module.bias[oa])
    return big, assign
