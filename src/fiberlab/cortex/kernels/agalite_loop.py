"""AGaLiTe's whole recurrence, keys, values and output, as one compiled loop over time (CPU).

Per head, with every per-feature quantity an outer product of a head-sized (i < d) and an
eta-sized (e < eta) factor, J = r + 1 key traces (the r oscillator copies and the normaliser s),
from the raw projections q, kr (keys), p1, p2 and the sigmoid gates gk, gp:

    qd = relu(q)   wd = relu(kr) gk   gd = gk        qe = relu(p2)   we = relu(p1) gp   ge = gp
    q_t[f] = qd_t[i] qe_t[e]      w_t[f] = wd_t[i] we_t[e]      a_t[f] = 1 - gd_t[i] ge_t[e]
    K_j,t  = δ_t a_t ⊙ K_j,t-1 + coef_tj w_t            κ_tj = q_t · K_j,t          (j < J)
    V_j,t  = δ_t (1 - β_t) ⊙ V_j,t-1 + coef_tj (v_t ⊙ β_t)                          (j < r)
    o_t    = sum_{j<r} V_j,t κ_tj / (2r κ_tr + eps)                (δ_t = 0 at a reset)

It computes what ``cells.agalite`` computes on GPUs with ``kernels.decayed_readout`` (keys) and
``kernels.scan.linear_scan`` (values) plus tensor ops for o.

Why a loop, on the CPU: the tensor-op form must write the three F-sized feature maps (F = d eta,
six times the head width) and several F-sized and value-sized intermediates for every token,
forward and backward; on one core that memory traffic cost as much as a Python step loop. Here
the factors are read (d + eta numbers each), the features live only in cache, and so do the
traces of a batch row (NH (J F + r d) numbers). It is also exact where the chunked form floors
tiny decays.

Backward (reverse time), with Ĝ_j, Ĥ_j the gradients reaching K_j,t and V_j,t:

    n = sum_{j<r} V_j κ_j,  z = 2r κ_r + eps:      dL/dn = g_o / z,   dL/dz = -(g_o · n) / z^2
    dL/dκ_j = dL/dn · V_j (j < r),  dL/dκ_r = 2r dL/dz;          Ĥ_j += κ_j dL/dn
    dL/dv = β sum_j coef_j Ĥ_j,   dL/dβ = sum_j Ĥ_j ⊙ (coef_j v - δ V_j,t-1),   Ĥ_j <- δ (1 - β) ⊙ Ĥ_j
    Ĝ_j += dL/dκ_j q,   dL/dq = sum_j dL/dκ_j K_j,t,   dL/dw = sum_j coef_j Ĝ_j,
    dL/dcoef_j = Ĝ_j · w + Ĥ_j · (v ⊙ β),   dL/da = δ sum_j Ĝ_j ⊙ K_j,t-1,   Ĝ_j <- δ a ⊙ Ĝ_j

then through the outer products (dL/dqd_i = sum_e dL/dq[i, e] qe_e, ...; dL/dgd_i = -sum_e dL/da[i, e] ge_e)
and the relus and products that make the factors (so torch runs none of those elementwise ops).
The forward keeps the traces only every ``D`` steps; the backward recomputes each block of D
steps from its checkpoint into small buffers and walks it backwards there.
"""
from __future__ import annotations

import numpy as np
import torch

from fiberlab.cortex.kernels.cpu_loops import AVAILABLE, as_numpy, jit, require  # noqa: F401  (AVAILABLE: re-exported)

D = 16  # checkpoint interval of the forward pass (steps): the backward's block buffers stay in L2

# Loop order: batch row, time, head. A token's heads lie side by side in memory, so the inputs are
# read in order, and the traces of all heads of a row stay in L1/L2. Inside, a feature is
# f = e d + i (outside, the state's layout, f = i eta + e): the outer products then run along the
# head dimension, contiguous and vectorised. No array slices inside the time loops (arrays are
# passed whole, with indices): in numba every slice is a reference-counted view, and its atomic
# increments cost more than one head's step.
_FM = {"reassoc", "contract"}  # reassoc: sums over features vectorise (their order changes, as in BLAS)


@jit(fastmath=_FM)
def _head_step(q, p2, kr, p1, gk, gp, v, bt, coef, keep, b, t, h,
               Ks, Vs, k_in, k_out, feats, kappas, k_f):  # pragma: no cover - compiled
    """One head's step: Ks[k_out, h] = step(Ks[k_in, h]) (J x F), likewise Vs (r x d); the features
    go to feats[k_f, h, 0..2] (q, w, a), the read-outs κ_j to kappas[k_f, h]."""
    d, E = q.shape[3], p2.shape[3]
    J, F = Ks.shape[2], Ks.shape[3]
    zero = q[b, t, h, 0] * 0
    for e in range(E):
        yq, yw, yg = max(p2[b, t, h, e], zero), max(p1[b, t, h, e], zero) * gp[b, t, h, e], gp[b, t, h, e]
        for i in range(d):
            feats[k_f, h, 0, e * d + i] = max(q[b, t, h, i], zero) * yq
            feats[k_f, h, 1, e * d + i] = max(kr[b, t, h, i], zero) * gk[b, t, h, i] * yw
            feats[k_f, h, 2, e * d + i] = 1 - gk[b, t, h, i] * yg
    for j in range(J):
        c = coef[b, t, j]
        acc = feats[k_f, h, 0, 0] * 0  # zero in the data's dtype (a float64 sum would not vectorise)
        for f in range(F):
            x = keep * feats[k_f, h, 2, f] * Ks[k_in, h, j, f] + c * feats[k_f, h, 1, f]  # K_j = δ a ⊙ K_j + coef_j w
            Ks[k_out, h, j, f] = x
            acc += x * feats[k_f, h, 0, f]
        kappas[k_f, h, j] = acc  # κ_j = q · K_j
    for j in range(Vs.shape[2]):
        c = coef[b, t, j]
        for i in range(d):
            Vs[k_out, h, j, i] = keep * (1 - bt[b, t, h, i]) * Vs[k_in, h, j, i] + c * v[b, t, h, i] * bt[b, t, h, i]  # V_j = δ (1 - β) V_j + coef_j v β


@jit(fastmath=_FM)
def _forward(q, p2, kr, p1, gk, gp, v, bt, coef, resets, k0, v0, eps, o, k_last, v_last, ckpt_k, ckpt_v):  # pragma: no cover - compiled
    """Raw q, kr (keys), p1, p2 (relu inside), sigmoid gates gk, gp; v, bt (beta).
    q, kr, gk, v, bt [B, T, NH, d]; p2, p1, gp [B, T, NH, eta]; coef [B, T, J]; resets [B, T];
    k0 [B, NH, J, F] (f = e d + i); v0 [B, NH, r, d]. Out: o [B, T, NH, d], k_last, v_last,
    ckpt_k [B, ceil(T/D), NH, J, F], ckpt_v [B, ceil(T/D), NH, r, d] (states before each block)."""
    B, T, NH, d = q.shape
    J, F, r = k0.shape[2], k0.shape[3], v0.shape[2]
    dt = q.dtype
    K = np.empty((1, NH, J, F), dt)  # updated in place (k_in = k_out = 0)
    V = np.empty((1, NH, r, d), dt)
    feats = np.empty((1, NH, 3, F), dt)
    kappas = np.empty((1, NH, J), dt)
    for b in range(B):
        K[0] = k0[b]
        V[0] = v0[b]
        for t in range(T):
            if t % D == 0:
                ckpt_k[b, t // D] = K[0]
                ckpt_v[b, t // D] = V[0]
            keep = dt.type(0) if resets[b, t] else dt.type(1)
            for h in range(NH):
                _head_step(q, p2, kr, p1, gk, gp, v, bt, coef, keep, b, t, h, K, V, 0, 0, feats, kappas, 0)
                z = 2 * r * kappas[0, h, r] + eps
                for i in range(d):
                    n = feats[0, h, 0, 0] * 0
                    for j in range(r):
                        n += V[0, h, j, i] * kappas[0, h, j]
                    o[b, t, h, i] = n / z  # sum_j V_j κ_j / (2r κ_r + eps)
        k_last[b] = K[0]
        v_last[b] = V[0]


@jit(fastmath=_FM)
def _backward(q, p2, kr, p1, gk, gp, v, bt, coef, resets, eps, ckpt_k, ckpt_v, g_o, g_klast, g_vlast,
              g_q, g_p2, g_kr, g_p1, g_gk, g_gp, g_v, g_bt, g_coef, g_k0, g_v0):  # pragma: no cover - compiled
    """Every gradient is written whole."""
    B, T, NH, d = q.shape
    E = p2.shape[3]
    J, F, r = g_klast.shape[2], g_klast.shape[3], g_vlast.shape[2]
    dt = q.dtype
    z0 = dt.type(0)
    Ks = np.empty((D + 1, NH, J, F), dt)  # Ks[k] = K before step t0 + k of the block
    Vs = np.empty((D + 1, NH, r, d), dt)
    feats = np.empty((D, NH, 3, F), dt)  # the block's (q, w, a), built once in the recompute
    kappas = np.empty((D, NH, J), dt)
    G = np.empty((NH, J, F), dt)
    Hv = np.empty((NH, r, d), dt)
    gq, gw, ga = np.empty(F, dt), np.empty(F, dt), np.empty(F, dt)
    g_kappa, g_n = np.empty(J, dt), np.empty(d, dt)
    # the block's incoming and outgoing gradients: walking memory backwards defeats the prefetcher,
    # so they are copied in and out forwards, and walked backwards here, in cache
    go = np.empty((D, NH, d), dt)
    gd_out = np.empty((5, D, NH, d), dt)  # the factors qd, wd, gd, then v, beta
    ge_out = np.empty((3, D, NH, E), dt)  # the factors qe, we, ge
    gc_out = np.empty((D, J), dt)
    for b in range(B):
        G[:] = g_klast[b]
        Hv[:] = g_vlast[b]
        for blk in range((T + D - 1) // D - 1, -1, -1):
            t0 = blk * D
            t1 = min(T, t0 + D)
            Ks[0] = ckpt_k[b, blk]
            Vs[0] = ckpt_v[b, blk]
            go[: t1 - t0] = g_o[b, t0:t1]
            gc_out[:] = 0
            for t in range(t0, t1):  # recompute the block's features and traces
                k = t - t0
                keep = dt.type(0) if resets[b, t] else dt.type(1)
                for h in range(NH):
                    _head_step(q, p2, kr, p1, gk, gp, v, bt, coef, keep, b, t, h, Ks, Vs, k, k + 1, feats, kappas, k)
            for t in range(t1 - 1, t0 - 1, -1):
                k = t - t0
                keep = dt.type(0) if resets[b, t] else dt.type(1)
                zero = feats[k, 0, 0, 0] * 0
                for h in range(NH):
                    # the output: o = n / z
                    z = 2 * r * kappas[k, h, r] + eps
                    g_z = zero
                    for i in range(d):
                        n = zero
                        for j in range(r):
                            n += Vs[k + 1, h, j, i] * kappas[k, h, j]
                        g_n[i] = go[k, h, i] / z
                        g_z -= go[k, h, i] * n / (z * z)
                    for j in range(r):
                        s = zero
                        for i in range(d):
                            s += g_n[i] * Vs[k + 1, h, j, i]
                            Hv[h, j, i] += g_n[i] * kappas[k, h, j]
                        g_kappa[j] = s
                    g_kappa[r] = 2 * r * g_z
                    # the values: V_j = δ (1 - β) V_j,t-1 + coef_j v β
                    for i in range(d):
                        gd_out[3, k, h, i] = 0
                        gd_out[4, k, h, i] = 0
                    for j in range(r):
                        c = coef[b, t, j]
                        gc = zero
                        for i in range(d):
                            x, y, hv = v[b, t, h, i], bt[b, t, h, i], Hv[h, j, i]
                            gc += hv * x * y
                            gd_out[3, k, h, i] += hv * c * y
                            gd_out[4, k, h, i] += hv * (c * x - keep * Vs[k, h, j, i])
                            Hv[h, j, i] = keep * (1 - y) * hv
                        gc_out[k, j] += gc
                    # the keys: K_j = δ a ⊙ K_j,t-1 + coef_j w,  κ_j = q · K_j
                    for f in range(F):
                        gq[f] = 0
                        gw[f] = 0
                        ga[f] = 0
                    for j in range(J):
                        gr, c = g_kappa[j], coef[b, t, j]
                        gc = zero
                        for f in range(F):
                            gq[f] += gr * Ks[k + 1, h, j, f]
                            g = G[h, j, f] + gr * feats[k, h, 0, f]  # Ĝ_j at step t
                            gw[f] += g * c
                            gc += g * feats[k, h, 1, f]
                            ga[f] -= keep * g * Ks[k, h, j, f]  # minus: a = 1 - gd ⊗ ge
                            G[h, j, f] = keep * feats[k, h, 2, f] * g
                        gc_out[k, j] += gc
                    # through the outer products: dL/dx_i = sum_e g[e, i] y_e, dL/dy_e = sum_i g[e, i] x_i
                    for i in range(d):
                        gd_out[0, k, h, i] = 0
                        gd_out[1, k, h, i] = 0
                        gd_out[2, k, h, i] = 0
                    for e in range(E):
                        yq, yw, yg = max(p2[b, t, h, e], z0), max(p1[b, t, h, e], z0) * gp[b, t, h, e], gp[b, t, h, e]
                        sq = sw = sg = zero
                        for i in range(d):
                            f = e * d + i
                            sq += gq[f] * max(q[b, t, h, i], z0)
                            sw += gw[f] * max(kr[b, t, h, i], z0) * gk[b, t, h, i]
                            sg += ga[f] * gk[b, t, h, i]
                            gd_out[0, k, h, i] += gq[f] * yq
                            gd_out[1, k, h, i] += gw[f] * yw
                            gd_out[2, k, h, i] += ga[f] * yg
                        ge_out[0, k, h, e] = sq
                        ge_out[1, k, h, e] = sw
                        ge_out[2, k, h, e] = sg
            n = t1 - t0
            g_v[b, t0:t1] = gd_out[3, :n]
            g_bt[b, t0:t1] = gd_out[4, :n]
            # from the factors' gradients to the raw inputs': qd = relu(q), wd = relu(kr) gk, gd = gk,
            # and on the eta side qe = relu(p2), we = relu(p1) gp, ge = gp (relu' = [x > 0], as torch)
            for kk in range(n):
                t = t0 + kk
                for h in range(NH):
                    for i in range(d):
                        x, g_w = kr[b, t, h, i], gd_out[1, kk, h, i]
                        g_q[b, t, h, i] = gd_out[0, kk, h, i] if q[b, t, h, i] > 0 else z0
                        g_kr[b, t, h, i] = g_w * gk[b, t, h, i] if x > 0 else z0
                        g_gk[b, t, h, i] = g_w * max(x, z0) + gd_out[2, kk, h, i]
                    for e in range(E):
                        x, g_w = p1[b, t, h, e], ge_out[1, kk, h, e]
                        g_p2[b, t, h, e] = ge_out[0, kk, h, e] if p2[b, t, h, e] > 0 else z0
                        g_p1[b, t, h, e] = g_w * gp[b, t, h, e] if x > 0 else z0
                        g_gp[b, t, h, e] = g_w * max(x, z0) + ge_out[2, kk, h, e]
            g_coef[b, t0:t1] = gc_out[:n]
        g_k0[b] = G
        g_v0[b] = Hv


def _swap(k: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Features ``(i, e)`` <-> ``(e, i)``: ``[.., n1 n2] -> [.., n2 n1]`` (the state's order <-> the loops')."""
    return k.unflatten(-1, (n1, n2)).transpose(-1, -2).flatten(-2).contiguous()


class _AGaLiTeLoop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, p2, kr, p1, gk, gp, v, bt, coef, resets, k0, v0, eps):  # noqa: D401 - autograd API
        B, T, NH, d = q.shape
        E = p2.shape[3]
        J, F = k0.shape[2:]
        r = v0.shape[2]
        n_blocks = -(-T // D)
        o = torch.empty(B, T, NH, d, dtype=q.dtype)
        k_last, v_last = torch.empty_like(k0), torch.empty_like(v0)
        ckpt_k = torch.empty(B, n_blocks, NH, J, F, dtype=q.dtype)
        ckpt_v = torch.empty(B, n_blocks, NH, r, d, dtype=q.dtype)
        _forward(*(as_numpy(x) for x in (q, p2, kr, p1, gk, gp, v, bt, coef, resets, _swap(k0, d, E), v0)), eps,
                 *(x.numpy() for x in (o, k_last, v_last, ckpt_k, ckpt_v)))
        ctx.save_for_backward(q, p2, kr, p1, gk, gp, v, bt, coef, resets, ckpt_k, ckpt_v)
        ctx.eps = eps
        return o, _swap(k_last, E, d), v_last

    @staticmethod
    def backward(ctx, g_o, g_klast, g_vlast):
        q, p2, kr, p1, gk, gp, v, bt, coef, resets, ckpt_k, ckpt_v = ctx.saved_tensors
        B, T, NH, d = q.shape
        E = p2.shape[3]
        J, F = ckpt_k.shape[3:]
        r = ckpt_v.shape[3]
        g_o = torch.zeros(B, T, NH, d, dtype=q.dtype) if g_o is None else g_o.contiguous()
        g_klast = torch.zeros(B, NH, J, F, dtype=q.dtype) if g_klast is None else _swap(g_klast, d, E)
        g_vlast = torch.zeros(B, NH, r, d, dtype=q.dtype) if g_vlast is None else g_vlast.contiguous()
        grads = [torch.empty(x.shape, dtype=x.dtype) for x in (q, p2, kr, p1, gk, gp, v, bt)]
        g_coef = torch.zeros_like(coef)
        g_k0, g_v0 = torch.empty(B, NH, J, F, dtype=q.dtype), torch.empty(B, NH, r, d, dtype=q.dtype)
        _backward(*(as_numpy(x) for x in (q, p2, kr, p1, gk, gp, v, bt, coef, resets)), ctx.eps,
                  *(as_numpy(x) for x in (ckpt_k, ckpt_v, g_o, g_klast, g_vlast)),
                  *(g.numpy() for g in grads), g_coef.numpy(), g_k0.numpy(), g_v0.numpy())
        return (*grads, g_coef, None, _swap(g_k0, E, d), g_v0, None)


def agalite_loop(
    q: torch.Tensor, p2: torch.Tensor, kr: torch.Tensor, p1: torch.Tensor, gk: torch.Tensor, gp: torch.Tensor,
    v: torch.Tensor, beta: torch.Tensor, coef: torch.Tensor, resets: torch.Tensor | None,
    k0: torch.Tensor, v0: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU tensors, token-major. The projections before their activations: q, kr (keys) ``[B, T, NH, d]``,
    p2, p1 ``[B, T, NH, eta]`` (the loop applies the relu); the gates after their sigmoid: gk
    ``[B, T, NH, d]``, gp ``[B, T, NH, eta]``; v, beta (after its sigmoid) ``[B, T, NH, d]``; coef ``[B, T, r + 1]`` (the oscillators, then 1);
    resets bool ``[B, T]`` or None; k0 ``[B, NH, r + 1, d eta]``; v0 ``[B, NH, r, d]``.
    Returns ``(o [B, T, NH, d], K_last [B, NH, r + 1, d eta], V_last [B, NH, r, d])``.
    """
    require("agalite_loop", "the tensor-op kernels (kernels.decayed_readout, kernels.scan)")
    B, T = q.shape[:2]
    resets = torch.zeros(B, T, dtype=torch.bool) if resets is None else resets.contiguous()
    # contiguous inputs: numba vectorises only arrays it knows to be contiguous (a no-op for the cell's)
    args = (q, p2, kr, p1, gk, gp, v, beta, coef)
    return _AGaLiTeLoop.apply(*(x.contiguous() for x in args), resets, k0.contiguous(), v0.contiguous(), float(eps))


@jit(fastmath=_FM)
def _step(kqvbg, p123, gates, gate_p, tick, resets, omega, tk, ts, tv, eps, o, tk_out, ts_out, tv_out, tick_out):  # pragma: no cover - compiled
    """One step in the state's own layout (f = i eta + e), relus inside.

    kqvbg [B, 5, NH, d] raw (k, q, v, beta~, gamma~); p123 [B, 3, NH, eta] raw (p1, p2, p3~); gates
    [B, 2, NH, d] = sigma(beta~, gamma~); gate_p [B, NH, eta] = sigma(p3~) (computed by torch,
    vectorised: numba's exp is scalar here); tick [B]; resets bool [B]; omega [r];
    tk [B, r, NH, F], ts [B, NH, F], tv [B, r, NH, d]. Out: o [B, NH, d], the new traces, tick_out [B]."""
    B, NH, d = kqvbg.shape[0], kqvbg.shape[2], kqvbg.shape[3]
    E, r, F = p123.shape[3], omega.shape[0], ts.shape[2]
    dt = kqvbg.dtype
    one = dt.type(1)
    zero = dt.type(0)
    coef = np.empty(r, dt)
    A = np.empty(F, dt)
    W = np.empty(F, dt)
    Q = np.empty(F, dt)
    kap = np.empty(r + 1, dt)
    for b in range(B):
        keep = zero if resets[b] else one
        tau = zero if resets[b] else tick[b]  # steps since the episode start
        tick_out[b] = tau + 1
        for j in range(r):
            coef[j] = np.cos(tau * omega[j])  # c_tj
        for h in range(NH):
            for i in range(d):  # features: phi_q = relu(q) x relu(p2), w = (relu(k) gk) x (relu(p1) gp), a = δ(1 - gk x gp)
                gk = gates[b, 1, h, i]
                qd = max(kqvbg[b, 1, h, i], zero)
                wd = max(kqvbg[b, 0, h, i], zero) * gk
                for e in range(E):
                    f = i * E + e
                    gp = gate_p[b, h, e]
                    Q[f] = qd * max(p123[b, 1, h, e], zero)
                    W[f] = wd * (max(p123[b, 0, h, e], zero) * gp)
                    A[f] = keep * (one - gk * gp)
            for j in range(r):  # K_j = δ(1-γ) K_j + c_j (phi_k ⊙ γ);  κ_j = K_j · phi_q
                c = coef[j]
                acc = zero
                for f in range(F):
                    x = A[f] * tk[b, j, h, f] + c * W[f]
                    tk_out[b, j, h, f] = x
                    acc += x * Q[f]
                kap[j] = acc
            acc = zero
            for f in range(F):  # s = δ(1-γ) s + phi_k ⊙ γ;  κ_r = s · phi_q
                x = A[f] * ts[b, h, f] + W[f]
                ts_out[b, h, f] = x
                acc += x * Q[f]
            z = 2 * r * acc + eps
            for i in range(d):  # V_j = δ(1-β) V_j + c_j (v ⊙ β);  o = sum_j V_j κ_j / (2r κ_r + eps)
                beta = gates[b, 0, h, i]
                dec = keep * (one - beta)
                vb = kqvbg[b, 2, h, i] * beta
                num = zero
                for j in range(r):
                    x = dec * tv[b, j, h, i] + coef[j] * vb
                    tv_out[b, j, h, i] = x
                    num += x * kap[j]
                o[b, h, i] = num / z


def agalite_step(kqvbg: torch.Tensor, p123: torch.Tensor, state: dict[str, torch.Tensor], resets: torch.Tensor | None,
                 omega: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One AGaLiTe step on the CPU, no autograd: ``(o [B, NH, d], new state)``.

    kqvbg ``[B, 5, NH, d]`` and p123 ``[B, 3, NH, eta]`` are the raw projections (the kernel applies
    the relus; the sigmoids run here, vectorised); ``state`` is the cell's (tilde_k, s, tilde_v,
    tick). Why: one step in tensor ops is ~20 broadcasting operations over the ``[B, r+1, NH, F]``
    traces (about ten passes over them, ~1.5 ms at B=64, H=128); here each trace is read and
    written once.
    """
    B, _, NH, d = kqvbg.shape
    resets = torch.zeros(B, dtype=torch.bool) if resets is None else resets.contiguous()
    kqvbg, p123 = kqvbg.contiguous(), p123.contiguous()
    gates, gate_p = torch.sigmoid(kqvbg[:, 3:]), torch.sigmoid(p123[:, 2])  # beta, gamma; gamma_p
    tk, ts, tv, tick = (state[k].contiguous() for k in ("tilde_k", "s", "tilde_v", "tick"))
    new = {"tilde_k": torch.empty_like(tk), "tilde_v": torch.empty_like(tv), "s": torch.empty_like(ts), "tick": torch.empty_like(tick)}
    o = torch.empty(B, NH, d, dtype=kqvbg.dtype)
    _step(*(as_numpy(x) for x in (kqvbg, p123, gates, gate_p, tick, resets, omega, tk, ts, tv)), float(eps),
          as_numpy(o), *(as_numpy(new[k]) for k in ("tilde_k", "s", "tilde_v", "tick")))
    return o, new
