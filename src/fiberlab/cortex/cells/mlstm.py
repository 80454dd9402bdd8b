"""M – mLSTM cell (xLSTM's matrix memory with exponential gating), ``[.., H] -> [.., H]``.

    x~ = SiLU(causal depthwise conv_4(x));  q = k = x~,  v = x
    [i~, f~] = Linear(3H -> 2 NH)([q, k, v])                     (one input and one forget gate per head)
    per head: C_t = f' C + i' k v^T / sqrt(d), h = q^T C / normaliser   (kernels.mlstm_chunkwise)
    y = per-head GroupNorm(h)

In a stack the cell sits in a PreUp block at the inner width 2H (the block passes ``d_hidden = 2H``).
With ``axonify`` ("M^") the gate projection becomes an AxonLayer, and q = k = SiLU(AxonLayer(x~)),
v = AxonLayer(x).

Why q = k = x~ and no q/k/v projections: the PreUp block already projects up before the cell, so a
second projection buys little at 3 H^2 parameters; this is what the reference does too.
Sequences run chunkwise-parallel (``chunk_size`` steps at a time); one step runs the recurrence
(``kernels.mlstm_chunkwise.mlstm_step``, resets folded into its gates).
State: c ``[B, NH, d, d]``, n ``[B, NH, d, 1]``, m ``[B, NH, 1, 1]``, conv ``[B, K-1, H]`` (the last
K-1 inputs), plus the AxonLayer states ``gates_axon``, ``qk_axon``, ``v_axon`` when axonified.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.cells.axonify import linear_part, project, projection, projection_states
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.kernels.mlstm_chunkwise import mlstm_chunkwise, mlstm_step
from fiberlab.cortex.kernels.segment_conv import causal_depthwise_conv
from fiberlab.cortex.kernels.shapes import check_state, sequence_input


class MLSTMConfig(CellConfig):
    """mLSTM cell; ``d_hidden`` must be a multiple of ``num_heads``."""

    num_heads: int = Field(4, ge=1)
    chunk_size: int = Field(64, ge=1)
    conv_kernel: int = Field(4, ge=1)
    axonify: bool = False


class MLSTMCell(MemoryModule):
    """Matrix-memory LSTM with exponential gating and a max stabiliser; see the module docstring."""

    def __init__(self, cfg: MLSTMConfig) -> None:
        super().__init__()
        if cfg.d_hidden % cfg.num_heads:
            raise ValueError(f"MLSTMConfig: d_hidden={cfg.d_hidden} must be a multiple of num_heads={cfg.num_heads}")
        self.cfg = cfg
        self.d_hidden = H = cfg.d_hidden
        self.num_heads = NH = cfg.num_heads
        self.head_dim = H // NH
        K = cfg.conv_kernel
        bound = 1.0 / math.sqrt(K)  # nn.Conv1d's default init for a depthwise kernel (fan_in = K)
        self.conv_weight = nn.Parameter(torch.empty(H, K).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(H).uniform_(-bound, bound))
        self.gates = projection(3 * H, 2 * NH, bias=True, axonify=cfg.axonify)  # -> [i~, f~]
        gates = linear_part(self.gates)
        with torch.no_grad():
            gates.weight.zero_()  # gates start input-independent
            gates.bias[:NH].normal_(0.0, 0.1)  # i~ bias ~ N(0, 0.1)
            gates.bias[NH:] = torch.linspace(3.0, 6.0, NH)  # f~ bias: sigma(3..6), long memory at init
        self.qk_proj = projection(H, H, bias=False, axonify=True) if cfg.axonify else None
        self.v_proj = projection(H, H, bias=False, axonify=True) if cfg.axonify else None
        self.norm_weight = nn.Parameter(torch.ones(H))  # per-head GroupNorm scale (no bias)

    def _stateful(self) -> dict[str, nn.Module]:
        layers = {"gates_axon": self.gates}
        if self.qk_proj is not None:
            layers.update(qk_axon=self.qk_proj, v_axon=self.v_proj)
        return layers

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        NH, d, H = self.num_heads, self.head_dim, self.d_hidden
        zeros = lambda *shape: torch.zeros(batch, *shape, device=device, dtype=dtype)  # noqa: E731
        state = {"c": zeros(NH, d, d), "n": zeros(NH, d, 1), "m": zeros(NH, 1, 1), "conv": zeros(self.cfg.conv_kernel - 1, H)}
        state.update(projection_states(self._stateful(), batch, device, dtype))
        return state

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x, resets, single = sequence_input(x, resets, self.d_hidden, "MLSTMCell")
        B, T, H = x.shape
        NH, d = self.num_heads, self.head_dim
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        check_state(state, {"c": (B, NH, d, d), "n": (B, NH, d, 1), "m": (B, NH, 1, 1), "conv": (B, self.cfg.conv_kernel - 1, H)}, "MLSTMCell")

        new_state: State = {}
        x_conv, new_state["conv"] = causal_depthwise_conv(x, state["conv"], self.conv_weight, self.conv_bias, resets)
        x_act = F.silu(x_conv)  # x~ = SiLU(conv(x))
        if self.qk_proj is None:
            q = k = x_act  # q = k = x~
            v = x
        else:
            q = k = F.silu(project(self.qk_proj, x_act, state, "qk_axon", resets, new_state))
            v = project(self.v_proj, x, state, "v_axon", resets, new_state)
        if isinstance(self.gates, nn.Linear):  # W [q; k; v] = (W_q + W_k) q + W_v v as q is k: no [B, T, 3H] concat
            W = self.gates.weight
            gate_pre = F.linear(q, W[:, :H] + W[:, H:2 * H]) + F.linear(v, W[:, 2 * H:], self.gates.bias)
        else:
            gate_pre = project(self.gates, torch.cat([q, k, v], dim=-1), state, "gates_axon", resets, new_state)
        i_pre, f_pre = gate_pre.transpose(1, 2).split(NH, dim=1)  # [B, NH, T] each

        heads = lambda t: t.reshape(B, T, NH, d).transpose(1, 2)  # noqa: E731  [B, T, H] -> [B, NH, T, d]
        q, k, v = heads(q), heads(k), heads(v)
        if T == 1:  # one step (acting; a column passes [B, 1, H]): the recurrence itself
            h, (c, n, m) = mlstm_step(state["c"], state["n"], state["m"], q[:, :, 0], k[:, :, 0], v[:, :, 0], i_pre[..., 0], f_pre[..., 0],
                                      resets=None if resets is None else resets[:, 0])
            h = h.unsqueeze(2)
        else:
            h, (c, n, m) = mlstm_chunkwise(q, k, v, i_pre, f_pre, state["c"], state["n"], state["m"], resets, self.cfg.chunk_size)
        new_state.update(c=c, n=n, m=m)

        # per-head GroupNorm = LayerNorm over each head's d channels, then a per-channel scale
        y = F.layer_norm(h.transpose(1, 2), (d,), eps=1e-5).reshape(B, T, H) * self.norm_weight
        return (y[:, 0] if single else y), new_state
