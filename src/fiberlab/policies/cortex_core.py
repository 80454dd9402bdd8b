"""``policy.core=cortex``: a fiberlab.cortex stack where the LSTM stands.

Encoder features (any width) -> Linear to ``d_hidden`` -> the stack the pattern names -> heads.
The projection exists because a stack keeps one width throughout (residual streams), while encoders
end at whatever width their last layer has. The state is the stack's nested dict
(``{"layer_0": {"expert_0": {"cell": {...}}}, ...}``); the trainer handles it with ``map_state``.
"""
from __future__ import annotations

import torch
from torch import nn

from fiberlab.cortex.base import MemoryModule, State, zero_rows
from fiberlab.cortex.pattern import stack_config
from fiberlab.cortex.stack import Stack
from fiberlab.policies.layers import layer_init


class CortexCore(MemoryModule):
    """Same interface as :class:`~fiberlab.policies.cores.LSTMCore`: output width ``hidden_size``."""

    def __init__(self, input_size: int, pattern: str | list[str], d_hidden: int, num_layers: int, overrides: dict | None = None) -> None:
        super().__init__()
        self.d_hidden = self.hidden_size = d_hidden
        self.proj = layer_init(nn.Linear(input_size, d_hidden))
        self.stack = Stack(stack_config(pattern, d_hidden, num_layers, **(overrides or {})))

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return self.stack.init_state(batch, device, dtype)

    def reset_state(self, state: State, mask: torch.Tensor) -> State:
        """Zero the rows of every tensor of the nested state where ``mask`` is True."""
        return zero_rows(state, mask.to(torch.bool))

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        # The stack runs in float32 even under the trainer's bf16 autocast: exponential gates, scans
        # and complex traces need the range (Axon's complex math has no bf16 kernels at all).
        h = self.proj(x)  # under autocast when the trainer uses it
        with torch.autocast(x.device.type, enabled=False):
            return self.stack(h.float(), state, resets=resets)
