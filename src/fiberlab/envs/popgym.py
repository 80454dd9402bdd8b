"""popgym memory tasks (Morad et al., ICLR 2023) as one batch.

popgym has no vector API, so the batch is a list of gymnasium envs stepped in one tight loop;
observations are flattened to a float32 vector (Discrete -> one-hot, MultiDiscrete -> one-hot
per entry, Box -> flattened) so every popgym task fits the ``mlp_lstm`` policy.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from fiberlab.config import ConfigError, EnvConfig
from fiberlab.envs.base import EnvSpec, EpisodeStats, EpisodeTracker, VecEnv


def popgym_env_names() -> list[str]:
    """All popgym environment class names (e.g. ``RepeatPreviousEasy``)."""
    import popgym.envs

    return sorted(e["id"].split("popgym-", 1)[1].rsplit("-v", 1)[0] for e in popgym.envs.ALL.values())


def _make_one(env_name: str) -> gym.Env:
    import popgym.envs

    for cls, info in popgym.envs.ALL.items():
        if info["id"] == f"popgym-{env_name}-v0":
            return cls()
    raise ConfigError(f"unknown popgym env {env_name!r}: allowed are {', '.join(popgym_env_names())}")


class _Flattener:
    """Maps one observation of a (nested) gymnasium space to a flat float32 vector."""

    def __init__(self, space: gym.Space) -> None:
        self.space = space
        self.size = self._size(space)

    def _size(self, space: gym.Space) -> int:
        if isinstance(space, gym.spaces.Discrete):
            return int(space.n)
        if isinstance(space, gym.spaces.MultiDiscrete):
            return int(np.sum(space.nvec))
        if isinstance(space, gym.spaces.MultiBinary):
            return int(np.prod(space.shape))
        if isinstance(space, gym.spaces.Box):
            return int(np.prod(space.shape))
        if isinstance(space, gym.spaces.Tuple):
            return sum(self._size(s) for s in space.spaces)
        raise ValueError(f"unsupported observation space {space}")

    def write(self, obs: object, out: np.ndarray, space: gym.Space | None = None) -> int:
        """Write ``obs`` into ``out`` (already zeroed); return the number of entries used."""
        space = self.space if space is None else space
        if isinstance(space, gym.spaces.Discrete):
            out[int(obs) - int(space.start)] = 1.0
            return int(space.n)
        if isinstance(space, gym.spaces.MultiDiscrete):
            offsets = np.concatenate([[0], np.cumsum(space.nvec.ravel())[:-1]])
            out[offsets + np.asarray(obs).ravel()] = 1.0
            return int(np.sum(space.nvec))
        if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)):
            flat = np.asarray(obs, dtype=np.float32).ravel()
            out[: flat.size] = flat
            return flat.size
        used = 0
        for sub_obs, sub_space in zip(obs, space.spaces):  # Tuple
            used += self.write(sub_obs, out[used:], sub_space)
        return used


class PopgymVecEnv(VecEnv):
    """``num_envs`` copies of one popgym task; ``cfg.name`` is ``popgym.<EnvName>``."""

    def __init__(self, cfg: EnvConfig, seed: int = 0) -> None:
        env_name = cfg.name.split(".", 1)[1]
        self.envs = [_make_one(env_name) for _ in range(cfg.num_envs)]
        space = self.envs[0].action_space
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(f"popgym env {env_name!r} has action space {space}: only Discrete actions are supported")
        self.flat = _Flattener(self.envs[0].observation_space)
        self.num_agents = cfg.num_envs
        self.spec = EnvSpec(
            name=cfg.name,
            obs_shape=(self.flat.size,),
            obs_dtype="float32",
            num_actions=int(space.n),
            feature_names=tuple(f"x{i}" for i in range(self.flat.size)),
            action_names=tuple(f"a{i}" for i in range(int(space.n))),
        )
        self._obs = np.zeros((self.num_agents, self.flat.size), dtype=np.float32)
        self._rew = np.zeros(self.num_agents, dtype=np.float32)
        self._done = np.zeros(self.num_agents, dtype=bool)
        self.tracker = EpisodeTracker(self.num_agents)
        self._seed = seed

    def reset(self, seed: int | None = None) -> np.ndarray:
        seed = self._seed if seed is None else seed
        self._obs[:] = 0.0
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=seed + i)
            self.flat.write(obs, self._obs[i])
        self.tracker = EpisodeTracker(self.num_agents)
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[EpisodeStats]]:
        obs_buf, rew, done = self._obs, self._rew, self._done
        obs_buf[:] = 0.0
        for i, (env, a) in enumerate(zip(self.envs, actions.tolist())):
            obs, r, term, trunc, _ = env.step(a)
            rew[i] = r
            done[i] = term or trunc
            if done[i]:
                obs, _ = env.reset()
            self.flat.write(obs, obs_buf[i])
        episodes = self.tracker.update(rew, done)
        return obs_buf.copy(), rew.copy(), done.copy(), episodes

    def close(self) -> None:
        for env in self.envs:
            env.close()
