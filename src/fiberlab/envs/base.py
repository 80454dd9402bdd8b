"""The one vectorized environment interface every trainer and evaluator talks to.

Why one interface: ALE, mettagrid and popgym batch differently (C++ threads, a multi-agent
simulation, a Python list of gymnasium envs). The trainer only ever sees a batch of ``num_agents``
independent agents that step together, auto-reset in the same step, and report each finished
episode once. Adapters live next to this file, one per library.

Conventions (all adapters):
- ``reset(seed)`` returns observations ``[num_agents, *spec.obs_shape]`` of ``spec.obs_dtype``.
- ``step(actions)`` takes int64 actions ``[num_agents]`` and returns
  ``(obs, rewards, dones, episodes)``: ``rewards`` float32 (what PPO trains on, clipped if the
  adapter clips), ``dones`` bool (terminated or truncated this step; the returned ``obs`` row is
  then already the first observation of the next episode: same-step auto-reset), ``episodes`` a
  list of :class:`EpisodeStats` for the episodes that ended this step.
- Episode returns in :class:`EpisodeStats` are always the UNCLIPPED environment rewards.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about an environment, and what a checkpoint records of it.

    ``obs_scale`` is the divisor applied by the policy's encoder to raw observations (255 for
    Atari pixels, mettagrid's per-feature normalisations per channel, 1 for one-hot vectors):
    observations stay compact (uint8) in rollout buffers and are scaled on the fly.
    """

    name: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int
    feature_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()
    obs_scale: tuple[float, ...] = (1.0,)
    agents_per_env: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("obs_shape", "feature_names", "action_names", "obs_scale"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvSpec:
        d = dict(d)
        for k in ("obs_shape", "feature_names", "action_names", "obs_scale"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class EpisodeStats:
    """One finished episode: unclipped return, length, and the env's own counters (e.g. hearts)."""

    episode_return: float
    length: int
    extras: dict[str, float] = field(default_factory=dict)


class EpisodeTracker:
    """Accumulates per-agent returns and lengths without a Python loop over agents.

    Only agents whose episode ended this step are turned into Python objects.
    """

    def __init__(self, num_agents: int) -> None:
        self.returns = np.zeros(num_agents, dtype=np.float64)
        self.lengths = np.zeros(num_agents, dtype=np.int64)

    def update(self, raw_rewards: np.ndarray, dones: np.ndarray) -> list[EpisodeStats]:
        """Add this step's unclipped rewards; return stats of the episodes that ended."""
        self.returns += raw_rewards
        self.lengths += 1
        if not dones.any():
            return []
        idx = np.flatnonzero(dones)
        out = [EpisodeStats(float(self.returns[i]), int(self.lengths[i])) for i in idx]
        self.returns[idx] = 0.0
        self.lengths[idx] = 0
        return out


class VecEnv:
    """Base class: a batch of ``num_agents`` agents. Subclasses implement reset/step/close."""

    spec: EnvSpec
    num_agents: int

    def reset(self, seed: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[EpisodeStats]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
