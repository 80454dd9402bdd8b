"""Ag – AGaLiTe: approximate gated linear transformer (Pramanik et al.), a recurrent linear attention.

Per head, with feature maps ``phi_k = vec(relu(k) ⊗ relu(p1))``, ``phi_q = vec(relu(q) ⊗ relu(p2))``
(size F = eta d), gates ``gamma = vec(σ(g) ⊗ σ(p3))``, ``beta = σ(b)``, and ``r`` oscillators
``c_tj = cos(τ_t ω_j)``, ``ω = linspace(-π, π, r)``, where τ_t counts the steps since the episode start:

    K_j,t = δ_t (1 - gamma_t) ⊙ K_j,t-1 + c_tj (phi_k,t ⊙ gamma_t)      [r, NH, F]
    V_j,t = δ_t (1 - beta_t)  ⊙ V_j,t-1 + c_tj (v_t ⊙ beta_t)            [r, NH, d]
    s_t   = δ_t (1 - gamma_t) ⊙ s_t-1   + phi_k,t ⊙ gamma_t               [NH, F]
    o_t   = sum_j V_j,t (K_j,t · phi_q,t) / (2r (s_t · phi_q,t) + eps);   y_t = W_o o_t

with ``δ_t = 0`` at a reset. How a sequence runs: on the CPU, the whole recurrence is one compiled
pass over time (``kernels.agalite_loop``), which builds the F-sized features from their head- and
eta-sized factors on the fly and never writes them out. Elsewhere (GPUs) it runs in parallel: all
three recurrences are diagonal and linear with per-step decays; V (small: d per head) is one
``kernels.scan.linear_scan``; K and s share their decay and are only ever read as
``K_j,t · phi_q,t``, so they use the chunkwise read-out ``kernels.decayed_readout`` (matmuls inside
chunks, traces materialised only at chunk ends). One step runs the recurrence as written; acting on the
CPU (no autograd) runs it as one compiled pass over the traces (``kernels.agalite_loop.agalite_step``). Unlike the
reference, the returned state is not detached: the trainer decides where gradients stop. State: ``tilde_k`` ``[B, r, NH, F]``, ``tilde_v``
``[B, r, NH, d]``, ``s`` ``[B, NH, F]``, ``tick`` ``[B]`` (float; steps since the episode start).
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn
from torch.nn.functional import linear

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.kernels.agalite_loop import AVAILABLE as loop_available
from fiberlab.cortex.kernels.agalite_loop import agalite_loop, agalite_step
from fiberlab.cortex.kernels.cpu_loops import runs_here
from fiberlab.cortex.kernels.decayed_readout import decayed_readout
from fiberlab.cortex.kernels.scan import linear_scan
from fiberlab.cortex.kernels.shapes import check_state, sequence_input


class AGaLiTeConfig(CellConfig):
    """AGaLiTe cell: ``n_heads`` heads of width ``d_hidden / n_heads``, feature expansion ``eta``, ``r`` oscillators."""

    n_heads: int = Field(8, ge=1)
    eta: int = Field(6, ge=1)
    r: int = Field(2, ge=1)
    eps: float = Field(1e-5, gt=0.0)


def _outer_features(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """vec(a ⊗ b) over the last dim: ``[.., d]``, ``[.., eta]`` -> ``[.., d eta]``."""
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)


class AGaLiTeCell(MemoryModule):
    """AGaLiTe ``[.., H] -> [.., H]``; see the module docstring for the recurrences."""

    def __init__(self, cfg: AGaLiTeConfig) -> None:
        super().__init__()
        if cfg.d_hidden % cfg.n_heads:
            raise ValueError(f"AGaLiTeCell: d_hidden={cfg.d_hidden} must be divisible by n_heads={cfg.n_heads}")
        self.cfg = cfg
        self.d_hidden = H = cfg.d_hidden
        self.n_heads, self.head_dim, self.eta, self.r = cfg.n_heads, H // cfg.n_heads, cfg.eta, cfg.r
        NH, d = self.n_heads, self.head_dim
        self.kqvbg = nn.Linear(H, 5 * NH * d, bias=False)
        self.p123 = nn.Linear(H, 3 * NH * cfg.eta, bias=False)
        self.out = nn.Linear(NH * d, H)
        for lin in (self.kqvbg, self.p123, self.out):
            nn.init.orthogonal_(lin.weight, math.sqrt(2))
        nn.init.zeros_(self.out.bias)

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        NH, d, F, r = self.n_heads, self.head_dim, self.head_dim * self.eta, self.r
        zeros = lambda *shape: torch.zeros(batch, *shape, device=device, dtype=dtype)  # noqa: E731
        return {"tilde_k": zeros(r, NH, F), "tilde_v": zeros(r, NH, d), "s": zeros(NH, F), "tick": zeros()}

    def _steps_since_start(self, tick: torch.Tensor, resets: torch.Tensor | None, T: int) -> torch.Tensor:
        """τ ``[B, T]``: tick + t until the first reset of the row, then steps since its last reset."""
        t = torch.arange(T, device=tick.device)
        tau = tick.unsqueeze(1) + t.to(tick.dtype)
        if resets is None:
            return tau
        last_reset = torch.where(resets, t, -1).cummax(dim=1).values  # index of the latest reset <= t
        return torch.where(last_reset >= 0, (t - last_reset).to(tick.dtype), tau)

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x, resets, single = sequence_input(x, resets, self.d_hidden, "AGaLiTeCell")
        B, T, _ = x.shape
        NH, d, eta, r = self.n_heads, self.head_dim, self.eta, self.r
        F = d * eta
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        check_state(state, {"tilde_k": (B, r, NH, F), "tilde_v": (B, r, NH, d), "s": (B, NH, F), "tick": (B,)}, "AGaLiTeCell")

        if T == 1 and loop_available and runs_here(x) and not torch.is_grad_enabled():  # acting on the CPU: one compiled step
            omega = torch.linspace(-math.pi, math.pi, r, dtype=x.dtype)
            o, new_state = agalite_step(self.kqvbg(x[:, 0]).view(B, 5, NH, d), self.p123(x[:, 0]).view(B, 3, NH, eta), state,
                                        None if resets is None else resets[:, 0], omega, self.cfg.eps)
            y1 = self.out(o.view(B, NH * d))
            return (y1 if single else y1.unsqueeze(1)), new_state

        # token-major [B, T, NH, ..] (the layout of y). A sequence takes one GEMM per block of rows of
        # the packed weights: each result is contiguous and the backward pass stacks no gradients
        # (for one step, where per-call overhead dominates, one GEMM per packed weight is faster)
        if single:
            k, q, v, beta, gamma = self.kqvbg(x).view(B, T, 5, NH, d).unbind(2)
            p1, p2, p3 = self.p123(x).view(B, T, 3, NH, eta).unbind(2)
        else:
            k, q, v, beta, gamma = (linear(x, w).view(B, T, NH, d) for w in self.kqvbg.weight.chunk(5))
            p1, p2, p3 = (linear(x, w).view(B, T, NH, eta) for w in self.p123.weight.chunk(3))
        gate_k, gate_p = torch.sigmoid(gamma), torch.sigmoid(p3)
        beta = torch.sigmoid(beta)  # [B, T, NH, d]

        tau = self._steps_since_start(state["tick"].detach(), resets, T)  # a counter: no gradient through it
        # omega_j = linspace(-pi, pi, r), made here rather than kept as a buffer: a non-persistent
        # buffer is not in the checkpoint, so a policy rebuilt on the meta device would read garbage.
        omega = torch.linspace(-math.pi, math.pi, self.r, device=x.device, dtype=x.dtype)
        osc = torch.cos(tau.unsqueeze(-1) * omega)  # c_tj   [B, T, r]
        coef = torch.cat([osc, torch.ones_like(osc[..., :1])], dim=-1)  # (c_t1 .. c_tr, 1)   [B, T, r+1]

        # K_j (j < r) and s (slot r) share the decay δ(1 - gamma): r+1 traces of phi_k ⊙ gamma written
        # with the coefficients (c_t1 .. c_tr, 1)
        ks0 = torch.cat([state["tilde_k"], state["s"].unsqueeze(1)], dim=1).transpose(1, 2)  # [B, NH, r+1, F]
        v0 = state["tilde_v"].transpose(1, 2)  # [B, NH, r, d]
        if not single and loop_available and runs_here(x):  # CPU: one compiled pass over time (relus inside)
            o, ks_last, v_last = agalite_loop(q, p2, k, p1, gate_k, gate_p, v, beta, coef, resets, ks0, v0, self.cfg.eps)
        else:
            # the three feature maps are outer products of head-sized and eta-sized factors:
            # phi_q = q_d ⊗ q_e, gamma = gate_k ⊗ gate_p, and phi_k ⊙ gamma = w_d ⊗ w_e (the product
            # taken before the outer one)
            q_d, q_e = torch.relu(q), torch.relu(p2)
            w_d, w_e = torch.relu(k) * gate_k, torch.relu(p1) * gate_p
            o, ks_last, v_last = self._tensor_ops(q_d, q_e, w_d, w_e, gate_k, gate_p, v, beta, coef, resets, ks0, v0)
        y = self.out(o.reshape(B, T, NH * d))
        ks_last = ks_last.transpose(1, 2)  # [B, r+1, NH, F]
        new_state = {"tilde_k": ks_last[:, :r], "tilde_v": v_last.transpose(1, 2), "s": ks_last[:, r], "tick": tau[:, -1] + 1}
        return (y[:, 0] if single else y), new_state

    def _tensor_ops(self, q_d, q_e, w_d, w_e, gate_k, gate_p, v, beta, coef, resets, ks0, v0):
        """One step as written, or a sequence in chunkwise-parallel tensor ops (GPUs).

        All ``[B, T, NH, ..]``; returns ``(o [B, T, NH, d], K_last [B, NH, r+1, F], V_last [B, NH, r, d])``.
        """
        B, T, NH, d = v.shape
        r, F = self.r, ks0.shape[-1]
        if T == 1:  # one step: the recurrence itself (r+1 slots broadcast against the features)
            step = lambda a, b: _outer_features(a[:, 0], b[:, 0]).unsqueeze(2)  # noqa: E731  [B, NH, 1, F]
            phi_q, gamma, written = step(q_d, q_e), step(gate_k, gate_p), step(w_d, w_e)
            delta = 1.0 if resets is None else (~resets[:, 0]).to(v.dtype).view(B, 1, 1, 1)
            ks_last = delta * (1 - gamma) * ks0 + coef.view(B, 1, r + 1, 1) * written  # K_t = δ(1-γ)K_t-1 + c (phi_k ⊙ γ)
            k_dot_q = (ks_last * phi_q).sum(-1).unsqueeze(1)  # K_j,t · phi_q,t   [B, 1, NH, r+1]
        else:  # keys: chunkwise-parallel matmuls on the F-sized feature maps, heads before time
            heads = lambda t: t.transpose(1, 2).reshape(B * NH, T, -1)  # noqa: E731  [B, T, NH, ..] -> [B NH, T, ..]
            gamma = _outer_features(gate_k, gate_p)
            k_dot_q, ks_last = decayed_readout(
                # log(1 - gamma), with gamma kept below 1 so that the gradient of log1p stays finite
                heads(_outer_features(q_d, q_e)), heads(_outer_features(w_d, w_e)),
                heads(torch.log1p(-gamma.clamp(max=1 - torch.finfo(v.dtype).eps))),
                coef.repeat_interleave(NH, dim=0), None if resets is None else resets.repeat_interleave(NH, dim=0),
                ks0.reshape(B * NH, r + 1, F),
            )
            k_dot_q, ks_last = k_dot_q.view(B, NH, T, r + 1).transpose(1, 2), ks_last.view(B, NH, r + 1, F)
        keep = 1.0 if resets is None else (~resets).to(v.dtype).view(B, T, 1, 1, 1)
        v_write = coef[..., :r].reshape(B, T, 1, r, 1) * (v * beta).unsqueeze(3)  # c_tj (v ⊙ beta)   [B, T, NH, r, d]
        tilde_v, v_last = linear_scan(keep * (1 - beta).unsqueeze(3), v_write, v0)
        numerator = (tilde_v * k_dot_q[..., :r, None]).sum(-2)  # sum_j V_j,t (K_j,t · phi_q,t)   [B, T, NH, d]
        denominator = 2 * r * k_dot_q[..., r:] + self.cfg.eps  # 2r (s_t · phi_q,t) + eps   [B, T, NH, 1]
        return numerator / denominator, ks_last, v_last
