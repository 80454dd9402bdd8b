"""Parallel form of the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

Why this kernel: AGaLiTe's value traces on GPUs, and the chunk-to-chunk carries of
``kernels.decayed_readout`` and ``kernels.rtu_scan``, are this recurrence with per-step, per-channel
decays; a reset at step t is simply ``a_t = 0``. Running it as one Python step per time step costs
~10 tiny tensor ops per step, which is bound by kernel launches on GPUs. (On CPUs the cells run
compiled loops instead: ``kernels.cpu_loops``.)

Why a two-level (chunked) scan and not a closed form with cumulative products: ``|a| < 1``, so
``prod a`` underflows and the closed form ``h_t = P_t (h_0 + sum_s b_s / P_s)`` divides by ~0.
Here nothing is ever divided: time is cut into ``n_chunks`` chunks of ``L`` steps,
1. every chunk scans its own ``L`` steps from a zero start, all chunks at once (``L`` vector steps),
   keeping the running decay product ``A_j = a_j ... a_1`` of the chunk;
2. the state entering each chunk is propagated across chunks (``n_chunks`` vector steps);
3. ``h = h_local + A_local * h_entering``  (one broadcast multiply-add).
With ``L ~ sqrt(T)`` that is ``2 sqrt(T)`` vector steps instead of ``T``, and O(T) work (a
Hillis-Steele scan needs log T steps but O(T log T) work, which loses on CPUs). Plain autograd
differentiates it; it works for real and complex tensors.
"""
from __future__ import annotations

import math

import torch


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` for t = 0..T-1 (time is dim 1).

    a: ``[B, T, *Fa]`` broadcastable to b (e.g. a decay shared by several traces; its B and T may
    be 1: a decay constant over time is then never materialised); b: ``[B, T, *F]``;
    h0: ``[B, *F]``, the state before step 0 (``None``: zeros).
    Returns ``(h [B, T, *F], h_last [B, *F])``; ``h_last`` equals ``h[:, -1]`` but comes without
    indexing ``h``, whose backward would write a full-size zero gradient.
    """
    B, T = b.shape[:2]
    if a.dim() != b.dim() or a.shape[0] not in (1, B) or a.shape[1] not in (1, T):
        raise ValueError(f"linear_scan needs a broadcastable to b with the same rank, got {tuple(a.shape)} and {tuple(b.shape)}")
    const_a = a.shape[1] == 1 and T > 1  # the same decay at every step
    feat = b.shape[2:]
    if T == 1:  # one step: no chunking machinery (the acting path)
        h = b[:, 0] if h0 is None else a[:, 0] * h0 + b[:, 0]
        return h.unsqueeze(1), h
    L = chunk_size or max(1, math.isqrt(T))
    n_chunks = -(-T // L)
    pad = n_chunks * L - T
    if pad:  # a = 1, b = 0 after the end: earlier states are unchanged (and never read)
        if not const_a:
            a = torch.cat([a, a.new_ones((a.shape[0], pad, *a.shape[2:]))], dim=1)
        b = torch.cat([b, b.new_zeros((B, pad, *feat))], dim=1)
    b = b.reshape(B, n_chunks, L, *feat)

    # 1. local scans from a zero start, every chunk at once. unbind (not a[:, :, j]) so that autograd
    #    stacks the slice gradients instead of scattering each into a full-size zero tensor.
    if const_a:
        a_steps = [a] * L  # [1 or B, 1, *Fa]: broadcasts over the chunks
    else:
        a_steps = a.reshape(a.shape[0], n_chunks, L, *a.shape[2:]).unbind(2)
    b_steps = b.unbind(2)
    h, A = b_steps[0], a_steps[0]
    hs, As = [h], [A]
    for a_j, b_j in zip(a_steps[1:], b_steps[1:]):
        A = a_j * A  # A_j = a_j * A_{j-1}: decay from the chunk start to step j
        h = a_j * h + b_j  # h_j = a_j h_{j-1} + b_j
        hs.append(h)
        As.append(A)
    h_local = torch.stack(hs, dim=2)  # [B, n_chunks, L, *F]
    A_local = torch.stack(As, dim=2)  # [B, n_chunks, L, *Fa]

    # 2. state entering each chunk: carry_{c+1} = A_{c, L-1} carry_c + h_{c, L-1}
    carry = h0 if h0 is not None else b.new_zeros((B, *feat))
    carries = []
    A_ends = A.expand(A.shape[0], n_chunks, *A.shape[2:]).unbind(1)
    for A_end, h_end in zip(A_ends[:-1], h.unbind(1)[:-1]):  # A, h: the chunks' last local step
        carries.append(carry)
        carry = A_end * carry + h_end
    carries.append(carry)
    entering = torch.stack(carries, dim=1).unsqueeze(2)  # [B, n_chunks, 1, *F]
    # the final state, at step T-1 of the last chunk (not at its padded end)
    j_last = T - 1 - (n_chunks - 1) * L
    h_last = As[j_last].select(1, -1) * carry + hs[j_last].select(1, -1)

    # 3. h_t = h_local_t + (a_t ... a_chunkstart) * h_entering
    h_all = h_local + A_local * entering
    h_all = h_all.reshape(B, n_chunks * L, *feat)
    if pad:
        h_all = h_all[:, :T]
    return h_all, h_last
