"""Parallel form of a diagonal recurrence whose decay is the same at every step (Axon's RTU):

    h_t = δ_t λ h_{t-1} + β u_t        λ = e^{log_r + iθ}, β complex per channel; u real; δ_t = 0 at a reset

Why a kernel of its own (and not ``kernels.scan.linear_scan``): with a constant λ the contribution of
input s to state t is ``β λ^(t-s)``, a Toeplitz matrix per channel. Time is cut into chunks of L
steps and, inside a chunk, all L states come from one batched matmul of the real inputs with the
real and imaginary parts of that matrix, instead of L dependent complex vector steps and their
autograd graph. That is ~2L multiply-adds per token and channel, but in BLAS calls.

Where it is used: on GPUs (``DiagonalRTU`` picks), where a step loop or a scan of many small
ops is bound by kernel launches. On CPUs ``kernels.rtu_loop`` (one compiled pass) is faster.
Internally channels come first (``[W, B, T]``): the matmul is batched over channels; real and
imaginary parts are kept as separate real tensors.

Inside chunk c (steps t, s = 0..L-1 of the chunk; H the chunk's states from a zero start):

    H_t   = sum_{s<=t} β λ^(t-s) u_s                       (the Toeplitz matmuls, resets ignored)
    h_t   = H_t - λ^(t-p+1) H_{p-1}                        p = the latest reset <= t in the chunk:
                                                           removes exactly the inputs before p
          + λ^(t+1) h_enter,c   if no reset in [0, t]      the state entering the chunk
    h_enter,c+1 = λ^L h_enter,c [no reset in chunk c] + h_{L-1} of chunk c   (a scan over chunks)

Numerical safety: only powers λ^k with k >= 0 appear and |λ| < 1, so nothing overflows or is
divided; the reset correction subtracts two sums of the same bounded inputs (float32 round-off
~1e-7 of H).
"""
from __future__ import annotations

import torch

from fiberlab.cortex.kernels.scan import linear_scan


def _powers(log_r: torch.Tensor, theta: torch.Tensor, n: int) -> torch.Tensor:
    """``λ^k = e^{k log r} e^{i k θ}`` for k = 0..n-1, ``[n, W]`` complex: no repeated products, and
    finite gradients even where r underflows to 0 (which ``|λ|^k`` would not have at k = 0)."""
    k = torch.arange(n, device=log_r.device, dtype=log_r.dtype).unsqueeze(1)
    return torch.polar(torch.exp(k * log_r), k * theta)


def rtu_scan(
    u: torch.Tensor,
    log_r: torch.Tensor,
    theta: torch.Tensor,
    beta: torch.Tensor,
    h0: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All states of ``h_t = δ_t λ h_{t-1} + β u_t``.

    u: real ``[B, T, W]``; log_r (< 0), theta: real ``[W]``; beta: complex ``[W]``;
    h0: complex ``[B, W]`` (``None``: zeros); resets: bool ``[B, T]``, True where the state is
    zeroed before step t. Returns ``(h [B, T, W] complex, h_last [B, W] complex)``.
    """
    B, T, W = u.shape
    u = u.permute(2, 0, 1)  # channels first
    if log_r.shape != (W,) or theta.shape != (W,) or beta.shape != (W,):
        raise ValueError(f"rtu_scan: log_r, theta and beta must be [{W}], got {tuple(log_r.shape)}, {tuple(theta.shape)} and {tuple(beta.shape)}")
    L = max(1, min(chunk_size, T))
    n_chunks = -(-T // L)
    pad = n_chunks * L - T
    if pad:  # zero input after the end: the states we return are untouched
        u = torch.cat([u, u.new_zeros(W, B, pad)], 2)
        if resets is not None:
            resets = torch.cat([resets, resets.new_zeros(B, pad)], 1)
    N = B * n_chunks
    P = _powers(log_r, theta, L + 1)  # λ^0 .. λ^L   [L+1, W]

    # 1. H_t = sum_{s<=t} β λ^(t-s) u_s: per channel a [L, L] Toeplitz matrix; one bmm gives the real
    #    parts, the imaginary parts and (two more columns) the chunk's last state again, split apart
    #    so that autograd joins their gradients with one cat instead of zero-filling per slice
    t_idx = torch.arange(L, device=u.device)
    lag = t_idx.unsqueeze(0) - t_idx.unsqueeze(1)  # lag[s, t] = t - s
    toeplitz = (beta * P[lag.clamp(min=0)]).permute(2, 0, 1) * (lag >= 0)  # [W, L(s), L(t)] complex
    kernel = torch.cat([toeplitz.real, toeplitz.imag, torch.view_as_real(toeplitz[:, :, -1])], 2)  # [W, L, 2L + 2]
    re, im, end = torch.bmm(u.reshape(W, N, L), kernel).split([L, L, 2], dim=2)

    # 2. resets: remove what came before the latest reset, H_t - λ^(t-p+1) H_{p-1}
    alive = None  # [N, L]: no reset in [0, t] of the chunk (the entering state survives to t)
    if resets is not None and bool(resets.any()):
        p = torch.where(resets.reshape(N, L), t_idx, -1).cummax(-1).values  # latest reset <= t, -1 for none
        index = p.clamp(min=0).unsqueeze(0).expand(W, N, L)
        zero = re.new_zeros(W, N, 1)
        g_re = torch.gather(torch.cat([zero, re], 2), 2, index)  # H_{p-1} (index j holds H_{j-1}; H_{-1} = 0)
        g_im = torch.gather(torch.cat([zero, im], 2), 2, index)
        decay = P.transpose(0, 1)[:, (t_idx - p + 1).clamp(max=L)]  # λ^(t-p+1)  [W, N, L]; p = -1: times H_{-1} = 0
        d_re, d_im = decay.real, decay.imag
        re = re - (d_re * g_re - d_im * g_im)
        im = im - (d_re * g_im + d_im * g_re)
        alive = (p < 0).to(u.dtype)
        end = torch.stack([re[:, :, -1], im[:, :, -1]], -1)

    # 3. the state entering each chunk, by a scan over the chunks (small: [B, n_chunks, W])
    survives = P[L].view(1, 1, W)
    if alive is not None:
        survives = survives * alive[:, -1].view(B, n_chunks, 1)
    end = torch.view_as_complex(end.contiguous()).view(W, B, n_chunks).permute(1, 2, 0)
    ends, last = linear_scan(survives.expand(survives.shape[0], n_chunks, W), end, h0)  # h at every chunk end
    start = h0.unsqueeze(1) if h0 is not None else ends.new_zeros(B, 1, W)
    entering = torch.cat([start, ends[:, :-1]], 1).permute(2, 0, 1).reshape(W, N)  # h_enter,c
    # λ^(t+1) h_enter = (Re λ^(t+1) e_re - Im λ^(t+1) e_im) + i (Im λ^(t+1) e_re + Re λ^(t+1) e_im)
    e = torch.stack([entering.real, entering.imag], -1)  # [W, N, 2]
    pw = P[1:].transpose(0, 1)  # λ^(t+1)  [W, L]
    to_re = torch.stack([pw.real, -pw.imag], 1)  # [W, 2, L]
    to_im = torch.stack([pw.imag, pw.real], 1)
    if alive is None:  # fused: H + e @ M
        re, im = torch.baddbmm(re, e, to_re), torch.baddbmm(im, e, to_im)
    else:
        re, im = re + torch.bmm(e, to_re) * alive, im + torch.bmm(e, to_im) * alive

    h = torch.complex(re, im).view(W, B, n_chunks * L).permute(1, 2, 0)  # [B, T (+ pad), W]
    if pad:  # the last chunk's end lies past T - 1
        last = h[:, T - 1]
        h = h[:, :T]
    return h, last
