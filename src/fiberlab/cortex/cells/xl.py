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

Memory: plain X stores inputs (``mem [B, mem_len, H]``) and ``mem_valid [B, mem_len]`` (1 = a real
entry; zero at init, so ``init_state`` is all zeros). With ``axonify`` ("X^") the q/k/v projections are
AxonLayers, which carry state: re-running one over stored inputs would depend on where the replay
starts, so X^ stores each step's keys and values (``k_mem``, ``v_mem``) computed once, when the step
arrived. Memory after a call = the last ``mem_len`` entries of [memory; x]; entries from before the
last reset are marked invalid (``mem_valid`` 0) and masked out exactly (softmax weight 0), but keep
their values: zeroing them would rewrite rows that earlier states share in step mode (below);
``reset_state`` still zeroes everything. Memory is not detached here (gradient flows through it
within a call); the trainer detaches between segments.

Step mode (one step, ``x [B, H]`` or ``[B, 1, H]``; how a rollout acts): re-projecting the whole
memory to keys and values at every step cost ``2 (M+1) H^2`` multiply-adds per row (0.02x an
``nn.LSTMCell`` step at B=64, H=M=128). A step now projects only its own input, and touches the
memory in two passes with the key and value weights moved to the query side (exact: the same sums,
associated differently, since k_j = W_k m_j and v_j = W_v m_j)::

    (q + u)_h . k_j,h = (W_k,h^T (q + u)_h) . m_j          sum_j a_hj v_j,h = W_v,h (sum_j a_hj m_j)

So keys and values need no cache: the state stays ``mem`` + ``mem_valid`` (no bigger than before,
the same keys), and every step uses the current weights, exactly as sequence mode (training) does.
A cache of projected keys would instead hold keys made by the weights of the step that stored
them: after an optimizer update, acting would score old entries with old keys while training
re-projects them, so PPO's first-epoch ratio would no longer be 1 on those steps.
Position terms: in step mode memory slot j is always ``M - j`` steps back, so ``R_{M-j}`` is one
table for all rows and steps. It and ``W_k`` (with u, v and the 1/sqrt(d) folded in) depend only on
weights, so they are kept on the module, not in the state, and rebuilt when a weight changes (see
``_step_weights``, which also keeps the q, v and o projections' weights transposed). The window
itself is updated in place (``kernels/window.py``: the new input is written into a row no existing
state covers, so a step writes one row instead of copying M), which is why invalid entries are not
zeroed. In rollouts (float32 on a CPU, no autograd) the mask, both window products and the softmax
run as one compiled C pass over the window (``kernels/xl_window.py``), which reads it from memory
once instead of twice. X^ keeps the sequence path for one step (its stored keys are not linear in
``mem``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pydantic import Field
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.cells.axonify import project, projection, projection_states
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.kernels.segment_conv import segment_ids
from fiberlab.cortex.kernels.shapes import check_state, sequence_input
from fiberlab.cortex.kernels.step_tables import StepTables
from fiberlab.cortex.kernels.window import append_row
from fiberlab.cortex.kernels.xl_window import attend


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


class StepWeights(NamedTuple):
    """X's step-mode tables, made from its parameters (``XLCell._step_weights``)."""

    keys: torch.Tensor  # K = s [W_k,h | R_{M-j},h], [NH, d, H + M+1]
    bias: torch.Tensor  # s [u_h W_k,h | v_h . R_{M-j},h], [NH, 1, H + M+1]
    wq_t: torch.Tensor  # W_q^T, [H, H]
    wv_t: torch.Tensor  # W_v,h^T per head, [NH, H, d]
    wo_t: torch.Tensor  # W_o^T, [H, H]


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
        self._step_tables = StepTables()  # step mode's weight tables (see _step_weights; not state, not saved)

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
        if T == 1 and not self.cfg.axonify:
            y1, new_state = self._step(x[:, 0], state, None if resets is None else resets[:, 0])
            return (y1 if single else y1.unsqueeze(1)), new_state

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
        for key, full in entries.items():
            new_state[key] = full[:, T:]  # invalid entries keep their values (masked; see the module docstring)
        new_state["mem_valid"] = keep.to(x.dtype)
        return (y[:, 0] if single else y), new_state

    def _step(self, x: torch.Tensor, state: State, resets: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """One step of plain X, ``x [B, H]``: the sequence-mode math for T = 1, W_k moved to the query side.

        Window w = [mem; x] (slots 0..M; slot j is ``M - j`` steps back, so all are within
        ``mem_len``); visible = valid memory not cut off by a reset at this step, and the step itself.
        Per head h, with s = 1/sqrt(d)::

            logit_j = q_h . K_h[:, j] + b_h[j]                  K_h = s [W_k,h | R_{M-j},h]   ([d, H + M+1])
                    = (s W_k,h^T (q+u)_h) . w_j + s (q+v)_h . R_{M-j},h     b_h = s [u_h W_k,h | v_h R_{M-j},h]
            out_h   = W_v,h (sum_j softmax(logit)_j w_j)

        A hidden slot gets ``finfo.min`` added to its logit instead of being set to -inf: its softmax
        weight is still exactly 0 (exp underflows; the step's own slot is always visible, so the max
        is a real logit), and the mask stays in float tensors, with ``out=`` and ``alpha=`` instead of
        boolean temporaries (~20 us per operation on this CPU). Why this shape at all: the two products
        with the window (``[NH, H] x [H, M+1]`` and back, per row) read the whole memory and take most
        of the time; the rest works on ``[.., NH, d]``, ``[.., NH, H]`` or ``[.., NH, M+1]``. In
        rollouts the mask, the two products and the softmax are one compiled C pass instead
        (``kernels/xl_window.py``; it reads the window once, and the step runs 1.8x faster).
        """
        B, H = x.shape
        NH, d, M = self.n_heads, self.head_dim, self.mem_len
        window, next_mem = append_row(state["mem"], x, slack=M)  # [B, M+1, H]; next_mem = window[:, 1:]
        tables = self._step_weights(x)
        q = torch.mm(x, tables.wq_t).view(B, NH, d).transpose(0, 1)  # q_proj, [NH, B, d]
        qk_pos = torch.baddbmm(tables.bias, q, tables.keys)  # [NH, B, H + M+1]: s W_k^T (q+u) | s (q+v) . R

        fused = attend(window, qk_pos, state["mem_valid"], resets)  # the block below as one C pass (rollouts)
        if fused is not None:
            mixed, new_valid = fused
        else:
            hidden = torch.empty(B, M + 1, dtype=x.dtype, device=x.device)  # 1 = not visible; the last slot is the step
            torch.le(state["mem_valid"].detach(), 0.5, out=hidden[:, :M])  # a mask: no gradient either way
            hidden[:, M] = 0.0
            if resets is not None:  # a reset at this step hides the whole memory
                hidden[:, :M].masked_fill_(resets.unsqueeze(1), 1.0)
            position = torch.add(qk_pos[..., H:], hidden, alpha=torch.finfo(x.dtype).min)  # + finfo.min where hidden
            logits = torch.baddbmm(position.transpose(0, 1), qk_pos[..., :H].transpose(0, 1), window.transpose(1, 2))  # [B, NH, M+1]
            mixed = torch.bmm(torch.softmax(logits, dim=-1), window)  # sum_j a_hj w_j, [B, NH, H]
            new_valid = torch.eq(hidden[:, 1:], 0.0, out=torch.empty_like(state["mem_valid"]))
        heads = torch.bmm(mixed.transpose(0, 1), tables.wv_t)  # W_v,h mixed_h, [NH, B, d]
        y = torch.mm(heads.transpose(0, 1).reshape(B, H), tables.wo_t)  # o_proj
        return y, {"mem": next_mem, "mem_valid": new_valid}

    def _step_weights(self, x: torch.Tensor) -> StepWeights:
        """The step's weight tables (:class:`StepWeights`), kept while the parameters are unchanged.

        They depend only on parameters. Rebuilding the key-side tables (``R`` alone is an
        ``[M+1, H] x [H, H]`` product) cost about a third of an ``nn.LSTMCell`` step at B=64, and the
        projections' weights, stored transposed and contiguous, make their products plain ``mm``/``bmm``
        calls: after the window pass has streamed 4 MB through the caches, ``nn.Linear`` on a reshaped
        input and a ``bmm`` on a transposed weight view took ~100 us where these take ~50
        (:class:`~fiberlab.cortex.kernels.step_tables.StepTables`). Parameters are read through
        ``_parameters``: ``nn.Module.__getattr__`` costs ~2 us per name, and this runs every step.
        """
        mods, params = self._modules, self._parameters
        weights = (mods["q_proj"]._parameters["weight"], mods["k_proj"]._parameters["weight"], mods["v_proj"]._parameters["weight"],
                   mods["r_proj"]._parameters["weight"], mods["o_proj"]._parameters["weight"], params["u_bias"], params["v_bias"])
        return self._step_tables.get(weights, lambda: self._build_step_weights(x.dtype, x.device), (x.dtype, x.device))

    def _build_step_weights(self, dtype: torch.dtype, device: torch.device) -> StepWeights:
        M, NH, d, H = self.mem_len, self.n_heads, self.head_dim, self.d_hidden
        distances = torch.arange(M, -1, -1, device=device, dtype=dtype)  # slot j is M - j steps back
        rel = self.r_proj(sinusoids(distances, H)).view(M + 1, NH, d).permute(1, 2, 0)  # R_{M-j}, [NH, d, M+1]
        keys = torch.cat([self.k_proj.weight.view(NH, d, H), rel], dim=-1) / math.sqrt(d)
        u_part = torch.bmm(self.u_bias.unsqueeze(1), keys[..., :H])  # s u_h W_k,h, [NH, 1, H]
        v_part = torch.bmm(self.v_bias.unsqueeze(1), keys[..., H:])  # s v_h . R_{M-j},h, [NH, 1, M+1]
        return StepWeights(keys=keys, bias=torch.cat([u_part, v_part], dim=-1),
                           wq_t=self.q_proj.weight.t().contiguous(),
                           wv_t=self.v_proj.weight.view(NH, d, H).transpose(1, 2).contiguous(),
                           wo_t=self.o_proj.weight.t().contiguous())

    def clear_step_cache(self) -> None:
        """Forget the step tables (only needed after writing a parameter through ``.data``)."""
        self._step_tables.clear()
