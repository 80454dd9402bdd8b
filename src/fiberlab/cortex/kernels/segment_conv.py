"""Causal depthwise convolution over a carried input buffer that honours resets, in one function.

Why a kernel of its own: the C cell is this convolution, and the mLSTM and sLSTM cells both
pre-filter their input with it (kernel 4); its last ``K - 1`` inputs are carried state. The reference ignores
that buffer in sequence mode (a bug to avoid), and a reset must hide every input before it. Doing the
same masked window sum for one step and for a whole sequence keeps the two bit-for-bit alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_ids(resets: torch.Tensor | None, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """``seg_t`` = number of resets at or before step t (``[B, T]`` long); 0 = still the carried episode."""
    if resets is None:
        return torch.zeros(batch, steps, dtype=torch.long, device=device)
    return resets.to(torch.long).cumsum(dim=1)


def causal_depthwise_conv(
    x: torch.Tensor,
    buffer: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y_t = bias + sum_j weight[:, K-1-j] * x_{t-j}`` over the inputs since the last reset.

    x: ``[B, T, H]``; buffer: ``[B, K-1, H]``, the ``K - 1`` inputs before ``x`` (oldest first, zeros
    when fresh); weight: ``[H, K]`` (``weight[:, -1]`` multiplies the current input); bias ``[H]``;
    resets: bool ``[B, T]`` (an input before a reset at step r is invisible to outputs at ``t >= r``).
    Returns ``y [B, T, H]`` and the new buffer ``[B, K-1, H]`` (inputs before the last reset zeroed).
    """
    B, T, H = x.shape
    K = weight.shape[1]
    if buffer.shape != (B, K - 1, H):
        raise ValueError(f"conv buffer must be {(B, K - 1, H)}, got {tuple(buffer.shape)}")
    if T == 1:  # one step (acting): K-1 multiply-adds, no conv1d call (its set-up cost ~5x the arithmetic here)
        return _conv_step(x[:, 0], buffer, weight, bias, None if resets is None else resets[:, 0])
    full = torch.cat([buffer, x], dim=1)  # [B, K-1+T, H]: position p holds x_{p-(K-1)}
    if resets is None or not bool(resets.any()):  # no reset in the call: one conv1d over [buffer; x]
        y = F.conv1d(full.transpose(1, 2), weight.unsqueeze(1), bias, groups=H).transpose(1, 2)
        return y, full[:, full.shape[1] - (K - 1):]
    seg = None
    if resets is not None:
        # buffer entries belong to segment 0 (the carried episode); x_t to segment cumsum(resets)_t
        seg = torch.cat([segment_ids(None, B, K - 1, x.device), segment_ids(resets, B, T, x.device)], dim=1)
    # K shifted multiply-adds over [B, T, H] (contiguous, cheap in backward) instead of a [B, T, H, K] window tensor
    y = x * weight[:, -1] if bias is None else torch.addcmul(bias, x, weight[:, -1])  # lag 0: w_{K-1} x_t
    for lag in range(1, K):
        shifted = full[:, K - 1 - lag:K - 1 - lag + T]  # x_{t-lag}
        if seg is not None:  # visible iff x_{t-lag} is in the same segment as step t
            same = seg[:, K - 1 - lag:K - 1 - lag + T] == seg[:, K - 1:]
            shifted = shifted * same.unsqueeze(-1).to(x.dtype)
        y = torch.addcmul(y, shifted, weight[:, K - 1 - lag])  # y_t += w_{K-1-lag} x_{t-lag}
    new_buffer = full[:, full.shape[1] - (K - 1):]  # last K-1 inputs (may reach into the old buffer)
    if seg is not None:
        keep = (seg[:, seg.shape[1] - (K - 1):] == seg[:, -1:]).to(x.dtype)  # drop inputs before the last reset
        new_buffer = new_buffer * keep.unsqueeze(-1)
    return y, new_buffer


def _conv_step(x: torch.Tensor, buffer: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               resets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``causal_depthwise_conv`` for one step: x ``[B, H]``, resets bool ``[B]`` or None.

    ``y = bias + w_{K-1} x + keep * sum_{p < K-1} w_p buffer_p``, keep = 0 where the step is an
    episode's first (the buffer holds the previous episode); new buffer = [keep * buffer[1:]; x].
    """
    y = x * weight[:, -1] if bias is None else torch.addcmul(bias, x, weight[:, -1])  # w_{K-1} x_t (+ bias)
    past = (buffer * weight[:, :-1].T).sum(dim=1)  # sum_p w_p x_{t-(K-1)+p}   [B, H]
    if resets is not None:
        keep = (~resets).to(x.dtype).unsqueeze(-1)  # [B, 1]
        past = past * keep
        buffer = buffer * keep.unsqueeze(-1)
    y = y + past
    new_buffer = torch.cat([buffer, x.unsqueeze(1)], dim=1)[:, 1:]  # last K-1 inputs ([B, 0, H] when K = 1)
    return y.unsqueeze(1), new_buffer
