"""collapse: a smaller policy of the same architecture with one unit per fiber.

With P_out the fiber one-hot of a layer's outputs (fiber sizes n_k) and P_in that of its inputs:

    W' = diag(1/n) P_out W P_in^T        incoming rows averaged over the fiber ("mean in"),
    b' = diag(1/n) P_out b               columns of one input fiber summed ("sum out")

Convs do the same per kernel position; LSTMs per gate block for W_ih, W_hh (inputs: the hidden
partition itself) and both biases, each bias averaged over its own fiber (the original code divided
every fiber's bias sum by the size of fiber 0). Heads keep their outputs: W' = W P_in^T.
With exact (planted) symmetries the collapsed policy computes the same function.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fiberlab.fibration.fibers import Fibers
from fiberlab.fibration.graph import layer_graph
from fiberlab.fibration.partition import one_hot


def _mean_rows(labels: np.ndarray) -> torch.Tensor:
    p = one_hot(labels)
    return torch.from_numpy(p / p.sum(1, keepdims=True))


def collapsed_config(policy: nn.Module, fibers: Fibers):
    """The policy's config with every collapsed width set to its fiber count."""
    return config_with_widths(policy, {name: int(v.max()) + 1 for name, v in fibers.labels.items()})


def config_with_widths(policy: nn.Module, widths: dict[str, int]):
    """The policy's config with the named layers' widths replaced."""
    cfg = policy.config.model_copy(deep=True)
    updates: dict[str, object] = {}
    for layer in layer_graph(policy):
        if layer.width is None:
            continue
        field, index = layer.width
        k = widths[layer.name]
        if index is None:
            updates[field] = k
        else:
            values = list(updates.get(field, getattr(cfg, field)))
            values[index] = k
            updates[field] = values
    return cfg.model_copy(update=updates)


@torch.no_grad()
def project(policy: nn.Module, config, rows: dict[str, torch.Tensor], positions: int) -> nn.Module:
    """Build ``config`` through the registry and fill it from ``policy`` through per-layer maps.

    ``rows[name]`` is a [K, n] matrix taking a layer's n output units to K new units (fiber means
    for collapse, a 0/1 selection for ablation); inputs are mapped with the source layer's
    ``cols`` = the same matrix with its rows made 0/1 (fiber sums, or the same selection), expanded
    over spatial positions where a conv feeds a linear through flatten.
    """
    from fiberlab.policies import build_policy

    graph = layer_graph(policy)
    small = build_policy(config)
    new_layers = {layer.name: layer for layer in layer_graph(small)}
    kinds = {layer.name: layer.kind for layer in graph}
    dtype = torch.float64
    for layer in graph:
        if layer.source is None:
            fan_in = layer.module.weight_ih_l0.shape[1] if layer.kind == "lstm" else layer.module.weight.shape[1]
            p_in = torch.eye(fan_in, dtype=dtype)
        else:
            p_in = (rows[layer.source] != 0).to(dtype)
            if kinds[layer.source] == "conv" and layer.kind != "conv":
                p_in = torch.kron(p_in, torch.eye(positions, dtype=dtype))
        target = new_layers[layer.name].module
        if layer.kind == "lstm":
            m = rows[layer.name]
            p_h = (m != 0).to(dtype)
            H = layer.module.hidden_size
            w_ih = layer.module.weight_ih_l0.to(dtype).reshape(4, H, -1)
            w_hh = layer.module.weight_hh_l0.to(dtype).reshape(4, H, H)
            target.weight_ih_l0.copy_(torch.einsum("kh,ghi,li->gkl", m, w_ih, p_in).reshape(target.weight_ih_l0.shape))
            target.weight_hh_l0.copy_(torch.einsum("kh,ghj,lj->gkl", m, w_hh, p_h).reshape(target.weight_hh_l0.shape))
            for b in ("bias_ih_l0", "bias_hh_l0"):
                getattr(target, b).copy_(torch.einsum("kh,gh->gk", m, getattr(layer.module, b).to(dtype).reshape(4, H)).reshape(-1))
            continue
        w, b = layer.module.weight.to(dtype), layer.module.bias.to(dtype)
        m = torch.eye(w.shape[0], dtype=dtype) if layer.kind == "out" else rows[layer.name]
        if layer.kind == "conv":
            target.weight.copy_(torch.einsum("ko,oiab,li->klab", m, w, p_in))
        else:
            target.weight.copy_(m @ w @ p_in.T)
        target.bias.copy_(m @ b)
    return small.to(next(policy.parameters()).device)


def collapse(policy: nn.Module, fibers: Fibers) -> nn.Module:
    """A new policy (built through the registry) with one unit per fiber, weights merged."""
    graph = layer_graph(policy)
    if fibers.architecture != policy.config.name or set(fibers.labels) != {layer.name for layer in graph}:
        raise ValueError(f"fibers of {fibers.architecture!r} with layers {sorted(fibers.labels)} do not fit this {policy.config.name!r} policy")
    rows = {layer.name: _mean_rows(fibers.labels[layer.name]) for layer in graph if layer.kind != "out"}
    return project(policy, collapsed_config(policy, fibers), rows, fibers.positions)
