"""mettagrid simulations of one map as one batch of agents behind :class:`~fiberlab.envs.base.VecEnv`.

Why this shape: one native simulation (``mettagrid_c.MettaGrid``, what ``mettagrid.Simulation``
wraps) per environment, each writing straight into a slice of shared buffers (``set_buffers``), so a
step is one native ``step()`` call per simulation and no copying per agent. A simulation whose
episode ended (mettagrid flags every agent at ``max_steps``) is rebuilt in the same step (mettagrid
has no native reset) and its rows already hold the new episode's first observation. What differs
between maps is read from their record in :data:`~fiberlab.envs.mettagrid.maps.MAPS`; the token ->
grid conversion is :class:`~fiberlab.envs.mettagrid.tokens.TokenBox`.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np

from fiberlab.config import ConfigError, EnvConfig
from fiberlab.envs.base import EnvSpec, EpisodeStats, EpisodeTracker, VecEnv
from fiberlab.envs.mettagrid.maps import MAPS
from fiberlab.envs.mettagrid.tokens import EMPTY_TOKEN, TokenBox


class MettagridVecEnv(VecEnv):
    """``cfg.num_envs`` mettagrid simulations of one map, all their agents as one batch.

    ``cfg.name`` is ``mettagrid.<map>`` for a map of :data:`MAPS` (``arena``, ``navigation``,
    ``assembly_lines``); ``num_agents = cfg.num_envs * spec.agents_per_env`` with the agents of
    simulation ``i`` in rows ``i * agents_per_env ...``. Simulation ``i`` starts its first episode
    from seed ``seed + i``; its later episodes (and the assembly-line tasks) come from an RNG seeded
    with ``(seed, i)``, so a seed (>= 0) fixes every episode; ``reset(None)`` reuses the
    constructor's seed.

    Finished episodes report ``extras`` with ``heart`` (hearts gained), ``unique_cells`` (cells
    visited) and, for arena, ``ore_red`` and ``battery_red`` gained. ``sims`` holds the native
    simulations and ``episode_configs`` the ``MettaGridConfig`` of each one's current episode.
    """

    def __init__(self, cfg: EnvConfig, seed: int = 0) -> None:
        family, _, map_name = cfg.name.partition(".")
        if family != "mettagrid" or map_name not in MAPS:
            raise ConfigError(f"unknown mettagrid env {cfg.name!r}: allowed are {', '.join('mettagrid.' + r for r in MAPS)}")
        import mettagrid.config.mettagrid_c_config as c_config
        from mettagrid.mettagrid_c import MettaGrid

        self._c_config, self._MettaGrid = c_config, MettaGrid
        self.map = MAPS[map_name]
        self.mcfg = cfg.mettagrid
        self.num_envs = cfg.num_envs
        self._seed = seed
        self._fixed_cfg = None
        self._fixed_cpp: tuple[Any, dict] | None = None
        if self.map.fixed:  # one config, and one conversion to the C++ config, serve every episode
            self._fixed_cfg = self.map.build(self.mcfg, np.random.default_rng(seed))
            self._fixed_cpp = c_config.convert_to_cpp_game_config(self._fixed_cfg.game)
        game = self._episode_config(np.random.default_rng(seed)).game
        self.agents_per_env = int(game.num_agents)
        self.num_agents = self.num_envs * self.agents_per_env
        features = {int(f.id): f for f in game.id_map().features()}
        channels = max(features) + 1
        self.action_names = tuple(a.name for a in game.actions.actions())
        self.spec = EnvSpec(
            name=cfg.name,
            obs_shape=(channels, game.obs.height, game.obs.width),
            obs_dtype="uint8",
            num_actions=len(self.action_names),
            feature_names=tuple(features[i].name if i in features else f"unused_{i}" for i in range(channels)),
            action_names=self.action_names,
            obs_scale=tuple(float(features[i].normalization) if i in features and features[i].normalization > 0 else 1.0
                            for i in range(channels)),
            agents_per_env=self.agents_per_env,
        )
        self._extras_keys = dict(self.map.extras)

        n, tokens = self.num_agents, int(game.obs.num_tokens)
        self._tokens = np.full((n, tokens, int(game.obs.token_dim)), EMPTY_TOKEN, dtype=np.uint8)
        self._terminals = np.zeros(n, dtype=bool)
        self._truncations = np.zeros(n, dtype=bool)
        self._rewards = np.zeros(n, dtype=np.float32)
        self._actions = np.zeros(n, dtype=np.int32)
        self._vibe_actions = np.zeros(n, dtype=np.int32)
        self._dones = np.zeros(n, dtype=bool)
        self._box = TokenBox(n, channels, game.obs.height, game.obs.width)
        self.sims: list[Any] = [None] * self.num_envs  # native mettagrid_c.MettaGrid per simulation
        self.episode_configs: list[Any] = [None] * self.num_envs  # MettaGridConfig of each current episode
        self._rngs: list[np.random.Generator] = []
        self.tracker = EpisodeTracker(n)
        self._started = False

    # ------------------------------------------------------------------ simulations
    def _episode_config(self, rng: np.random.Generator) -> Any:
        if self._fixed_cfg is not None:
            return self._fixed_cfg
        return self.map.build(self.mcfg, rng)

    def _new_simulation(self, i: int, episode_seed: int) -> None:
        """(Re)build simulation ``i`` from ``episode_seed``; it writes its first observation in place.

        What ``mettagrid.Simulation.__init__`` does, minus its per-episode Python extras (timers,
        talk channel, feature tables) and, for fixed maps, minus the config conversion.
        """
        self.sims[i] = None
        cfg = self._episode_config(self._rngs[i])
        game = cfg.game
        game.map_builder.seed = episode_seed
        if self.map.seeds_room:
            game.map_builder.instance.seed = episode_seed  # the room's own builder
        # The perimeter room builder picks its obstacle shape with the global `random` module.
        state = random.getstate()
        random.seed(episode_seed)
        try:
            grid = game.map_builder.create().build_for_num_agents(self.agents_per_env).grid.tolist()
        finally:
            random.setstate(state)
        c_cfg, renames = self._fixed_cpp or self._c_config.convert_to_cpp_game_config(game)
        if renames:
            grid = self._c_config.rename_map_agents(grid, renames)
        sim = self._MettaGrid(c_cfg, grid, episode_seed)
        a = self.agents_per_env
        rows = slice(i * a, (i + 1) * a)
        sim.set_buffers(self._tokens[rows], self._terminals[rows], self._truncations[rows], self._rewards[rows],
                        self._actions[rows], self._vibe_actions[rows])
        self.sims[i] = sim
        self.episode_configs[i] = cfg

    def _next_seed(self, i: int) -> int:
        return int(self._rngs[i].integers(0, 2**31 - 1))

    # ------------------------------------------------------------------ VecEnv
    def reset(self, seed: int | None = None) -> np.ndarray:
        seed = self._seed if seed is None else int(seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._started = True
        self._rngs = [np.random.default_rng((seed, i)) for i in range(self.num_envs)]
        for i in range(self.num_envs):
            self._new_simulation(i, seed + i)
        self.tracker = EpisodeTracker(self.num_agents)
        return self._box(self._tokens).copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[EpisodeStats]]:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_agents,):
            raise ValueError(f"expected actions of shape ({self.num_agents},), got {actions.shape}")
        np.copyto(self._actions, actions, casting="unsafe")
        if self._actions.min() < 0 or self._actions.max() >= self.spec.num_actions:
            raise ValueError(f"actions must lie in [0, {self.spec.num_actions}), got {actions.min()}..{actions.max()}")
        for sim in self.sims:
            sim.step()
        rewards = self._rewards.copy()
        # A simulation's episode ends when all its agents are terminated or truncated (mettagrid
        # flags them all at max_steps); then every one of its agents is done.
        np.logical_or(self._terminals, self._truncations, out=self._dones)
        sim_done = self._dones.reshape(self.num_envs, self.agents_per_env).all(axis=1)
        dones = np.repeat(sim_done, self.agents_per_env)
        episodes = self.tracker.update(rewards, dones)
        if episodes:
            self._finish(np.flatnonzero(sim_done), episodes)
        return self._box(self._tokens).copy(), rewards, dones, episodes

    def _finish(self, ended: np.ndarray, episodes: list[EpisodeStats]) -> None:
        """Attach each ended episode's stats (agent order) and rebuild the finished simulations."""
        k = 0
        for i in ended.tolist():
            for stats in self.sims[i].get_episode_stats()["agent"]:
                episodes[k].extras = {key: float(stats.get(name, 0.0)) for key, name in self._extras_keys.items()}
                k += 1
            self._new_simulation(i, self._next_seed(i))

    def close(self) -> None:
        self.sims = [None] * self.num_envs
