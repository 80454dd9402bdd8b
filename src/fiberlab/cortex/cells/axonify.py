"""The "^" of the pattern language: a projection that is either ``nn.Linear`` or a stateful ``AxonLayer``.

Why helpers and not a wrapper module: the mLSTM, sLSTM and Transformer-XL cells swap some of their
projections for ``AxonLayer`` when ``axonify`` is set. An AxonLayer carries state, so the cell must
store it under a key of its own state dict and pass resets through; a Linear does neither. These
three functions keep that difference out of the cells' math.
"""
from __future__ import annotations

import torch
from torch import nn

from fiberlab.cortex.base import State
from fiberlab.cortex.cells.axon import AxonLayer


def projection(d_in: int, d_out: int, *, bias: bool, axonify: bool) -> nn.Module:
    """``Linear(d_in -> d_out)``, or ``AxonLayer(d_in, d_out)`` (= that Linear + an Axon trace path)."""
    return AxonLayer(d_in, d_out, bias=bias) if axonify else nn.Linear(d_in, d_out, bias=bias)


def linear_part(layer: nn.Module) -> nn.Linear:
    """The plain Linear inside a projection, so a cell can apply its special init to either kind."""
    return layer.linear if isinstance(layer, AxonLayer) else layer


def projection_states(layers: dict[str, nn.Module], batch: int, device: torch.device | str, dtype: torch.dtype) -> State:
    """Fresh states of the stateful projections, keyed as the cell stores them (empty when none is)."""
    return {key: layer.init_state(batch, device, dtype) for key, layer in layers.items() if isinstance(layer, AxonLayer)}


def project(layer: nn.Module, x: torch.Tensor, state: State, key: str, resets: torch.Tensor | None, new_state: State) -> torch.Tensor:
    """Apply ``layer`` to ``x`` ``[B, T, d_in]``; an AxonLayer reads ``state[key]`` and writes ``new_state[key]``."""
    if isinstance(layer, AxonLayer):
        y, new_state[key] = layer(x, state[key], resets=resets)
        return y
    return layer(x)
