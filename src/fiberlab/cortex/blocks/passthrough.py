"""PassThrough block: ``y = cell(x)``, no norm and no residual (for cells that are whole layers: L, C)."""
from __future__ import annotations

import torch

from fiberlab.cortex.base import State
from fiberlab.cortex.blocks.base import BlockConfig, CellBlock
from fiberlab.cortex.registry import register_block


class PassThroughBlockConfig(BlockConfig):
    """Only the cell: the block's width is the cell's."""

    @property
    def d_hidden(self) -> int:
        return self.cell.d_hidden


class PassThroughBlock(CellBlock):
    def __init__(self, cfg: PassThroughBlockConfig) -> None:
        super().__init__(cfg, cfg.cell.d_hidden, cfg.cell.d_hidden)

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        return self.run_cell(x, state, resets)  # y = cell(x)


register_block(PassThroughBlockConfig, PassThroughBlock)
