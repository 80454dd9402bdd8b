"""Small building blocks: PufferLib/CleanRL's orthogonal initialisation and MLP stacks."""
from __future__ import annotations

import itertools
import math

from torch import nn


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights with gain ``std`` and constant bias (Engstrom et al. 2020's PPO detail)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, last_activation: bool = True) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, each followed by ``activation``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(layer_init(nn.Linear(a, b)))
        if last_activation or i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def head(in_size: int, hidden: list[int], out_size: int, std: float, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Hidden layers then an output layer initialised with gain ``std`` (0.01 actor, 1.0 critic)."""
    body = mlp([in_size, *hidden], activation) if hidden else nn.Sequential()
    body.append(layer_init(nn.Linear(hidden[-1] if hidden else in_size, out_size), std=std))
    return body
