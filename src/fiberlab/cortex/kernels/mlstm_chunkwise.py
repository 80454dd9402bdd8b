"""mLSTM (xLSTM's matrix memory) with exponential gating: the recurrent step and its chunkwise form.

Recurrent step (per head, ``k`` already scaled by ``1/sqrt(d)``)::

    m_t = max(log sigma(f~_t) + m_{t-1}, i~_t)                 # stabiliser
    f'  = exp(log sigma(f~_t) + m_{t-1} - m_t);  i' = exp(i~_t - m_t)
    C_t = f' C_{t-1} + i' k_t v_t^T;             n_t = f' n_{t-1} + i' k_t
    h_t = q_t^T C_t / (max(|q_t^T n_t|, exp(-m_t)) + eps)

Why a chunkwise form: a Python loop over T steps costs ~15 small ops per step and stores a
``[d, d]`` matrix per step for backward. Unrolling the recurrence inside a chunk of L steps gives
(with ``F_t = sum_{u<=t} log sigma(f~_u)`` inside the chunk)::

    D[t, s] = F_t - F_s + i~_s            (s <= t, same episode; else -inf)  log weight of k_s v_s^T in C_t
    b_t     = m_0 + F_t                   (no reset yet in the chunk)         log weight of the carried C_0
            = F_t - F_{r-1}               (r = last reset <= t; the reset state has m = 0, C = 0)
    m_t     = max(b_t, max_s D[t, s])     (max distributes over +, so this IS the recurrent m_t)
    h_t     = [e^{b_t - m_t} q_t^T C_0 + sum_s e^{D[t,s] - m_t} (q_t . k_s) v_s] / (max(|...n...|, e^{-m_t}) + eps)

and the state after the chunk is the same sums at its last step. Chunks are then chained by that
state (a loop over T / L chunks, each a few batched matmuls of ``L x L``). A reset is a mask on D
(``-inf``, applied with ``masked_fill`` so no ``inf - inf`` appears) plus the switch of ``b_t`` to the
reset state's m = 0, so resets anywhere in a chunk agree with the step loop exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fiberlab.cortex.kernels import mlstm_native


def _normaliser(qn: torch.Tensor, m: torch.Tensor, eps: float) -> torch.Tensor:
    """``max(|q^T n|, e^{-m}) + eps``, with ``-m`` capped below the dtype's overflow.

    Why the cap: when every gate is tiny, m goes very negative and ``e^{-m}`` overflows to inf; h is then
    ~0 either way, but the backward of ``exp`` would multiply 0 by inf (NaN gradients).
    """
    cap = math.log(torch.finfo(m.dtype).max) - 1.0
    return torch.maximum(qn.abs(), torch.exp(torch.clamp(-m, max=cap))) + eps


def mlstm_step(
    c: torch.Tensor, n: torch.Tensor, m: torch.Tensor,
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    i_pre: torch.Tensor, f_pre: torch.Tensor, eps: float = 1e-6, resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One recurrent step. q, k, v ``[B, NH, d]``; i_pre, f_pre ``[B, NH]``;
    c ``[B, NH, d, d]``, n ``[B, NH, d, 1]``, m ``[B, NH, 1, 1]``; resets bool ``[B]`` or None (a
    reset row starts from a zero state). Returns h ``[B, NH, d]`` and (c, n, m).

    A reset is folded into the gates instead of zeroing c first: with keep = 0, m_{t-1} counts as
    0 and f' as 0, so C_t = 0 C + i' k v^T, exactly what the zero state gives (for a finite C),
    without an extra pass over the ``[B, NH, d, d]`` memory. The C update runs as one scaled copy
    and one in-place batched outer product (two passes over C instead of four). In rollouts (float32
    on a CPU, no autograd) the whole step is one compiled pass instead (``mlstm_native.py``).
    """
    fused = mlstm_native.step(c, n, m, q, k, v, i_pre, f_pre, eps, resets)
    if fused is not None:
        return fused
    B, NH, d = k.shape
    k = k / math.sqrt(d)
    log_f = F.logsigmoid(f_pre)[..., None, None]
    i_pre = i_pre[..., None, None]
    keep = None if resets is None else (~resets).to(c.dtype).view(B, 1, 1, 1)
    if keep is not None:
        m = m * keep
    m_new = torch.maximum(log_f + m, i_pre)  # m_t = max(log sigma(f~) + m_{t-1}, i~)
    f_gate = torch.exp(log_f + m - m_new)  # f' = exp(log sigma(f~) + m_{t-1} - m_t)
    if keep is not None:
        f_gate = f_gate * keep
    i_gate = torch.exp(i_pre - m_new)  # i' = exp(i~ - m_t)
    ik = i_gate.view(B, NH, 1) * k  # i' k
    c_new = (c * f_gate).view(B * NH, d, d)  # C_t = f'C + i' k v^T
    c_new = c_new.baddbmm_(ik.reshape(B * NH, d, 1), v.reshape(B * NH, 1, d)).view(B, NH, d, d)
    n_new = f_gate * n + ik.unsqueeze(-1)  # n_t = f'n + i' k
    q_row = q.unsqueeze(-2)  # [B, NH, 1, d]
    num = (q_row @ c_new).squeeze(-2)  # q^T C_t
    qn = (q_row @ n_new).squeeze(-1)  # q^T n_t: [B, NH, 1]
    h = num / _normaliser(qn, m_new.squeeze(-1), eps)
    return h, (c_new, n_new, m_new)


def _mlstm_chunk(
    q: torch.Tensor, k: torch.Tensor, v1: torch.Tensor, i_pre: torch.Tensor, log_f: torch.Tensor,
    cn0: torch.Tensor, m0: torch.Tensor, resets: torch.Tensor | None, eps: float,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One chunk of L steps in the parallel form (see the module docstring). k is pre-scaled.

    ``v1 = [v, 1]`` and ``cn0 = [C_0, n_0]``: n is the column of C that stores the constant value 1,
    so one matmul gives both ``q^T C_t`` and ``q^T n_t`` (and one the new C and n).
    """
    L = q.shape[2]
    cum_f = log_f.cumsum(dim=-1)  # F_t, [B, NH, L]
    D = cum_f.unsqueeze(-1) - cum_f.unsqueeze(-2) + i_pre.unsqueeze(-2)  # D[t,s] = F_t - F_s + i~_s
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    base = m0.view(m0.shape[0], m0.shape[1], 1) + cum_f  # b_t = m_0 + F_t while no reset in the chunk
    carried = None  # [B, 1, L] bool: step t still continues the carried state (no reset in (start, t])
    if resets is None:
        visible = causal
    else:
        steps = torch.arange(L, device=q.device)
        seg = resets.to(torch.long).cumsum(dim=-1)  # [B, L]
        visible = causal & (seg.unsqueeze(-1) == seg.unsqueeze(-2)).unsqueeze(1)  # same episode
        last_reset = torch.where(resets, steps, -1).cummax(dim=-1).values  # [B, L], -1: none yet
        carried = (last_reset < 0).unsqueeze(1)
        excl_f = cum_f - log_f  # F_{t-1}
        anchor = excl_f.gather(-1, last_reset.clamp(min=0).unsqueeze(1).expand_as(excl_f))  # F_{r-1}
        base = torch.where(carried, base, cum_f - anchor)  # b_t = F_t - F_{r-1} after a reset at r
    D = D.masked_fill(~visible, float("-inf"))
    m = torch.maximum(base, D.amax(dim=-1))  # m_t = max(b_t, max_s D[t,s]), [B, NH, L]
    W = torch.exp(D - m.unsqueeze(-1))  # e^{D[t,s] - m_t}, 0 where invisible
    w0 = torch.exp(base - m)  # e^{b_t - m_t}: weight of the carried C_0, n_0
    if carried is not None:
        w0 = torch.where(carried, w0, torch.zeros((), dtype=w0.dtype, device=w0.device))  # a reset drops C_0
    S = (q @ k.transpose(-1, -2)) * W  # (q_t . k_s) e^{D[t,s] - m_t}
    qcn = S @ v1 + w0.unsqueeze(-1) * (q @ cn0)  # [q_t^T C_t, q_t^T n_t]
    h = qcn[..., :-1] / _normaliser(qcn[..., -1], m, eps).unsqueeze(-1)
    w_last, w0_last = W[..., -1, :].unsqueeze(-1), w0[..., -1, None, None]  # weights at the chunk's last step
    cn_new = w0_last * cn0 + (k * w_last).transpose(-1, -2) @ v1  # C_L = e^{b-m} C_0 + sum_s e^{D-m} k_s v_s^T
    return h, (cn_new, m[..., -1, None, None])


def mlstm_chunkwise(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor,
    c0: torch.Tensor, n0: torch.Tensor, m0: torch.Tensor,
    resets: torch.Tensor | None = None, chunk_size: int = 64, eps: float = 1e-6,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """All outputs of the mLSTM recurrence over a sequence, chunk by chunk.

    q, k, v ``[B, NH, T, d]``; i_pre, f_pre ``[B, NH, T]``; c0 ``[B, NH, d, d]``, n0 ``[B, NH, d, 1]``,
    m0 ``[B, NH, 1, 1]``; resets bool ``[B, T]`` (zero the state before step t). Returns h
    ``[B, NH, T, d]`` and the final (c, n, m), equal to ``mlstm_step`` chained over t.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    T = q.shape[2]
    k = k / math.sqrt(k.shape[-1])
    log_f = F.logsigmoid(f_pre)
    v1 = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)  # [v, 1]
    cn, m = torch.cat([c0, n0], dim=-1), m0  # [C, n]
    chunks = zip(*(t.split(chunk_size, dim=2) for t in (q, k, v1, i_pre, log_f)))  # split: one backward for all chunks
    chunk_resets = [None] * -(-T // chunk_size) if resets is None else resets.split(chunk_size, dim=1)
    outs = []
    for (q_c, k_c, v_c, i_c, f_c), r_c in zip(chunks, chunk_resets):
        h, (cn, m) = _mlstm_chunk(q_c, k_c, v_c, i_c, f_c, cn, m, r_c, eps)
        outs.append(h)
    return torch.cat(outs, dim=2), (cn[..., :-1], cn[..., -1:], m)
