"""What every block shares: it owns one memory module (a cell) and carries ``{"cell": cell_state}``.

A block adds only per-token maps (norms, projections, gates) around its cell, so it handles one step
``[B, H]`` and a sequence ``[B, T, H]`` alike and leaves resets to the cell.
"""
from __future__ import annotations

import torch
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.config import CortexConfig
from fiberlab.cortex.registry import TaggedCell, build_cell


class BlockConfig(CortexConfig):
    """Base of the block configs: the cell the block wraps (its ``d_hidden`` is the cell's width)."""

    cell: TaggedCell


def layer_norm(width: int) -> nn.LayerNorm:
    """The blocks' LayerNorm: learnable scale, no bias (spec section 2)."""
    return nn.LayerNorm(width, bias=False)


class CellBlock(MemoryModule):
    """Builds ``self.cell`` from ``cfg.cell`` and checks it runs at the width the block expects."""

    def __init__(self, cfg: BlockConfig, d_hidden: int, cell_width: int) -> None:
        super().__init__()
        if cfg.cell.d_hidden != cell_width:
            raise ValueError(f"{type(self).__name__} with d_hidden={d_hidden} needs a cell of width {cell_width}, got cell.d_hidden={cfg.cell.d_hidden}")
        self.cfg = cfg
        self.d_hidden = d_hidden
        self.cell = build_cell(cfg.cell)

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return {"cell": self.cell.init_state(batch, device, dtype)}

    def run_cell(self, x: torch.Tensor, state: State | None, resets: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        y, cell_state = self.cell(x, None if state is None else state["cell"], resets=resets)
        return y, {"cell": cell_state}
