"""S – sLSTM cell (xLSTM's scalar memory with exponential gating and a recurrent kernel), ``[.., H] -> [.., H]``.

Per head (``d = H / NH``), with ``x~ = SiLU(causal depthwise conv_4(x))``::

    [i~, f~] = W_if x~,  [z~, o~] = W_zo x      (head-wise block-diagonal, no bias)
    raw = W x + R y_{t-1} + b                   (R: [NH, 4d, d] per head, zero at init)
    m_t = i~                      if n_{t-1} == 0 (fresh or reset state)
        = max(i~, m_{t-1} + log sigma(f~))   otherwise
    i' = min(e^{i~ - m_t}, 1);  f' = min(e^{m_{t-1} + log sigma(f~) - m_t}, 1)
    c_t = f' c + i' tanh(z~);  n_t = f' n + i';  y_t = sigma(o~) c_t / (n_t + 1e-6)
    out = per-head GroupNorm(y_t)

Why a loop over time: ``R y_{t-1}`` makes the recurrence nonlinear, so there is no parallel form; the
input projections and the convolution, which do not depend on y, run once for the whole sequence
outside the loop. With ``axonify`` ("S^") the input projections are AxonLayers (full, not head-wise).
State: c, n, m, y ``[B, NH, d]``; conv ``[B, K-1, H]``; ``if_axon``, ``zo_axon`` when axonified.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.cells.axonify import project, projection, projection_states
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.kernels.segment_conv import causal_depthwise_conv
from fiberlab.cortex.kernels.shapes import check_state, sequence_input


class SLSTMConfig(CellConfig):
    """sLSTM cell; ``d_hidden`` must be a multiple of ``num_heads``."""

    num_heads: int = Field(4, ge=1)
    conv_kernel: int = Field(4, ge=1)
    axonify: bool = False


class SLSTMCell(MemoryModule):
    """Scalar-memory LSTM with exponential gating and head-wise recurrence; see the module docstring."""

    def __init__(self, cfg: SLSTMConfig) -> None:
        super().__init__()
        if cfg.d_hidden % cfg.num_heads:
            raise ValueError(f"SLSTMConfig: d_hidden={cfg.d_hidden} must be a multiple of num_heads={cfg.num_heads}")
        self.cfg = cfg
        self.d_hidden = H = cfg.d_hidden
        self.num_heads = NH = cfg.num_heads
        self.head_dim = d = H // NH
        K = cfg.conv_kernel
        bound = 1.0 / math.sqrt(K)
        self.conv_weight = nn.Parameter(torch.empty(H, K).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(H).uniform_(-bound, bound))
        if cfg.axonify:
            self.if_proj = projection(H, 2 * H, bias=False, axonify=True)  # x~ -> [i~, f~]
            self.zo_proj = projection(H, 2 * H, bias=False, axonify=True)  # x -> [z~, o~]
        else:
            std = math.sqrt(2.0 / (5 * d))  # N(0, sqrt(2 / 5d)), the xLSTM "small init"
            self.if_weight = nn.Parameter(torch.randn(2, NH, d, d) * std)  # [gate, head, in, out]
            self.zo_weight = nn.Parameter(torch.randn(2, NH, d, d) * std)
            self.if_proj = self.zo_proj = None
        self.recurrent = nn.Parameter(torch.zeros(NH, 4 * d, d))  # R: y_{t-1} -> [i, f, z, o] per head
        bias = torch.zeros(NH, 4, d)
        bias[:, 1] = torch.linspace(3.0, 6.0, d)  # forget bias 3..6: long memory at init
        self.bias = nn.Parameter(bias)
        self.norm_weight = nn.Parameter(torch.ones(H))

    def _stateful(self) -> dict[str, nn.Module]:
        return {} if self.if_proj is None else {"if_axon": self.if_proj, "zo_axon": self.zo_proj}

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        NH, d = self.num_heads, self.head_dim
        zeros = lambda *shape: torch.zeros(batch, *shape, device=device, dtype=dtype)  # noqa: E731
        state = {"c": zeros(NH, d), "n": zeros(NH, d), "m": zeros(NH, d), "y": zeros(NH, d), "conv": zeros(self.cfg.conv_kernel - 1, self.d_hidden)}
        state.update(projection_states(self._stateful(), batch, device, dtype))
        return state

    def _input_preactivations(self, x: torch.Tensor, x_act: torch.Tensor, state: State, resets: torch.Tensor | None, new_state: State) -> torch.Tensor:
        """``W x`` for every step at once: ``[B, T, 4, NH, d]`` in the order i, f, z, o."""
        B, T, H = x.shape
        NH, d = self.num_heads, self.head_dim
        if self.if_proj is None:
            x_act_h, x_h = x_act.reshape(B, T, NH, d), x.reshape(B, T, NH, d)
            w_if = torch.einsum("bthi,ghio->btgho", x_act_h, self.if_weight)  # head-wise block-diagonal
            w_zo = torch.einsum("bthi,ghio->btgho", x_h, self.zo_weight)
        else:
            w_if = project(self.if_proj, x_act, state, "if_axon", resets, new_state).view(B, T, 2, NH, d)
            w_zo = project(self.zo_proj, x, state, "zo_axon", resets, new_state).view(B, T, 2, NH, d)
        return torch.cat([w_if, w_zo], dim=2)

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x, resets, single = sequence_input(x, resets, self.d_hidden, "SLSTMCell")
        B, T, H = x.shape
        NH, d = self.num_heads, self.head_dim
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        check_state(state, {k: (B, NH, d) for k in "cnmy"} | {"conv": (B, self.cfg.conv_kernel - 1, H)}, "SLSTMCell")

        new_state: State = {}
        x_conv, new_state["conv"] = causal_depthwise_conv(x, state["conv"], self.conv_weight, self.conv_bias, resets)
        wx = self._input_preactivations(x, F.silu(x_conv), state, resets, new_state) + self.bias.transpose(0, 1)  # W x + b
        c, n, m, y = state["c"], state["n"], state["m"], state["y"]
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        wx_steps = wx.unbind(dim=1)  # one view per step; backward stacks once (indexing would allocate T full-size grads)
        outs = []
        for t in range(T):
            if resets is not None:  # zero the carried state before step t
                keep = (~resets[:, t]).view(B, 1, 1)
                c, n, m, y = (torch.where(keep, s, zero) for s in (c, n, m, y))
            rec = torch.einsum("hod,bhd->bho", self.recurrent, y).view(B, NH, 4, d).transpose(1, 2)  # R y_{t-1}
            i_pre, f_pre, z_pre, o_pre = (wx_steps[t] + rec).unbind(dim=1)  # raw = W x + R y + b
            log_f = F.logsigmoid(f_pre)
            m_new = torch.where(n == 0, i_pre, torch.maximum(i_pre, m + log_f))  # exact: fresh state has n == 0
            i_gate = torch.exp(torch.clamp(i_pre - m_new, max=0.0))  # i' = min(e^{i~ - m_t}, 1)
            f_gate = torch.exp(torch.clamp(m + log_f - m_new, max=0.0))  # f' = min(e^{m + log sigma(f~) - m_t}, 1)
            c = f_gate * c + i_gate * torch.tanh(z_pre)  # c_t = f'c + i' tanh(z~)
            n = f_gate * n + i_gate  # n_t = f'n + i'
            m = m_new
            y = torch.sigmoid(o_pre) * c / (n + 1e-6)  # y_t = sigma(o~) c_t / (n_t + 1e-6)
            outs.append(y)
        new_state.update(c=c, n=n, m=m, y=y)
        # per-head GroupNorm = LayerNorm over each head's d channels, then a per-channel scale
        out = F.layer_norm(torch.stack(outs, dim=1), (d,), eps=1e-5).reshape(B, T, H) * self.norm_weight
        return (out[:, 0] if single else out), new_state
