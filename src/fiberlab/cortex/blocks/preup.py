"""PreUp block (used by M): project up to D = proj_factor H, run the cell there, gate, project down.

``[a, z] = W_up LN(x)`` (each of width D); ``y_c = cell(a)`` for a cell with its own input
nonlinearity (mLSTM's causal conv + SiLU), else ``cell(SiLU a)``;
``y = x + W_down((y_c + s ⊙ SiLU a) ⊙ SiLU z)`` with a learnable skip ``s`` (init 1).
Which cell input is used is the config flag ``silu_cell_input`` (the pattern sets it per token), so
the block never inspects the cell's type.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from fiberlab.cortex.base import State
from fiberlab.cortex.blocks.base import BlockConfig, CellBlock, layer_norm
from fiberlab.cortex.registry import register_block


def inner_width(d_hidden: int, proj_factor: float) -> int:
    """D = round(proj_factor * H): the width the PreUp block's cell runs at."""
    return max(1, round(proj_factor * d_hidden))


class PreUpBlockConfig(BlockConfig):
    d_hidden: int = Field(128, ge=1)  # block width H; the cell's d_hidden must be round(proj_factor * H)
    proj_factor: float = Field(2.0, gt=0)
    silu_cell_input: bool = True  # False: the cell reads `a` itself (mLSTM)

    @property
    def inner_width(self) -> int:
        return inner_width(self.d_hidden, self.proj_factor)


class PreUpBlock(CellBlock):
    def __init__(self, cfg: PreUpBlockConfig) -> None:
        super().__init__(cfg, cfg.d_hidden, cfg.inner_width)
        h, d = cfg.d_hidden, cfg.inner_width
        self.norm = layer_norm(h)
        self.up = nn.Linear(h, 2 * d, bias=False)
        self.down = nn.Linear(d, h, bias=False)
        self.skip = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        a, z = self.up(self.norm(x)).chunk(2, dim=-1)  # [a, z] = W_up LN(x)
        silu_a = F.silu(a)
        y_c, new_state = self.run_cell(silu_a if self.cfg.silu_cell_input else a, state, resets)
        return x + self.down((y_c + self.skip * silu_a) * F.silu(z)), new_state  # x + W_down((y_c + s⊙SiLU a)⊙SiLU z)


register_block(PreUpBlockConfig, PreUpBlock)
