"""The one interface every memory module of fiberlab.cortex shares (cells, blocks, columns, stacks).

``forward(x, state=None, *, resets=None) -> (y, new_state)``

- ``x``: ``[B, H]`` (one step) or ``[B, T, H]`` (a sequence); ``y`` has the same leading shape.
- ``state``: a nested dict of tensors whose first dimension is the batch ``B`` (``None``: fresh).
- ``resets``: bool ``[B]`` or ``[B, T]``: an episode starts at this step, so the carried state is
  zeroed BEFORE step t is processed. Outputs from step t on are then independent of inputs before t.

Why one interface: a stack can stand wherever a cell stands (inside a block, a column, a policy core),
and the trainer's truncated BPTT only ever stores and restores a state dict.

Step-by-step and whole-sequence calls must agree: ``forward(x[:, t], s)`` chained over t gives the
same outputs and final state as ``forward(x, s)``, with and without resets.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

State = dict[str, Union[torch.Tensor, "State"]]


def map_state(state: State, fn) -> State:
    """Apply ``fn`` to every tensor of a nested state dict (detach, to(device), index rows, ...)."""
    return {k: map_state(v, fn) if isinstance(v, dict) else fn(v) for k, v in state.items()}


def zero_rows(state: State, mask: torch.Tensor) -> State:
    """Zero the batch rows of every tensor where ``mask`` ([B] bool) is True.

    A multiply, not an in-place write, so autograd through the kept rows is untouched.
    """

    def zero(t: torch.Tensor) -> torch.Tensor:
        keep = (~mask).view(-1, *([1] * (t.dim() - 1)))
        return torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))

    return map_state(state, zero)


def detach_state(state: State) -> State:
    """Cut the gradient through a carried state (truncated BPTT between segments)."""
    return map_state(state, torch.Tensor.detach)


def as_sequence(x: torch.Tensor, resets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """``[B, H]`` -> ``[B, 1, H]`` (and resets ``[B]`` -> ``[B, 1]``); returns whether it was one step."""
    if x.dim() == 2:
        return x.unsqueeze(1), None if resets is None else resets.reshape(-1, 1), True
    if x.dim() != 3:
        raise ValueError(f"cortex modules take x of shape [B, H] or [B, T, H], got {tuple(x.shape)}")
    if resets is not None and resets.dim() == 1:  # [B] with a sequence: reset before the first step
        r = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        r[:, 0] = resets
        resets = r
    return x, resets, False


class MemoryModule(nn.Module):
    """Base class: subclasses implement ``init_state`` and ``forward``.

    ``reset_state`` zeroes the chosen rows, which equals a fresh state for every module whose
    ``init_state`` is all zeros (all of ours: the Transformer-XL memory carries a validity mask that
    is zero too, and AGaLiTe's tick restarts at 0).
    """

    d_hidden: int

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        raise NotImplementedError

    def reset_state(self, state: State, mask: torch.Tensor) -> State:
        return zero_rows(state, mask.to(torch.bool))

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:  # noqa: D401
        raise NotImplementedError
