"""Generalised Advantage Estimation (Schulman et al. 2016).

With same-step auto-reset, ``dones[:, t]`` says the transition at t ended its episode, so the
next observation belongs to a new episode and must not be bootstrapped:

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}
    R_t     = A_t + V(s_t)        (the value target)

Time-limit truncations are treated as terminal, as CleanRL and PufferLib do.
"""
from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for ``[N, T]`` rollouts; ``next_value`` is V(s_T), shape ``[N]``."""
    N, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    not_done = 1.0 - dones.to(rewards.dtype)
    last = torch.zeros(N, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        v_next = next_value if t == T - 1 else values[:, t + 1]
        delta = rewards[:, t] + gamma * v_next * not_done[:, t] - values[:, t]
        last = delta + gamma * gae_lambda * not_done[:, t] * last
        advantages[:, t] = last
    return advantages, advantages + values
