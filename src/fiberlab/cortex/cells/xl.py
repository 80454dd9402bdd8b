"""X – Transformer-XL attention cell with a rolling memory of past inputs, ``[.., H] -> [.., H]``.

Keys are the memory (the last ``mem_len`` cell inputs) followed by the current inputs; query i at
relative distance ``delta = i - j`` from key j (delta >= 0) scores (Dai et al. 2019, with u, v biases)::

    logit[i, j] = ((q_i + u) . k_j + (q_i + v) . R_delta) / sqrt(d),   R_delta = r_proj(sinusoid(delta))

and sees key j only if it is valid (memory slots start invalid), not in the future (delta >= 0), in
the same episode (segment id = number of resets so far; a reset hides everything before it, memory
included), and at most ``mem_len`` steps back (delta <= mem_len).

Why the window ``delta <= mem_len``: one step sees exactly the memory plus itself, so a whole-sequence
call must not let later queries see further back than that, or step-by-step acting and sequence
training would disagree (the reference lets them disagree; it tests to 5e-2).

Memory: plain X stores inputs (``mem [B, mem_len, H]``) and re-projects them to keys and values.
With ``axonify`` ("X^") the q/k/v projections are AxonLayers, which carry state: re-running one over
stored inputs would depend on where the replay starts, so X^ stores each step's keys and values
(``k_mem``, ``v_mem``) computed once, when the step arrived. ``mem_valid [B, mem_len]`` (1 = a real
entry) is zero at init, so ``init_state`` is all zeros. Memory after a call = the last ``mem_len``
entries of [memory; x], entries from before the last reset invalid and zeroed. It is not detached here
(gradient flows through it within a call); the trainer detaches between segments.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.cells.axonify import project, projection, projection_states
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.kernels.segment_conv import segment_ids
from fiberlab.cortex.kernels.shapes import check_state, sequence_input


class XLConfig(CellConfig):
    """Transformer-XL cell; ``d_hidden`` must be a multiple of ``n_heads``."""

    n_heads: int = Field(4, ge=1)
    mem_len: int = Field(128, ge=1)
    axonify: bool = False


def sinusoids(distances: torch.Tensor, width: int) -> torch.Tensor:
    """Transformer-XL relative position code: ``[sin(delta w_j), cos(delta w_j)]``, ``w_j = 10000^(-2j/width)``."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, width, 2, device=distances.device, dtype=distances.dtype) / width))
    angles = distances.unsqueeze(-1) * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[..., :width]


class XLCell(MemoryModule):
    """Relative-position multi-head attention over [memory; x]; see the module docstring."""

    def __init__(self, cfg: XLConfig) -> None:
        super().__init__()
        if cfg.d_hidden % cfg.n_heads:
            raise ValueError(f"XLConfig: d_hidden={cfg.d_hidden} must be a multiple of n_heads={cfg.n_heads}")
        self.cfg = cfg
        self.d_hidden = H = cfg.d_hidden
        self.n_heads = NH = cfg.n_heads
        self.head_dim = d = H // NH
        self.mem_len = cfg.mem_len
        self.q_proj = projection(H, H, bias=False, axonify=cfg.axonify)
        self.k_proj = projection(H, H, bias=False, axonify=cfg.axonify)
        self.v_proj = projection(H, H, bias=False, axonify=cfg.axonify)
        self.r_proj = nn.Linear(H, H, bias=False)
        self.o_proj = nn.Linear(H, H, bias=False)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.r_proj, self.o_proj):
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
        self.u_bias = nn.Parameter(torch.zeros(NH, d))  # content bias u
        self.v_bias = nn.Parameter(torch.zeros(NH, d))  # position bias v

    def _stateful(self) -> dict[str, nn.Module]:
        return {"q_axon": self.q_proj, "k_axon": self.k_proj, "v_axon": self.v_proj}

    def _memory_keys(self) -> tuple[str, ...]:
        return ("k_mem", "v_mem") if self.cfg.axonify else ("mem",)

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        state = {key: torch.zeros(batch, self.mem_len, self.d_hidden, device=device, dtype=dtype) for key in self._memory_keys()}
        state["mem_valid"] = torch.zeros(batch, self.mem_len, device=device, dtype=dtype)
        state.update(projection_states(self._stateful(), batch, device, dtype))
        return state

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x, resets, single = sequence_input(x, resets, self.d_hidden, "XLCell")
        B, T, H = x.shape
        NH, d, M = self.n_heads, self.head_dim, self.mem_len
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        check_state(state, {key: (B, M, H) for key in self._memory_keys()} | {"mem_valid": (B, M)}, "XLCell")

        new_state: State = {}
        q = project(self.q_proj, x, state, "q_axon", resets, new_state)
        if self.cfg.axonify:  # stored keys/values + this call's (the Axon state runs on, step by step)
            k = torch.cat([state["k_mem"], project(self.k_proj, x, state, "k_axon", resets, new_state)], dim=1)
            v = torch.cat([state["v_mem"], project(self.v_proj, x, state, "v_axon", resets, new_state)], dim=1)
            entries = {"k_mem": k, "v_mem": v}
        else:  # stored inputs are projected again
            x_all = torch.cat([state["mem"], x], dim=1)
            k, v = self.k_proj(x_all), self.v_proj(x_all)
            entries = {"mem": x_all}

        # visibility of key j (memory slots 0..M-1, then x) to query i: delta = (i + M) - j
        seg_q = segment_ids(resets, B, T, x.device)  # [B, T]
        seg_k = torch.cat([segment_ids(None, B, M, x.device), seg_q], dim=1)  # memory is segment 0
        valid_k = torch.cat([state["mem_valid"] > 0.5, torch.ones(B, T, dtype=torch.bool, device=x.device)], dim=1)
        delta = torch.arange(T, device=x.device).unsqueeze(1) + M - torch.arange(M + T, device=x.device)  # [T, M+T]
        window = (delta >= 0) & (delta <= M)  # causal, at most mem_len back
        visible = window & valid_k.unsqueeze(1) & (seg_q.unsqueeze(2) == seg_k.unsqueeze(1))  # [B, T, M+T]

        q = q.reshape(B, T, NH, d).transpose(1, 2)  # [B, NH, T, d]
        k = k.reshape(B, M + T, NH, d).transpose(1, 2)
        v = v.reshape(B, M + T, NH, d).transpose(1, 2)
        R = self.r_proj(sinusoids(torch.arange(M + 1, device=x.device, dtype=x.dtype), H)).view(M + 1, NH, d).transpose(0, 1)
        content = (q + self.u_bias.unsqueeze(1)) @ k.transpose(-1, -2)  # (q_i + u) . k_j
        position = (q + self.v_bias.unsqueeze(1)) @ R.transpose(-1, -2)  # (q_i + v) . R_delta, [B, NH, T, M+1]
        position = position.gather(-1, delta.clamp(0, M).expand(B, NH, T, M + T))  # pick R_{delta(i, j)}
        logits = (content + position) / math.sqrt(d)
        logits = logits.masked_fill(~visible.unsqueeze(1), float("-inf"))  # a query always sees itself
        attn = torch.softmax(logits, dim=-1) @ v  # [B, NH, T, d]
        y = self.o_proj(attn.transpose(1, 2).reshape(B, T, H))

        # rolling memory: the last M entries, valid iff valid and in the episode of the last step
        keep = (valid_k & (seg_k == seg_q[:, -1:]))[:, T:]
        keep_f = keep.to(x.dtype)
        for key, full in entries.items():
            new_state[key] = full[:, T:] * keep_f.unsqueeze(-1)
        new_state["mem_valid"] = keep_f
        return (y[:, 0] if single else y), new_state
