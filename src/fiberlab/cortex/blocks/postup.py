"""PostUp block (used by A and S): the cell at width H, then a feed-forward that widens by 1.5.

Pre-norm residual form, so at init the block is close to the identity and deep stacks train:
``y = x + cell(LN1 x)``; ``out = y + W2 SiLU(W1 LN2 y)`` with ``W1: H -> proj_factor H``.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from fiberlab.cortex.base import State
from fiberlab.cortex.blocks.base import BlockConfig, CellBlock, layer_norm
from fiberlab.cortex.registry import register_block


class PostUpBlockConfig(BlockConfig):
    proj_factor: float = Field(1.5, gt=0)  # feed-forward width / H

    @property
    def d_hidden(self) -> int:
        return self.cell.d_hidden


class PostUpBlock(CellBlock):
    def __init__(self, cfg: PostUpBlockConfig) -> None:
        super().__init__(cfg, cfg.cell.d_hidden, cfg.cell.d_hidden)
        h = self.d_hidden
        d_ff = max(1, round(cfg.proj_factor * h))
        self.norm1, self.norm2 = layer_norm(h), layer_norm(h)
        self.ffn_in, self.ffn_out = nn.Linear(h, d_ff), nn.Linear(d_ff, h)

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        c, new_state = self.run_cell(self.norm1(x), state, resets)
        y = x + c  # y = x + cell(LN1 x)
        return y + self.ffn_out(F.silu(self.ffn_in(self.norm2(y)))), new_state  # y + W2 SiLU(W1 LN2 y)


register_block(PostUpBlockConfig, PostUpBlock)
