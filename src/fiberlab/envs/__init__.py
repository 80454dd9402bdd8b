"""Environments behind one vectorized interface (see :mod:`fiberlab.envs.base`).

``make_vecenv(cfg, seed)`` picks the adapter from the name's family prefix.
"""
from __future__ import annotations

from fiberlab.config import ConfigError, EnvConfig
from fiberlab.envs.base import EnvSpec, EpisodeStats, VecEnv

FAMILIES = ("popgym", "atari", "mettagrid", "darkroom")


def make_vecenv(cfg: EnvConfig, seed: int = 0) -> VecEnv:
    """Build the batch of environments named by ``cfg.name`` (``family.Name``)."""
    family = cfg.name.split(".", 1)[0]
    if "." not in cfg.name or family not in FAMILIES:
        raise ConfigError(f"unknown env {cfg.name!r}: allowed are {', '.join(f + '.<Name>' for f in FAMILIES)}")
    if family == "popgym":
        from fiberlab.envs.popgym import PopgymVecEnv

        return PopgymVecEnv(cfg, seed)
    if family == "atari":
        from fiberlab.envs.atari import AtariVecEnv

        return AtariVecEnv(cfg, seed)
    if family == "darkroom":
        from fiberlab.envs.darkroom import DarkroomVecEnv

        return DarkroomVecEnv(cfg, seed)
    from fiberlab.envs.mettagrid import MettagridVecEnv

    return MettagridVecEnv(cfg, seed)


__all__ = ["EnvSpec", "EpisodeStats", "VecEnv", "make_vecenv"]
