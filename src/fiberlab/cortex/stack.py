"""Stack: columns applied in order, then an optional LayerNorm; state ``{"layer_0": ..., ...}``."""
from __future__ import annotations

import torch
from pydantic import field_validator
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.blocks.base import layer_norm
from fiberlab.cortex.column import Column, ColumnConfig
from fiberlab.cortex.config import CortexConfig, same_width


class StackConfig(CortexConfig):
    """A whole memory backbone: ``StackConfig.model_validate(cfg.model_dump(mode="json"))`` rebuilds it."""

    layers: list[ColumnConfig]
    post_norm: bool = True  # final LayerNorm (no bias) on the stack's output

    @field_validator("layers")
    @classmethod
    def _same_width(cls, layers: list[ColumnConfig]) -> list[ColumnConfig]:
        return same_width(layers, "layer", "stack")

    @property
    def d_hidden(self) -> int:
        return self.layers[0].d_hidden


class Stack(MemoryModule):
    """``y = LN(column_L(... column_1(x)))``; every column keeps the width ``d_hidden``."""

    def __init__(self, cfg: StackConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_hidden = cfg.d_hidden
        self.layers = nn.ModuleList(Column(c) for c in cfg.layers)
        self.norm = layer_norm(self.d_hidden) if cfg.post_norm else nn.Identity()

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return {f"layer_{i}": c.init_state(batch, device, dtype) for i, c in enumerate(self.layers)}

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        new_state = {}
        for i, column in enumerate(self.layers):
            x, new_state[f"layer_{i}"] = column(x, None if state is None else state[f"layer_{i}"], resets=resets)
        return self.norm(x), new_state
