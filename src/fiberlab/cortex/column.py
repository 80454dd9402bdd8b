"""Column: a mixture of E expert blocks reading the same input (spec section 3).

With one expert the column IS that expert (no norm, no router), so ``"L"`` costs nothing extra.
With E > 1, each expert proposes a change of the normalised input and a router mixes the changes:

    u   = RMSNorm(x);  Δ_i = Expert_i(u) - u                        Δ: [B, T, E, H]
    mixer (attention across the E axis, per token):
        Q_i = W_q u + q_bias_i,  K = W_k Δ,  V = W_v Δ;  Δ~ = Δ + W_out softmax(Q K^T / sqrt(d_k)) V
    router: global prior  z = (W_k' keys)(W_q' context) / sqrt(d_key) / temperature  (optionally top-k)
            per-token     p = (W_tok u) · k_loc / (τ_loc sqrt(d_loc)), centred over experts
            α_t = softmax(z + λ p)
    r   = Σ_i α_i Δ~_i + (u - x);   out = x + α_main r + α_col ρ(r),  ρ = Linear(H,2H)-GELU-Linear(2H,H)

At init W_out = 0 and context = 0, so Δ~ = Δ and α is uniform up to the refiner's λ-scaled term:
x + r = Σ α_i Expert_i(u), the experts' average. The mixer's W_q, W_k, W_v, q_bias and the prior's
W_k', W_q', keys get zero gradient until W_out and context move (by design).
"""
from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator
from torch import nn

# the block modules register their configs (needed to rebuild a column from JSON)
from fiberlab.cortex.blocks import adapter, passthrough, postup, postup_gated, preup  # noqa: F401
from fiberlab.cortex.base import MemoryModule, State, as_sequence
from fiberlab.cortex.config import CortexConfig, same_width
from fiberlab.cortex.registry import TaggedBlock, build_block


class RouterConfig(CortexConfig):
    """The router and E-axis mixer of a column with several experts (unused when E = 1)."""

    d_key: int = Field(32, ge=1)  # global prior key width
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)  # keep the k largest prior logits (others -inf); None: all
    d_local: int = Field(32, ge=1)  # per-token refiner width
    tau_local: float = Field(1.0, gt=0)
    lambda_local: float = 0.1  # λ: weight of the per-token refiner
    d_mixer: int = Field(32, ge=1)  # d_k of the E-axis mixer
    mixer_init: float = Field(1e-3, ge=0)  # W_q, W_k, W_v, q_bias ~ U(±mixer_init)
    alpha_init: float = 1.0  # α_main and α_col at init


class ColumnConfig(CortexConfig):
    experts: list[TaggedBlock]
    router: RouterConfig = Field(default_factory=RouterConfig)

    @field_validator("experts")
    @classmethod
    def _same_width(cls, experts: list) -> list:
        return same_width(experts, "expert", "column")

    @property
    def d_hidden(self) -> int:
        return self.experts[0].d_hidden


class ExpertMixer(nn.Module):
    """Δ~ = Δ + W_out softmax(Q K^T / sqrt(d_k)) V, attention across experts at each token."""

    def __init__(self, width: int, n_experts: int, d_k: int, init: float) -> None:
        super().__init__()
        self.d_k = d_k
        self.w_q = nn.Linear(width, d_k, bias=False)
        self.w_k = nn.Linear(width, d_k, bias=False)
        self.w_v = nn.Linear(width, d_k, bias=False)
        self.q_bias = nn.Parameter(torch.empty(n_experts, d_k))
        self.w_out = nn.Linear(d_k, width, bias=False)
        for p in (self.w_q.weight, self.w_k.weight, self.w_v.weight, self.q_bias):
            nn.init.uniform_(p, -init, init)
        nn.init.zeros_(self.w_out.weight)

    def forward(self, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        q = self.w_q(u).unsqueeze(-2) + self.q_bias  # Q_i = W_q u + q_bias_i      [B,T,E,d_k]
        k, v = self.w_k(delta), self.w_v(delta)  # K = W_k Δ, V = W_v Δ            [B,T,E,d_k]
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_k), dim=-1)  # [B,T,E,E]
        return delta + self.w_out(attn @ v)


class Router(nn.Module):
    """α_t = softmax(z + λ p): a learned global prior over experts refined per token."""

    def __init__(self, width: int, n_experts: int, cfg: RouterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.keys = nn.Parameter(torch.randn(n_experts, cfg.d_key) / math.sqrt(cfg.d_key))
        self.context = nn.Parameter(torch.zeros(cfg.d_key))  # zero: uniform prior at init
        self.w_k = nn.Linear(cfg.d_key, cfg.d_key, bias=False)
        self.w_q = nn.Linear(cfg.d_key, cfg.d_key, bias=False)
        self.w_tok = nn.Linear(width, cfg.d_local, bias=False)
        self.k_loc = nn.Parameter(torch.randn(n_experts, cfg.d_local) / math.sqrt(cfg.d_local))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        z = self.w_k(self.keys) @ self.w_q(self.context) / math.sqrt(cfg.d_key) / cfg.temperature  # [E]
        if cfg.top_k is not None and cfg.top_k < z.shape[0]:
            kth = z.topk(cfg.top_k).values[-1]
            z = z.masked_fill(z < kth, float("-inf"))  # keep the top-k prior logits
        p = self.w_tok(u) @ self.k_loc.T / (cfg.tau_local * math.sqrt(cfg.d_local))  # [B,T,E]
        p = p - p.mean(-1, keepdim=True)  # centred over experts
        return torch.softmax(z + cfg.lambda_local * p, dim=-1)


class Column(MemoryModule):
    """E expert blocks; state ``{"expert_0": ..., "expert_1": ...}``."""

    def __init__(self, cfg: ColumnConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_hidden = h = cfg.d_hidden
        self.experts = nn.ModuleList(build_block(e) for e in cfg.experts)
        n = len(self.experts)
        if n > 1:
            r = cfg.router
            self.norm = nn.RMSNorm(h)
            self.mixer = ExpertMixer(h, n, r.d_mixer, r.mixer_init)
            self.router = Router(h, n, r)
            self.alpha_main = nn.Parameter(torch.tensor(float(r.alpha_init)))
            self.alpha_col = nn.Parameter(torch.tensor(float(r.alpha_init)))
            self.rho = nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), nn.Linear(2 * h, h))

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return {f"expert_{i}": e.init_state(batch, device, dtype) for i, e in enumerate(self.experts)}

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        if len(self.experts) == 1:  # E = 1: the expert runs directly on x
            y, s = self.experts[0](x, None if state is None else state["expert_0"], resets=resets)
            return y, {"expert_0": s}
        x, resets, single = as_sequence(x, resets)
        u = self.norm(x)  # u = RMSNorm(x)
        deltas, new_state = [], {}
        for i, expert in enumerate(self.experts):
            y, new_state[f"expert_{i}"] = expert(u, None if state is None else state[f"expert_{i}"], resets=resets)
            deltas.append(y - u)  # Δ_i = Expert_i(u) - u
        delta = self.mixer(u, torch.stack(deltas, dim=-2))  # Δ~  [B,T,E,H]
        alpha = self.router(u)  # α_t  [B,T,E]
        r = (alpha.unsqueeze(-1) * delta).sum(-2) + (u - x)  # r = Σ α_i Δ~_i + (u - x)
        out = x + self.alpha_main * r + self.alpha_col * self.rho(r)  # x + α_main r + α_col ρ(r)
        return (out.squeeze(1) if single else out), new_state
