"""Controls for a collapse: random ablation with the collapsed widths, and a small model from scratch.

Random ablation keeps, in every layer, a random subset of units of exactly the collapsed width,
with their original weights (dropped units and their outgoing weights vanish); both LSTM biases
are kept as they were (the original code copied b_ih into b_hh).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fiberlab.fibration.collapse import config_with_widths, project
from fiberlab.fibration.fibers import Fibers
from fiberlab.fibration.graph import conv_output_positions, layer_graph


def fiber_widths(fibers: Fibers) -> dict[str, int]:
    return {name: int(v.max()) + 1 for name, v in fibers.labels.items()}


def ablate(policy: nn.Module, widths: dict[str, int], seed: int) -> tuple[nn.Module, dict[str, list[int]]]:
    """Keep ``widths[layer]`` random units of each layer; return the policy and the kept indices."""
    rng = np.random.default_rng(seed)
    rows, kept = {}, {}
    for layer in layer_graph(policy):
        if layer.kind == "out":
            continue
        n = layer.module.hidden_size if layer.kind == "lstm" else layer.module.weight.shape[0]
        k = widths[layer.name]
        if not 1 <= k <= n:
            raise ValueError(f"layer {layer.name}: cannot keep {k} of {n} units")
        idx = np.sort(rng.choice(n, size=k, replace=False))
        sel = torch.zeros(k, n, dtype=torch.float64)
        sel[torch.arange(k), torch.from_numpy(idx)] = 1.0
        rows[layer.name], kept[layer.name] = sel, idx.tolist()
    return project(policy, config_with_widths(policy, widths), rows, conv_output_positions(policy)), kept


def node_count(policy: nn.Module) -> int:
    """Hidden units (nodes) of the collapsible layers."""
    return sum(layer.module.hidden_size if layer.kind == "lstm" else layer.module.weight.shape[0] for layer in layer_graph(policy) if layer.kind != "out")


def param_count(policy: nn.Module) -> int:
    return sum(p.numel() for p in policy.parameters())
