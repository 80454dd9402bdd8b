"""The AD-family transformer: Algorithm Distillation (Laskin et al. 2022) as DICP builds it for
Darkroom, plus CompressedAD's two learned marker vectors and the random-marker control.

Tokens (one per transition, the query last)::

    transition t : Linear(10 -> d) on concat(s_t (2), one-hot a_t (5), r_t (1), s'_t (2))
                   (+ m_start where a segment starts at t, + m_end where one ended just before t)
    query        : Embedding(num_states, d)[grid * x + y] of the current state

Network: ``tf_n_layer`` causal pre-norm blocks (RMSNorm, multi-head attention with RoPE on q and k,
SwiGLU feed-forward of width ``tf_dim_feedforward``, dropout ``tf_dropout``), a final RMSNorm and
Linear(d -> num_actions) read at the query position only: the loss and the policy both only
ever look there, so the network never computes anything else it does not need (see
:meth:`Block.forward_last`).

Why the code looks the way it does: the batch is 512 windows x 80 tokens of width 32 on a 2-core
CPU, so the step is bound by memory traffic, small kernels and the attention kernel, not by matmul
FLOPs. Each choice below keeps the math of the plain model (tests/test_distill_model.py checks
values and gradients against a plain reference) and removes passes over the activations:

- no one-hot tensor: the action columns of Linear(10) are an embedding lookup
  (:meth:`ADTransformer.embed_transitions`, the same function);
- RoPE folded into per-position projection weights, one batched matmul over positions
  (:func:`rope_weights`): no rotation pass over q and k;
- RMSNorm gains folded into the next linear map (:meth:`RMSNorm.fold`), the norm's backward
  written out (:class:`_RMSScaleFn`);
- ``scaled_dot_product_attention`` with ``is_causal`` (the fused flash kernel, no [T, T] scores);
- the last block computes the query row alone (:meth:`Block.forward_last`): the loss and the policy
  read nothing else;
- dropout masks from 15-bit uniforms of one integer draw, applied by a fused multiply-add
  (:func:`keep_mask`, :func:`add_dropout`).

``benchmarks/ad.py`` measures the step against a plain implementation in the same run.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fiberlab.distill.config import ADConfig
from fiberlab.errors import BadInput

# Columns of the 10-wide concat (s_x, s_y, onehot a (5), r, s'_x, s'_y) that are plain numbers,
# in the order of the transition tensor's columns (x, y, r, x', y') = columns 0, 1, 3, 4, 5.
CONTINUOUS_COLUMNS = (0, 1, 7, 8, 9)
ACTION_COLUMNS = slice(2, 7)
TRANSITION_FIELDS = (0, 1, 3, 4, 5)  # which columns of transitions [.., 6] feed CONTINUOUS_COLUMNS
ROPE_BASE = 10_000.0


class _RMSScaleFn(torch.autograd.Function):
    """x_hat = x * r with r = 1 / sqrt(mean_i x_i^2 + eps), the backward written out (fewer passes
    over memory than autograd's chain of pow, mean, add, rsqrt and products):

        dL/dx = r * (dy - x_hat * mean_i(dy_i * x_hat_i))
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float) -> Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        x_hat = x * r
        ctx.save_for_backward(x_hat, r)
        return x_hat

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x_hat, r = ctx.saved_tensors
        mean = (dy * x_hat).mean(-1, keepdim=True)
        return (dy - x_hat * mean).mul_(r), None


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): y = g * x_hat, x_hat = x / sqrt(mean_i x_i^2 + eps).

    No mean subtraction and no bias (unlike LayerNorm): the rescaling is what pre-norm needs.
    Every norm here feeds a linear map W, and W (g * x_hat) = (W diag g) x_hat, so the blocks call
    :meth:`scale` (x_hat alone) and fold the gain g into the columns of W (:meth:`fold`): the same
    function and the same parameter, one pass over the activations fewer each way.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def scale(self, x: Tensor) -> Tensor:
        """x_hat = x / sqrt(mean_i x_i^2 + eps), without the gain."""
        return _RMSScaleFn.apply(x, self.eps)

    def fold(self, w: Tensor) -> Tensor:
        """W diag g: the weight of a linear map applied after this norm, with the gain folded in."""
        return w * self.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.scale(x) * self.weight


def rope_tables(n_pos: int, head_dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos and sin of the RoPE angles, each [n_pos, head_dim] (the half-width table repeated twice).

    Rotary position embedding (Su et al. 2021), "rotate half" pairing: the feature pairs are
    (i, i + h/2) for i < h/2, with frequency theta_i = base^(-2i/h); at position p the pair is
    turned by the angle p * theta_i. Applied to q and k only, so q_p . k_s depends on p - s alone.
    """
    inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # theta_i, [h/2]
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]  # p * theta_i
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def rotate_half(x: Tensor) -> Tensor:
    """(x_first, x_second) -> (-x_second, x_first) within the last dimension (one head)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+h/2}) of ``x`` [..., T, h] by its position's angle:

        x_i'       = x_i cos(p theta_i) - x_{i+h/2} sin(p theta_i)
        x_{i+h/2}' = x_i sin(p theta_i) + x_{i+h/2} cos(p theta_i)

    i.e. x' = x * cos + rotate_half(x) * sin. The reference form; the blocks compute the same
    thing through :func:`rope_weights` (see there).
    """
    return x * cos + rotate_half(x) * sin


def rotated_rows(w: Tensor, head_dim: int) -> Tensor:
    """P W: the weight whose output is rotate_half of W's output, head by head.

    rotate_half is linear, a signed permutation P of each head's features, so
    rotate_half(W h) = (P W) h: row j of P W is -W[j + h/2] in a head's first half and W[j - h/2]
    in its second."""
    n = w.shape[0]
    half = head_dim // 2
    idx = torch.arange(n, device=w.device).view(n // head_dim, 2, half).flip(1).reshape(-1)
    sign = torch.ones(n // head_dim, 2, half, device=w.device, dtype=w.dtype)
    sign[:, 0] = -1
    return w[idx] * sign.reshape(-1, 1)


def rope_weights(w: Tensor, cos: Tensor, sin: Tensor, head_dim: int) -> Tensor:
    """Per-position projection weights R_p W, [T, rows, d], for a q or k projection W [rows, d].

    RoPE at position p is a linear map, R_p = diag(cos_p) + diag(sin_p) P (:func:`apply_rope`, with
    P = rotate_half), so the rotated projection is R_p (W h_p) = (R_p W) h_p: each position gets its
    own small weight matrix (cos_p * W + sin_p * P W, row by row), and the projection of all
    positions is ONE batched matmul over the T positions, with the FLOPs of the plain projection.
    RoPE then costs no pass over the activations (B x T x 3d); these weights are T x 3d x d.
    Gradients reach W through the per-position weights (autograd sums them over positions).
    """
    reps = w.shape[0] // head_dim
    c = cos.repeat(1, reps).unsqueeze(-1)  # [T, rows, 1]: cos of each row's angle at each position
    s = sin.repeat(1, reps).unsqueeze(-1)
    return w * c + rotated_rows(w, head_dim) * s


def keep_mask(x: Tensor, p: float) -> tuple[Tensor, float]:
    """(keep, scale): keep ~ Bernoulli(1 - p') per element of ``x`` (as x's dtype) and the
    inverted-dropout scale 1 / (1 - p'), so that dropout(x) = x * keep * scale.

    On the CPU, torch's Bernoulli sampler costs about 4 ns an element (more than the rest of a
    block's elementwise work on the same tensor) and runs on one thread. Here one 31-bit integer
    draw (``random_``, uniform on [0, 2^31)) gives two independent 15-bit uniforms: bits 16..30,
    tested as ``bits >= t << 16``, and bits 0..14, ``bits & 0x7FFF >= t``, with t = round(32768 p).
    So p' = t / 32768 (p = 0.1 -> 0.100006) and the scale uses p' exactly. Elsewhere: torch's sampler.
    """
    if x.device.type != "cpu":
        return torch.empty_like(x).bernoulli_(1.0 - p), 1.0 / (1.0 - p)
    t = round(p * 32768)
    n = x.numel()
    half = (n + 1) // 2
    bits = torch.empty(half, dtype=torch.int32, device=x.device).random_()
    keep = torch.empty(2 * half, dtype=x.dtype, device=x.device)
    torch.ge(bits, t << 16, out=keep[:half])
    torch.ge(bits.bitwise_and_(0x7FFF), t, out=keep[half:])
    return keep[:n].view_as(x), 1.0 / (1.0 - t / 32768)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout x * keep / (1 - p) (see :func:`keep_mask`); identity in eval mode."""
    if not training or p <= 0:
        return x
    keep, scale = keep_mask(x, p)
    return x * keep.mul_(scale)


def add_dropout(residual: Tensor, x: Tensor, p: float, training: bool) -> Tensor:
    """residual + dropout(x) as one fused multiply-add, the scale folded in (one pass, not three)."""
    if not training or p <= 0:
        return residual + x
    keep, scale = keep_mask(x, p)
    return torch.addcmul(residual, x, keep, value=scale)


class Block(nn.Module):
    """One pre-norm transformer block:

        x = x + Dropout(Proj(Attention(RoPE(q), RoPE(k), v)))     with (q, k, v) = Wqkv RMSNorm(x)
        x = x + Dropout(W2 (silu(W1 h) * W3 h))                     with h = RMSNorm(x)   (SwiGLU)

    Attention(q, k, v) = softmax(q k^T / sqrt(head_dim) + causal mask) v per head. ``w13`` holds
    W1 (the gate) and W3 (the up projection) stacked in one parameter; no biases (LLaMA-style
    blocks, as DICP's). Dropout is on the residual branches (and on the embeddings, in the model),
    not on the attention probabilities: that would force the unfused attention kernel (about 2x
    the step on the CPU, measured) for a regulariser this 4-epoch regime hardly needs.
    """

    def __init__(self, d: int, n_head: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.d, self.n_head, self.head_dim, self.d_ff = d, n_head, d // n_head, d_ff
        self.dropout = dropout
        self.norm1 = RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm2 = RMSNorm(d)
        self.w13 = nn.Linear(d, 2 * d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d, bias=False)

    def _feed_forward(self, x: Tensor) -> Tensor:
        h = self.norm2.scale(x)
        w13 = self.norm2.fold(self.w13.weight)
        # two matmuls rather than one split in two: the split's backward would concatenate the
        # two halves' gradients into a fresh [.., 2 d_ff] buffer
        gate, up = F.linear(h, w13[: self.d_ff]), F.linear(h, w13[self.d_ff:])
        return add_dropout(x, self.w2(F.silu(gate) * up), self.dropout, self.training)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Every position of ``x`` [B, T, d], causally (position p sees positions <= p).
        ``cos``/``sin`` are the RoPE tables [T, head_dim]."""
        B, T, d = x.shape
        w = self.norm1.fold(self.qkv.weight)  # rows: q (d), k (d), v (d)
        w_pos = torch.cat([rope_weights(w[: 2 * d], cos, sin, self.head_dim), w[2 * d:].expand(T, d, d)], 1)  # [T, 3d, d]
        qkv = torch.bmm(self.norm1.scale(x).transpose(0, 1), w_pos.transpose(1, 2))  # [T, B, 3d]: RoPE'd q, k and v
        q, k, v = qkv.view(T, B, 3, self.n_head, self.head_dim).permute(2, 1, 3, 0, 4)  # [B, H, T, hd] each
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = add_dropout(x, self.proj(a.transpose(1, 2).reshape(B, T, d)), self.dropout, self.training)
        return self._feed_forward(x)

    def forward_last(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """The last position only, [B, d]: the same numbers as ``forward(x)[:, -1]``, computed with
        one query row. Keys and values come from every position; the query row may see them all,
        so no mask is needed. The other rows of the last block feed nothing and are skipped."""
        B, T, d = x.shape
        hd, H = self.head_dim, self.n_head
        h = self.norm1.scale(x)
        w = self.norm1.fold(self.qkv.weight)
        w_q, w_k, w_v = w[:d], w[d: 2 * d], w[2 * d:]
        w_pos = torch.cat([rope_weights(w_k, cos, sin, hd), w_v.expand(T, d, d)], 1)  # [T, 2d, d]
        k, v = torch.bmm(h.transpose(0, 1), w_pos.transpose(1, 2)).view(T, B, 2, H, hd).permute(2, 1, 3, 0, 4)
        q = F.linear(h[:, -1], rope_weights(w_q, cos[-1:], sin[-1:], hd)[0])  # the query row, RoPE'd at position T-1
        a = F.scaled_dot_product_attention(q.view(B, H, 1, hd), k, v)  # [B, H, 1, hd]
        x_last = add_dropout(x[:, -1], self.proj(a.reshape(B, d)), self.dropout, self.training)
        return self._feed_forward(x_last)


class ADTransformer(nn.Module):
    """AD (``cfg.model == "ad"``), CompressedAD (``"compressed"``) or its random-marker control
    (``"random_markers"``, the same network: only the marker positions differ, in the data).

    ``forward(transitions [B, L, 6] long, query [B, 2] long, start=None, end=None) -> logits [B, A]``
    with L from 0 to ``n_transit - 1``; ``start``/``end`` bool [B, L] say where the two marker
    vectors are ADDED to the transition tokens (ignored by model "ad", which has no such vectors;
    None = no markers, e.g. at inference without a marker rule).
    """

    def __init__(self, cfg: ADConfig, num_states: int = 81, num_actions: int = 5, grid: int = 9) -> None:
        super().__init__()
        if num_states != grid * grid:
            raise BadInput(f"num_states={num_states} must be grid*grid={grid * grid} (state id = grid*x + y)")
        d = cfg.tf_n_embd
        self.cfg, self.num_states, self.num_actions, self.grid = cfg, num_states, num_actions, grid
        self.max_context = cfg.n_transit - 1
        self.embed_transition = nn.Linear(2 + num_actions + 1 + 2, d)  # DICP's Linear(10 -> d)
        self.embed_query = nn.Embedding(num_states, d)
        self.has_markers = cfg.model in ("compressed", "random_markers")
        if self.has_markers:
            self.start_marker = nn.Parameter(torch.randn(d) * 0.02)  # N(0, 0.02) as the guide
            self.end_marker = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.tf_n_head, cfg.tf_dim_feedforward, cfg.tf_dropout) for _ in range(cfg.tf_n_layer))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, num_actions)
        self.head_dim = d // cfg.tf_n_head
        self.register_buffer("_field_index", torch.tensor(TRANSITION_FIELDS), persistent=False)
        self._rope: dict[tuple, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ tokens
    def embed_transitions(self, transitions: Tensor) -> Tensor:
        """Linear(10 -> d) on concat(s, one-hot a, r, s') without building the one-hot:

            W [s; e_a; r; s'] + b = W_c [s; r; s'] + W_a e_a + b = W_c c + W[:, 2 + a] + b

        where W_c are the 5 columns of W that multiply numbers (s, r, s') and W_a the 5 columns that
        multiply the one-hot; W_a e_a is column a of W_a, i.e. a row lookup in W_a^T. The same
        function and the same parameter (``embed_transition``, DICP's Linear(10, d)), without
        allocating, multiplying and back-propagating through a [B, L, 10] tensor that is half zeros.
        """
        w = self.embed_transition.weight  # [d, 10]
        cont = transitions.index_select(-1, self._field_index).to(w.dtype)  # (x, y, r, x', y')
        w_c = w[:, list(CONTINUOUS_COLUMNS)]
        w_a = w[:, ACTION_COLUMNS].t()  # [A, d]: row a = W_a e_a
        return F.linear(cont, w_c, self.embed_transition.bias) + F.embedding(transitions[..., 2], w_a)

    def embed(self, transitions: Tensor, query: Tensor, start: Tensor | None = None, end: Tensor | None = None) -> Tensor:
        """The token sequence [B, L + 1, d]: transition tokens (plus markers), then the query."""
        L = transitions.shape[1]
        q = self.embed_query(query[:, 0] * self.grid + query[:, 1]).unsqueeze(1)  # state id = grid*x + y
        if L == 0:
            return q
        ctx = self.embed_transitions(transitions)
        if self.has_markers:
            # the markers are ADDED to the token where a segment starts / first step after one ends
            if start is not None:
                ctx = ctx + start.unsqueeze(-1).to(ctx.dtype) * self.start_marker
            if end is not None:
                ctx = ctx + end.unsqueeze(-1).to(ctx.dtype) * self.end_marker
        return torch.cat([ctx, q], dim=1)

    def rope(self, n_pos: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (n_pos, str(device), dtype)
        if key not in self._rope:
            self._rope[key] = rope_tables(n_pos, self.head_dim, device, dtype)
        return self._rope[key]

    # ------------------------------------------------------------------ forward
    def hidden(self, transitions: Tensor, query: Tensor, start: Tensor | None = None, end: Tensor | None = None) -> Tensor:
        """The final-normed hidden state at EVERY position [B, L + 1, d] (all blocks computed in
        full): for inspection and tests (causality); training and acting use :meth:`forward`."""
        x = dropout(self.embed(transitions, query, start, end), self.cfg.tf_dropout, self.training)
        cos, sin = self.rope(x.shape[1], x.device, x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def forward(self, transitions: Tensor, query: Tensor, start: Tensor | None = None, end: Tensor | None = None) -> Tensor:
        """Logits of the next action at the query position, [B, num_actions]."""
        if transitions.dim() != 3 or transitions.shape[-1] != 6 or transitions.shape[1] > self.max_context:
            raise BadInput(f"transitions of shape {tuple(transitions.shape)}: [B, L, 6] with L <= {self.max_context} is allowed")
        x = dropout(self.embed(transitions, query, start, end), self.cfg.tf_dropout, self.training)
        cos, sin = self.rope(x.shape[1], x.device, x.dtype)
        for block in self.blocks[:-1]:
            x = block(x, cos, sin)
        h = self.blocks[-1].forward_last(x, cos, sin)
        return F.linear(self.norm.scale(h), self.norm.fold(self.head.weight), self.head.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def flops_per_window(cfg: ADConfig, L: int | None = None, last_row_only: bool = True, num_actions: int = 5) -> float:
    """Forward FLOPs (2 per multiply-add) of one window of ``L`` transitions + the query; causal
    attention counted at half the square (what a fused causal kernel needs). ``last_row_only``:
    the last block computes the query row only (as :meth:`ADTransformer.forward`)."""
    L = cfg.n_transit - 1 if L is None else L
    T, d, f, n = L + 1, cfg.tf_n_embd, cfg.tf_dim_feedforward, cfg.tf_n_layer
    per_token = 2 * (3 * d * d + d * d + 3 * d * f)  # qkv, proj, SwiGLU (gate, up, down)
    attn_full = 2 * 2 * d * T * (T + 1) / 2  # q.k and a.v over the causal triangle
    full_blocks = (n - 1 if last_row_only else n) * (T * per_token + attn_full)
    last = 0.0
    if last_row_only:
        last = T * 2 * 2 * d * d + 2 * (2 * d * d + 3 * d * f) + 2 * 2 * d * T  # kv of all, q/proj/FF of one row, one row of attention
    embed = 2 * T * 10 * d
    return float(full_blocks + last + embed + 2 * d * num_actions)


__all__ = ["ADTransformer", "Block", "RMSNorm", "apply_rope", "flops_per_window", "rope_tables"]
