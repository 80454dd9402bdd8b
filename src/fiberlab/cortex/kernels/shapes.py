"""Input checks shared by the cells: one line naming the bad value and what is allowed.

Why here: every cell accepts ``[B, H]`` or ``[B, T, H]`` plus optional resets ``[B]`` / ``[B, T]``;
checking once, the same way, keeps the error messages uniform and the cells short.
"""
from __future__ import annotations

import torch

from fiberlab.cortex.base import as_sequence


def sequence_input(x: torch.Tensor, resets: torch.Tensor | None, width: int, who: str) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """Check ``x`` / ``resets`` and return ``(x [B, T, width], resets bool [B, T] or None, was_one_step)``."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who}: x must be [B, {width}] or [B, T, {width}], got {shape}")
    if x.dim() == 3 and x.shape[1] == 0:
        raise ValueError(f"{who}: a sequence needs at least one step, got x of shape {tuple(x.shape)}")
    if x.shape[-1] != width:
        raise ValueError(f"{who}: x last dim must be {width}, got {tuple(x.shape)}")
    if resets is not None:
        B = x.shape[0]
        allowed = [(B,), (B, 1)] if x.dim() == 2 else [(B,), (B, x.shape[1])]
        if tuple(resets.shape) not in allowed:
            raise ValueError(f"{who}: resets must have shape {' or '.join(map(str, allowed))}, got {tuple(resets.shape)}")
        resets = resets.to(device=x.device, dtype=torch.bool)
    x, resets, single = as_sequence(x, resets)
    return x, resets, single


def check_state(state: dict, expected: dict[str, tuple[int, ...]], who: str) -> None:
    """Raise if a carried state lacks a key or has a tensor of the wrong shape."""
    for key, shape in expected.items():
        if key not in state:
            raise ValueError(f"{who}: state lacks '{key}', expected keys {sorted(expected)}")
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{who}: state['{key}'] must be {shape}, got {tuple(state[key].shape)}")
