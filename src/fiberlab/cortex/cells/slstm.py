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
from fiberlab.cortex.kernels.step_tables import StepTables


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
        self._step_cache = StepTables()  # see _step_weights (not state, not saved)

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
        if T == 1 and self.if_proj is None:  # one step (acting; a column passes [B, 1, H]): the fused form below
            y, new_state = self._step(x[:, 0], F.silu(x_conv[:, 0]), state, None if resets is None else resets[:, 0], new_state)
            return (y if single else y.unsqueeze(1)), new_state
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

    def _step(self, x: torch.Tensor, x_act: torch.Tensor, state: State, resets: torch.Tensor | None, new_state: State) -> tuple[torch.Tensor, State]:
        """One step of plain S, ``x``, ``x_act`` ``[B, H]``: the loop body above with fewer, fused operations.

        Per head, the input and recurrent products are one matrix product on ``u = [x~_h; x_h; y_h]``::

            raw_h = u_h [[W_if,h, 0], [0, W_zo,h], [R_h^T]] + b_h      ([3d] x [3d, 4d] -> i, f, z, o)

        and a reset multiplies the carried state by keep = 0 where the loop sets it to zero
        (``m + log sigma(f~)`` becomes one ``addcmul``, f' is multiplied by keep). Why: at acting
        batch sizes each tensor operation costs more than its arithmetic, and this is ~25 of them
        instead of ~50 (0.23x an ``nn.LSTMCell`` step before, 0.37x after, at B=64, H=128 on 2 shared cores).
        """
        B, H = x.shape
        NH, d = self.num_heads, self.head_dim
        c, n, m, y = state["c"], state["n"], state["m"], state["y"]
        keep = None if resets is None else (~resets).to(x.dtype).view(B, 1, 1)
        y_prev = y if keep is None else y * keep
        u = torch.cat([x_act.view(B, NH, d), x.view(B, NH, d), y_prev], dim=-1).transpose(0, 1)  # [NH, B, 3d]
        weight, bias = self._step_weights()
        raw = torch.baddbmm(bias, u, weight).transpose(0, 1)  # [B, NH, 4d] = W x + R y_{t-1} + b
        i_pre, f_pre, z_pre, o_pre = raw.split(d, dim=-1)
        log_f = F.logsigmoid(f_pre)
        m_f = log_f + m if keep is None else torch.addcmul(log_f, m, keep)  # m_{t-1} + log sigma(f~)
        fresh = (n == 0) if keep is None else (n * keep == 0)  # a fresh or reset state has n == 0
        m_new = torch.where(fresh, i_pre, torch.maximum(i_pre, m_f))
        i_gate = torch.exp((i_pre - m_new).clamp_(max=0.0))  # i' = min(e^{i~ - m_t}, 1)
        f_gate = torch.exp((m_f - m_new).clamp_(max=0.0))  # f' = min(e^{m + log sigma(f~) - m_t}, 1)
        if keep is not None:
            f_gate = f_gate * keep  # the carried c, n count as zero
        c_new = torch.addcmul(f_gate * c, i_gate, torch.tanh(z_pre))  # c_t = f'c + i' tanh(z~)
        n_new = torch.addcmul(i_gate, f_gate, n)  # n_t = f'n + i'
        y_new = torch.sigmoid(o_pre) * c_new / (n_new + 1e-6)  # y_t = sigma(o~) c_t / (n_t + 1e-6)
        new_state.update(c=c_new, n=n_new, m=m_new, y=y_new)
        return F.layer_norm(y_new, (d,), eps=1e-5).reshape(B, H) * self.norm_weight, new_state

    def _step_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's block weight ``[NH, 3d, 4d]`` and bias ``[NH, 1, 4d]`` (see ``_step``), kept while
        the parameters are unchanged (:class:`~fiberlab.cortex.kernels.step_tables.StepTables`)."""
        return self._step_cache.get((self.if_weight, self.zo_weight, self.recurrent, self.bias), self._build_step_weights)

    def _build_step_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        NH, d = self.num_heads, self.head_dim
        w_if = torch.cat([self.if_weight[0], self.if_weight[1]], dim=-1)  # x~ -> i, f   [NH, d, 2d]
        w_zo = torch.cat([self.zo_weight[0], self.zo_weight[1]], dim=-1)  # x -> z, o   [NH, d, 2d]
        zero = torch.zeros_like(w_if)
        weight = torch.cat([torch.cat([w_if, zero], dim=-1), torch.cat([zero, w_zo], dim=-1), self.recurrent.transpose(1, 2)], dim=1)
        return weight, self.bias.reshape(NH, 1, 4 * d)

    def clear_step_cache(self) -> None:
        """Forget the step weights (only needed after writing a parameter through ``.data``)."""
        self._step_cache.clear()
