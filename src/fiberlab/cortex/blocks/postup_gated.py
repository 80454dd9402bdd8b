"""PostUpGated block (used by Ag and X): GTrXL-style GRU gates instead of residual additions.

Why gates: Parisotto et al. 2019 found that attention-like memories train stably in RL when each
sub-layer's output enters through a GRU gate biased towards the identity (``gru_bias`` > 0 keeps
z small at init, so out ≈ x).
``y = G1(x, cell(LN1 x))``; ``out = G2(y, FFN(LN2 y))``, FFN = ``W2 SiLU(W1 ·)``, ``W1: H -> proj_factor H``.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from fiberlab.cortex.base import State
from fiberlab.cortex.blocks.base import BlockConfig, CellBlock, layer_norm
from fiberlab.cortex.registry import register_block


class PostUpGatedBlockConfig(BlockConfig):
    proj_factor: float = Field(1.5, gt=0)  # feed-forward width / H
    gru_bias: float = 2.0  # initial b_g: z = σ(... - b_g) ≈ 0.12 at init

    @property
    def d_hidden(self) -> int:
        return self.cell.d_hidden


class GRUGate(nn.Module):
    """G(x, y) = (1 - z) x + z h, the gate of GTrXL (x: the stream, y: the sub-layer's output)."""

    def __init__(self, width: int, gru_bias: float) -> None:
        super().__init__()
        self.w_y = nn.Linear(width, 3 * width, bias=False)  # [W_r; W_z; W_g] y
        self.u_x = nn.Linear(width, 2 * width, bias=False)  # [U_r; U_z] x
        self.u_g = nn.Linear(width, width, bias=False)  # U_g (r ⊙ x)
        self.b_g = nn.Parameter(torch.full((width,), float(gru_bias)))  # learnable, init gru_bias

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wr, wz, wg = self.w_y(y).chunk(3, dim=-1)
        ur, uz = self.u_x(x).chunk(2, dim=-1)
        r = torch.sigmoid(wr + ur)  # r = σ(W_r y + U_r x)
        z = torch.sigmoid(wz + uz - self.b_g)  # z = σ(W_z y + U_z x - b_g)
        h = torch.tanh(wg + self.u_g(r * x))  # h = tanh(W_g y + U_g (r ⊙ x))
        return (1 - z) * x + z * h


class PostUpGatedBlock(CellBlock):
    def __init__(self, cfg: PostUpGatedBlockConfig) -> None:
        super().__init__(cfg, cfg.cell.d_hidden, cfg.cell.d_hidden)
        h = self.d_hidden
        d_ff = max(1, round(cfg.proj_factor * h))
        self.norm1, self.norm2 = layer_norm(h), layer_norm(h)
        self.gate1, self.gate2 = GRUGate(h, cfg.gru_bias), GRUGate(h, cfg.gru_bias)
        self.ffn_in, self.ffn_out = nn.Linear(h, d_ff), nn.Linear(d_ff, h)

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        c, new_state = self.run_cell(self.norm1(x), state, resets)
        y = self.gate1(x, c)  # y = G1(x, cell(LN1 x))
        return self.gate2(y, self.ffn_out(F.silu(self.ffn_in(self.norm2(y))))), new_state  # G2(y, FFN(LN2 y))


register_block(PostUpGatedBlockConfig, PostUpGatedBlock)
