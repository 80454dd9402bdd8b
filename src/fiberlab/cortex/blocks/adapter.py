"""Adapter block: a trainable bottleneck added after a (possibly pretrained) base block.

``y = base(x)``; ``out = y + g ⊙ up(GELU(down(LN y)))`` with ``g = σ(W_g LN y)``.
``up`` and ``W_g`` start at zero, so at init the adapter IS the base block (out = y exactly) and
fine-tuning starts from the base's behaviour.

Why a sigmoid gate and not a zero-initialised scalar: with both ``up`` and a scalar ``g`` at zero,
each one's gradient is proportional to the other, so neither could ever move. Here ``g = 0.5`` at
init, ``up`` receives gradient from the first step and ``W_g`` once ``up`` is non-zero.
The state is the base block's own (``{"cell": ...}``): wrapping a block keeps its state layout.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.blocks.base import layer_norm
from fiberlab.cortex.config import CortexConfig
from fiberlab.cortex.registry import TaggedBlock, build_block, register_block


class AdapterBlockConfig(CortexConfig):
    base: TaggedBlock
    bottleneck: int | None = Field(None, ge=1)  # None: d_hidden // 4

    @property
    def d_hidden(self) -> int:
        return self.base.d_hidden


class AdapterBlock(MemoryModule):
    def __init__(self, cfg: AdapterBlockConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.base = build_block(cfg.base)
        h = self.d_hidden = self.base.d_hidden
        k = cfg.bottleneck or max(1, h // 4)
        self.norm = layer_norm(h)
        self.down = nn.Linear(h, k)
        self.up = nn.Linear(k, h)
        self.gate = nn.Linear(h, h)
        for lin in (self.up, self.gate):  # identity of base at init
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return self.base.init_state(batch, device, dtype)

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        y, new_state = self.base(x, state, resets=resets)
        n = self.norm(y)
        g = torch.sigmoid(self.gate(n))  # g = σ(W_g LN y)
        return y + g * self.up(F.gelu(self.down(n))), new_state  # y + g ⊙ up(GELU(down(LN y)))


register_block(AdapterBlockConfig, AdapterBlock)
