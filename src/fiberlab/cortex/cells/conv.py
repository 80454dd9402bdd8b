"""C – causal depthwise convolution over time, with a carried buffer of past inputs.

``y_t = bias + sum_{i=0}^{k-1} w_i ⊙ x_{t-(k-1)+i}`` per channel, where inputs before the sequence
come from the carried buffer and inputs from before an episode reset count as zero.

Why the buffer is always used: the reference ignores the carried buffer in sequence mode, so a
sequence split in two calls differs from one call. Here sequence mode is one ``conv1d`` over
``[buffer; x]`` (with resets in the call: k masked shifted multiply-adds, still parallel over time),
and a split call equals a whole call exactly.
State: ``conv`` ``[B, k-1, H]``, the last k-1 inputs, oldest first (a shift register: the k-th
slot of the reference's ``[B, k, H]`` ring buffer is the current input, which we never need to store).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.kernels.segment_conv import causal_depthwise_conv
from fiberlab.cortex.kernels.shapes import check_state, sequence_input


class CausalConvConfig(CellConfig):
    """Depthwise causal conv: ``kernel_size`` taps per channel, with a bias."""

    kernel_size: int = Field(4, ge=1)


class CausalConvCell(MemoryModule):
    """Depthwise causal conv1d ``[.., H] -> [.., H]`` that honours resets mid-sequence."""

    def __init__(self, cfg: CausalConvConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_hidden = H = cfg.d_hidden
        self.kernel_size = cfg.kernel_size
        self.conv = nn.Conv1d(H, H, cfg.kernel_size, groups=H, bias=True)  # weight [H, 1, k]

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return {"conv": torch.zeros(batch, self.kernel_size - 1, self.d_hidden, device=device, dtype=dtype)}

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x, resets, single = sequence_input(x, resets, self.d_hidden, "CausalConvCell")
        B, T, H = x.shape
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        check_state(state, {"conv": (B, self.kernel_size - 1, H)}, "CausalConvCell")
        y, new_buffer = causal_depthwise_conv(x, state["conv"], self.conv.weight[:, 0], self.conv.bias, resets)
        return (y[:, 0] if single else y), {"conv": new_buffer}
