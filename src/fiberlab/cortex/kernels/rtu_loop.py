"""Axon's recurrence ``h_t = δ_t λ h_{t-1} + β u_t`` as one compiled loop over time (CPU).

Why a compiled loop on the CPU: the recurrence costs ~10 flops per token and channel. Any
tensor-op formulation (``kernels.rtu_scan``: Toeplitz matmuls, or a two-level scan) moves several
sequence-sized tensors through memory in the forward and again in the backward pass, and on one
CPU core that traffic, not the arithmetic, is the cost. One pass over the sequence with the state
in registers is the cheapest form there is: like ``torch.nn.LSTM``'s CPU kernel, it loops over time
in compiled code (numba), and vectorises over channels. On GPUs, where launches and not bytes are
the cost, ``kernels.rtu_scan`` is used instead (``DiagonalRTU`` picks).

Gradients (written out, not taped), with ``G = dL/dRe + i dL/dIm`` of a complex quantity and
``Ĝ_t`` the gradient reaching state t from the outputs at t and after:

    Ĝ_t       = dL/dh_t + conj(λ) δ_{t+1} Ĝ_{t+1}
    dL/du_t   = Re(conj(β) Ĝ_t) = β_re Ĝ_re + β_im Ĝ_im
    dL/dβ     = sum_t u_t Ĝ_t
    dL/dλ     = sum_t δ_t conj(h_{t-1}) Ĝ_t
    dL/dh_-1  = conj(λ) δ_0 Ĝ_0

The forward keeps every state (it is the output anyway), so the backward pass needs no recompute.
Parameter gradients are accumulated in float64.
"""
from __future__ import annotations

import numpy as np
import torch

from fiberlab.cortex.kernels.cpu_loops import AVAILABLE, as_numpy, jit, require  # noqa: F401  (AVAILABLE: re-exported)


@jit
def _forward(u, lam, beta, h0, resets, out):  # pragma: no cover - compiled
    """u [B, T, W]; lam, beta [W, 2]; h0 [B, W, 2]; resets [B, T] bool; out [B, T, W, 2]."""
    B, T, W = u.shape
    # real and imaginary parts in separate arrays, so the loop over channels vectorises
    lr, li, br, bi = lam[:, 0].copy(), lam[:, 1].copy(), beta[:, 0].copy(), beta[:, 1].copy()
    hr, hi = np.empty(W, u.dtype), np.empty(W, u.dtype)
    for b in range(B):
        hr[:] = h0[b, :, 0]
        hi[:] = h0[b, :, 1]
        for t in range(T):
            if resets[b, t]:  # δ_t = 0
                hr[:] = 0
                hi[:] = 0
            x, o = u[b, t], out[b, t]
            for w in range(W):
                r = lr[w] * hr[w] - li[w] * hi[w] + br[w] * x[w]  # λ h + β u
                i = lr[w] * hi[w] + li[w] * hr[w] + bi[w] * x[w]
                hr[w] = r
                hi[w] = i
                o[w, 0] = r
                o[w, 1] = i


@jit
def _backward(u, lam, beta, h0, resets, out, g_out, g_last, g_u, g_lam, g_beta, g_h0):  # pragma: no cover - compiled
    """Reverse-time pass; g_lam, g_beta [W, 2] float64 totals; g_h0 [B, W, 2].

    Why blocks: walking memory backwards defeats the CPU's prefetcher (~3x slower per byte here),
    so each block of D steps is first copied forwards into small buffers, then walked backwards
    there, and its input gradients are copied out forwards.
    """
    B, T, W = u.shape
    D = 32
    lr, li, br, bi = lam[:, 0].copy(), lam[:, 1].copy(), beta[:, 0].copy(), beta[:, 1].copy()
    Gr, Gi = np.empty(W, u.dtype), np.empty(W, u.dtype)
    # one row's sums in the data's dtype (the loop vectorises), added to the float64 totals per row
    sums = np.empty((4, W), u.dtype)
    glr, gli, gbr, gbi = sums[0], sums[1], sums[2], sums[3]
    b_go = np.empty((D, W, 2), u.dtype)
    b_prev = np.empty((D, W, 2), u.dtype)
    b_u = np.empty((D, W), u.dtype)
    b_gu = np.empty((D, W), u.dtype)
    for b in range(B):
        Gr[:] = g_last[b, :, 0]
        Gi[:] = g_last[b, :, 1]
        sums[:] = 0
        for t1 in range(T, 0, -D):  # blocks [t0, t1), last block first
            t0 = max(0, t1 - D)
            n = t1 - t0
            b_go[:n] = g_out[b, t0:t1]
            b_u[:n] = u[b, t0:t1]
            if t0 > 0:
                b_prev[:n] = out[b, t0 - 1:t1 - 1]
            else:
                b_prev[0] = h0[b]
                b_prev[1:n] = out[b, 0:n - 1]
            for j in range(n - 1, -1, -1):
                go, x, gx = b_go[j], b_u[j], b_gu[j]
                for w in range(W):
                    gr = Gr[w] + go[w, 0]  # Ĝ_t
                    gi = Gi[w] + go[w, 1]
                    gx[w] = br[w] * gr + bi[w] * gi  # Re(conj(β) Ĝ_t)
                    gbr[w] += gr * x[w]
                    gbi[w] += gi * x[w]
                    Gr[w] = gr
                    Gi[w] = gi
                if resets[b, t0 + j]:  # the state before t was zeroed: nothing flows further back
                    Gr[:] = 0
                    Gi[:] = 0
                    continue
                prev = b_prev[j]
                for w in range(W):
                    gr, gi, pr, pi = Gr[w], Gi[w], prev[w, 0], prev[w, 1]
                    glr[w] += pr * gr + pi * gi  # conj(h_{t-1}) Ĝ_t
                    gli[w] += pr * gi - pi * gr
                    Gr[w] = lr[w] * gr + li[w] * gi  # conj(λ) Ĝ_t
                    Gi[w] = lr[w] * gi - li[w] * gr
            g_u[b, t0:t1] = b_gu[:n]
        g_h0[b, :, 0] = Gr
        g_h0[b, :, 1] = Gi
        g_lam[:, 0] += glr
        g_lam[:, 1] += gli
        g_beta[:, 0] += gbr
        g_beta[:, 1] += gbi


class _RTULoop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, lam, beta, h0, resets):  # noqa: D401 - autograd API
        B, T, W = u.shape
        out = torch.empty(B, T, W, 2, dtype=u.dtype)
        _forward(as_numpy(u), as_numpy(lam), as_numpy(beta), as_numpy(h0), as_numpy(resets), out.numpy())
        ctx.save_for_backward(u, lam, beta, h0, resets, out)
        return out, out[:, -1].clone()

    @staticmethod
    def backward(ctx, g_out, g_last):
        u, lam, beta, h0, resets, out = ctx.saved_tensors
        B, T, W = u.shape
        g_out = torch.zeros_like(out) if g_out is None else g_out.contiguous()
        g_last = torch.zeros_like(h0) if g_last is None else g_last.contiguous()
        g_u, g_h0 = torch.empty_like(u), torch.empty_like(h0)
        g_lam, g_beta = np.zeros((W, 2)), np.zeros((W, 2))
        _backward(as_numpy(u), as_numpy(lam), as_numpy(beta), as_numpy(h0), as_numpy(resets), as_numpy(out),
                  as_numpy(g_out), as_numpy(g_last), g_u.numpy(), g_lam, g_beta, g_h0.numpy())
        as_t = lambda a: torch.from_numpy(a).to(u.dtype)  # noqa: E731
        return g_u, as_t(g_lam), as_t(g_beta), g_h0, None


def rtu_loop(
    u: torch.Tensor,
    log_r: torch.Tensor,
    theta: torch.Tensor,
    beta: torch.Tensor,
    h0: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``kernels.rtu_scan.rtu_scan``, CPU tensors only: u real ``[B, T, W]``; log_r,
    theta real ``[W]``; beta complex ``[W]``; h0 complex ``[B, W]`` or None; resets bool ``[B, T]``.
    Returns ``(h [B, T, W] complex, h_last [B, W] complex)``.
    """
    require("rtu_loop", "kernels.rtu_scan.rtu_scan")
    B, T, W = u.shape
    lam = torch.view_as_real(torch.polar(torch.exp(log_r), theta))  # λ = e^{log r + iθ}  [W, 2]
    h0 = torch.zeros(B, W, 2, dtype=u.dtype) if h0 is None else torch.view_as_real(h0)
    resets = torch.zeros(B, T, dtype=torch.bool) if resets is None else resets
    out, last = _RTULoop.apply(u.contiguous(), lam.contiguous(), torch.view_as_real(beta).contiguous(), h0.contiguous(), resets.contiguous())
    return torch.view_as_complex(out), torch.view_as_complex(last)
