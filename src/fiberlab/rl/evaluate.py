"""Evaluate a policy: run episodes in a fresh env and summarise their (unclipped) returns."""
from __future__ import annotations

import math

import numpy as np
import torch

from fiberlab.envs.base import VecEnv


@torch.no_grad()
def evaluate(policy: torch.nn.Module, env: VecEnv, episodes: int, device: torch.device | str = "cpu", seed: int = 0, greedy: bool = False, max_steps: int = 10_000_000) -> dict:
    """Run until ``episodes`` episodes finish across the batch; return mean/std return and length.

    All envs run in parallel and the first ``episodes`` to finish are counted, so with fewer envs
    than episodes long episodes are not under-represented by more than one batch's worth.
    """
    gen = torch.Generator().manual_seed(seed)
    obs = torch.as_tensor(env.reset(seed)).to(device)
    state = policy.init_state(env.num_agents, device)
    start = torch.ones(env.num_agents, dtype=torch.bool, device=device)
    finished, steps = [], 0
    while len(finished) < episodes and steps < max_steps:
        state = policy.core.reset_state(state, start)
        logits, _, state = policy.step(obs, state)
        if greedy:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=gen).squeeze(1)
        o, _, done, eps = env.step(action.cpu().numpy())
        finished += eps
        steps += env.num_agents
        obs = torch.as_tensor(o).to(device)
        start = torch.as_tensor(done).to(device)
    finished = finished[:episodes]
    rets = np.array([e.episode_return for e in finished], dtype=np.float64)
    lens = np.array([e.length for e in finished], dtype=np.float64)
    return {
        "episodes": len(finished),
        "mean_return": float(rets.mean()) if len(rets) else math.nan,
        "std_return": float(rets.std()) if len(rets) else math.nan,
        "mean_length": float(lens.mean()) if len(lens) else math.nan,
        "steps": steps,
    }
