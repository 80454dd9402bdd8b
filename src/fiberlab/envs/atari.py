"""Atari through ale-py's ``AtariVectorEnv`` (C++ threads: no Python loop over envs).

Preprocessing (documented in docs/environments.md):
- ``obs_mode='puffer'`` (default): PufferLib's 1x105x80 grayscale, the 210x160 screen downscaled
  by 2, ``frame_stack`` frames (1 by default: the LSTM carries history).
- ``obs_mode='84x84'``: the DQN/CleanRL 84x84 grayscale resize.
- frameskip 4 with max-pooling of the last two frames, up to 30 no-ops at reset, FIRE on reset
  where the game needs it, sticky actions off (as PufferLib builds it).
- Rewards are clipped to their sign for training when ``clip_rewards`` (default), but episode
  returns are always summed from the raw rewards: reported scores are real game scores.
"""
from __future__ import annotations

import re

import numpy as np

from fiberlab.config import ConfigError, EnvConfig
from fiberlab.envs.base import EnvSpec, EpisodeStats, EpisodeTracker, VecEnv


def ale_game_id(name: str) -> str:
    """``BeamRider`` or ``beam_rider`` -> ``beam_rider`` (ALE's ROM id)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def ale_games() -> list[str]:
    import ale_py.roms

    return sorted(ale_py.roms.get_all_rom_ids())


class AtariVecEnv(VecEnv):
    """``cfg.num_envs`` copies of one ALE game; ``cfg.name`` is ``atari.<Game>``."""

    def __init__(self, cfg: EnvConfig, seed: int = 0) -> None:
        import ale_py

        game = ale_game_id(cfg.name.split(".", 1)[1])
        if game not in ale_games():
            raise ConfigError(f"unknown Atari game {cfg.name.split('.', 1)[1]!r}: allowed are ALE ROM ids such as {', '.join(ale_games()[:8])}, ...")
        a = cfg.atari
        h, w = (105, 80) if a.obs_mode == "puffer" else (84, 84)
        self.clip_rewards = a.clip_rewards
        self.env = ale_py.AtariVectorEnv(
            game,
            cfg.num_envs,
            num_threads=a.num_threads,
            img_height=h,
            img_width=w,
            grayscale=True,
            stack_num=a.frame_stack,
            frameskip=a.frameskip,
            noop_max=a.noop_max,
            repeat_action_probability=a.repeat_action_probability,
            episodic_life=a.episodic_life,
            max_num_frames_per_episode=a.max_episode_frames,
            reward_clipping=False,  # we clip ourselves so the raw score stays known
            autoreset_mode="SameStep",
        )
        n_actions = int(self.env.single_action_space.n)
        try:
            meanings = tuple(ale_py.env.AtariEnv(game).get_action_meanings())
        except Exception:  # pragma: no cover - names are a nicety
            meanings = tuple(f"a{i}" for i in range(n_actions))
        self.num_agents = cfg.num_envs
        self.spec = EnvSpec(
            name=cfg.name,
            obs_shape=(a.frame_stack, h, w),
            obs_dtype="uint8",
            num_actions=n_actions,
            feature_names=tuple(f"frame{i}" for i in range(a.frame_stack)),
            action_names=meanings,
            obs_scale=(255.0,),
        )
        self.tracker = EpisodeTracker(self.num_agents)
        self._seed = seed

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=self._seed if seed is None else seed)
        self.tracker = EpisodeTracker(self.num_agents)
        return obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[EpisodeStats]]:
        obs, raw, term, trunc, _ = self.env.step(actions.astype(np.int64, copy=False))
        dones = np.logical_or(term, trunc)
        raw = raw.astype(np.float32, copy=False)
        episodes = self.tracker.update(raw, dones)
        reward = np.sign(raw) if self.clip_rewards else raw
        return obs, reward.astype(np.float32, copy=False), dones, episodes

    def close(self) -> None:
        self.env.close()
