"""Rollout storage and collection for truncated BPTT.

Buffers are allocated once per run as ``[num_agents, bptt_horizon, ...]`` (segment-major, so a
minibatch is a set of whole rows). The recurrent state carried into step 0 of each segment is
stored (detached, before step 0's reset): it is the segment's initial state in training when
``trainer.pass_state``.

Resets have one contract, the cores' (``forward(x, state, resets=...)``): ``starts[:, t]`` says "an
episode starts at step t: zero the state before it", and the same mask is passed when acting
(``policy.step``) and when training (``policy.forward``), so training replays what acting saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fiberlab.cortex.base import map_state
from fiberlab.envs.base import EpisodeStats, VecEnv
from fiberlab.policies.cores import State
from fiberlab.rl.precision import autocast, run_precision
from fiberlab.rl.sampling import sample_actions


def copy_state_(dst: State, src: State) -> None:
    """Copy a (nested) state into the preallocated buffers of ``dst``, key by key."""
    for k, v in src.items():
        if isinstance(v, dict):
            copy_state_(dst[k], v)
        else:
            dst[k].copy_(v)


@dataclass
class Rollout:
    obs: torch.Tensor  # [N, T, *obs_shape]
    actions: torch.Tensor  # [N, T] int64
    logprobs: torch.Tensor  # [N, T]
    values: torch.Tensor  # [N, T]
    rewards: torch.Tensor  # [N, T]
    dones: torch.Tensor  # [N, T] bool: episode ended after this step
    starts: torch.Tensor  # [N, T] bool: this step is an episode's first (the resets acting used)
    initial_state: State  # state carried into step 0, before its reset (nested dict for a cortex core)

    def training_resets(self, in_segment: bool = True) -> torch.Tensor:
        """The ``resets`` mask the PPO forward pass uses: ``starts`` itself, or, with
        ``in_segment=False`` (``trainer.reset_in_training=false``, an ablation), only the resets at
        the segments' first step, so the stored state is still cleared where an episode began."""
        if in_segment:
            return self.starts
        resets = torch.zeros_like(self.starts)
        resets[:, 0] = self.starts[:, 0]
        return resets

    @classmethod
    def allocate(cls, n: int, t: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype, state: State, device: torch.device) -> "Rollout":
        f = dict(device=device)
        return cls(
            obs=torch.zeros((n, t, *obs_shape), dtype=obs_dtype, **f),
            actions=torch.zeros((n, t), dtype=torch.int64, **f),
            logprobs=torch.zeros((n, t), **f),
            values=torch.zeros((n, t), **f),
            rewards=torch.zeros((n, t), **f),
            dones=torch.zeros((n, t), dtype=torch.bool, **f),
            starts=torch.zeros((n, t), dtype=torch.bool, **f),
            initial_state=map_state(state, torch.zeros_like),
        )


class RolloutCollector:
    """Steps the policy and env ``bptt_horizon`` times, carrying obs and state across calls.

    ``precision`` is ``trainer.precision`` (default ``auto``, as the trainer's): acting runs in what
    it resolves to, and ``ppo_update`` resolves the same setting the same way (``rl/precision.py``).
    """

    def __init__(self, env: VecEnv, policy: torch.nn.Module, horizon: int, device: torch.device, seed: int, precision: str = "auto") -> None:
        self.env, self.policy, self.horizon, self.device = env, policy, horizon, device
        self.precision = run_precision(precision, policy, device)  # the update resolves it the same way
        n = env.num_agents
        obs = env.reset(seed)
        self.obs = torch.as_tensor(obs).to(device)
        self.start = torch.ones(n, dtype=torch.bool, device=device)  # first step of the run
        self.state = policy.init_state(n, device)
        dtype = self.obs.dtype
        self.buf = Rollout.allocate(n, horizon, tuple(env.spec.obs_shape), dtype, self.state, device)

    @torch.inference_mode()
    def collect(self, generator: torch.Generator | None = None) -> tuple[Rollout, torch.Tensor, list[EpisodeStats], int]:
        """Fill the buffer; return it, V(s_T) for bootstrapping, finished episodes, agent steps."""
        # acting in the precision the update will use (fiberlab.rl.precision). Autocast keeps no
        # cast weights under inference_mode; no_grad would, but measured no faster on arena (the
        # big weight, the first conv's, is kept in bf16 by PatchConv2d itself)
        with autocast(self.precision, self.device):
            return self._collect(generator)

    def _collect(self, generator: torch.Generator | None) -> tuple[Rollout, torch.Tensor, list[EpisodeStats], int]:
        buf, episodes = self.buf, []
        for t in range(self.horizon):
            if t == 0:
                copy_state_(buf.initial_state, self.state)
            buf.obs[:, t] = self.obs
            buf.starts[:, t] = self.start
            logits, value, self.state = self.policy.step(self.obs, self.state, resets=self.start)
            action, _ = sample_actions(logits, generator, buf.actions[:, t], buf.logprobs[:, t])  # rl/sampling.py
            buf.values[:, t] = value
            obs, reward, done, finished = self.env.step(action.cpu().numpy())
            episodes += finished
            self.obs = torch.as_tensor(obs).to(self.device, non_blocking=True)
            buf.rewards[:, t] = torch.as_tensor(reward).to(self.device)
            done_t = torch.as_tensor(done).to(self.device)
            buf.dones[:, t] = done_t
            self.start = done_t
        _, next_value, _ = self.policy.step(self.obs, self.state, resets=self.start)
        return buf, next_value, episodes, self.env.num_agents * self.horizon
