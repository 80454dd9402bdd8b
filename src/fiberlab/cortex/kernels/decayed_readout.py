"""Chunkwise-parallel read-out of decayed outer-product traces (AGaLiTe's keys, gated linear attention).

Computes, for J traces sharing one per-feature decay,

    K_j,t = δ_t a_t ⊙ K_j,t-1 + coef_tj w_t          (δ_t = 0 at a reset, K_j,-1 = k0_j)
    readout_tj = q_t · K_j,t

without materialising K_j,t at every step. Why: ``kernels.scan.linear_scan`` would write T x J x F
numbers only to reduce them against q_t at once; that memory traffic made AGaLiTe's parallel form no
faster than a step loop. Here time is cut into chunks of L steps and, inside a chunk,

    q_t · K_j,t = sum_{s<=t, same episode} (q_t ⊙ e^{Λ_t - m}) · (w_s ⊙ e^{m - Λ_s}) coef_sj
                  + (q_t ⊙ e^{Λ_t}) · K_j,start           (if no reset in [start, t])

with Λ_t = sum_{u<=t} log a_u since the chunk start: one small matmul per chunk. Only the states at
chunk boundaries are materialised, by a ``linear_scan`` over the chunks.

Numerical safety: the factors e^{Λ_t - m}, e^{m - Λ_s} are taken relative to the chunk's middle
step m, so their exponents stay within (L/2) max|log a|; ``log a`` is floored at -bound/(L/2 + 1)
(bound 60 for float32, 600 for float64): with L = 8 a decay below 6e-6 (float32) or 1e-52 (float64)
is treated as that value, a change of the kept fraction of the past by at most that much.
The pairs s > t are removed with ``where`` (their factors may overflow; they are never used).
Resets are exact (masks, not decays).
"""
from __future__ import annotations

import torch

from fiberlab.cortex.kernels.scan import linear_scan

# largest exponent a factor may reach: e^bound times the data must stay finite in the dtype (and in
# the backward pass, where gradients multiply these factors), with headroom
_EXP_BOUND = {torch.float16: 6.0, torch.bfloat16: 60.0, torch.float32: 60.0, torch.float64: 600.0}


def decayed_readout(
    q: torch.Tensor,
    w: torch.Tensor,
    log_a: torch.Tensor,
    coef: torch.Tensor,
    resets: torch.Tensor | None = None,
    k0: torch.Tensor | None = None,
    chunk_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, w, log_a ``[N, T, F]``; coef ``[N, T, J]``; resets bool ``[N, T]``; k0 ``[N, J, F]``.

    Returns ``(readout [N, T, J], K_last [N, J, F])``.
    """
    N, T, F = w.shape
    J = coef.shape[-1]
    if q.shape != w.shape or log_a.shape != w.shape or coef.shape[:2] != (N, T):
        raise ValueError(f"decayed_readout: q, w, log_a must be [N, T, F] and coef [N, T, J], got {tuple(q.shape)}, {tuple(w.shape)}, {tuple(log_a.shape)}, {tuple(coef.shape)}")
    L = max(2, chunk_size)
    n_chunks = -(-T // L)
    pad = n_chunks * L - T
    if resets is None:
        resets = torch.zeros(N, T, dtype=torch.bool, device=w.device)
    if pad:  # padded steps: no decay (log a = 0), nothing written, nothing read
        q, w, log_a, coef = (torch.cat([t, t.new_zeros(N, pad, t.shape[-1])], 1) for t in (q, w, log_a, coef))
        resets = torch.cat([resets, resets.new_zeros(N, pad)], 1)
    q, w, log_a = (t.reshape(N, n_chunks, L, F) for t in (q, w, log_a))
    coef = coef.reshape(N, n_chunks, L, J)
    episode = resets.reshape(N, n_chunks, L).long().cumsum(-1)  # resets seen since the chunk start (inclusive)

    floor = _EXP_BOUND.get(w.dtype, 80.0) / (L // 2 + 1)
    lam = log_a.clamp_min(-floor).cumsum(2)  # Λ_t = sum_{u<=t} log a_u within the chunk
    lam_mid = lam[:, :, L // 2].unsqueeze(2)  # m: reference point in the middle of the chunk
    rel = lam - lam_mid
    q_in = q * torch.exp(rel)  # q_t e^{Λ_t - m}
    w_out = w * torch.exp(-rel)  # w_s e^{m - Λ_s} (an exp, not a division: cheaper to differentiate)

    # within the chunk: S[t, s] = q_t · (e^{Λ_t - Λ_s} ⊙ w_s) for s <= t in the same episode
    scores = q_in @ w_out.transpose(-1, -2)  # [N, n_chunks, L, L]
    causal = torch.ones(L, L, dtype=torch.bool, device=w.device).tril()
    same_episode = episode.unsqueeze(-1) == episode.unsqueeze(-2)
    scores = torch.where(causal & same_episode, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
    readout = scores @ coef  # sum_s S[t, s] coef_sj   [N, n_chunks, L, J]

    # what each chunk adds to the traces by its end, and how much it keeps of the trace entering it
    lam_end = lam[:, :, -1:]
    reaches_end = (episode == episode[:, :, -1:]).to(w.dtype).unsqueeze(-1)  # no reset in (s, end]
    w_to_end = w_out * torch.exp(lam_end - lam_mid)  # w_s e^{Λ_end - Λ_s}, exponent <= 0: safe
    added = (coef * reaches_end).transpose(-1, -2) @ w_to_end  # sum_s coef_sj w_s e^{Λ_end - Λ_s}   [N, n_chunks, J, F]
    no_reset = (episode[:, :, -1] == 0).to(w.dtype).view(N, n_chunks, 1, 1)
    kept = torch.exp(lam_end) * no_reset  # [N, n_chunks, 1, F]
    ends, k_last = linear_scan(kept, added, k0)  # K at the end of every chunk
    starts = torch.cat([k0.unsqueeze(1) if k0 is not None else ends.new_zeros(N, 1, J, F), ends[:, :-1]], 1)

    # the entering trace, read at step t: (q_t ⊙ e^{Λ_t}) · K_j,start, if no reset in [start, t]
    from_start = (episode == 0).to(w.dtype).unsqueeze(-1)
    readout = readout + (q_in * torch.exp(lam_mid)) @ starts.transpose(-1, -2) * from_start  # e^{Λ_t} = e^{Λ_t - m} e^{m}
    readout = readout.reshape(N, n_chunks * L, J)
    return (readout[:, :T] if pad else readout), k_last
