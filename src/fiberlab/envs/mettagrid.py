"""mettagrid 0.26.22 (Softmax's C++ grid world) as one batch of agents.

Three recipes, all built with the package's own builders (``mettagrid.builder.envs``):

- ``mettagrid.arena``: :func:`make_arena` (``combat=False``) with ``cfg.mettagrid.num_agents``
  agents, made to look like Metta's ``arena_basic_easy_shaped``: rooms of 25x25 cells with 6
  agents each (one room with all agents when the count is not a multiple of 6), per room 10
  ``mine_red``, 5 ``generator_red``, 5 ``altar``, 1 ``lasery``, 1 ``armory`` and 20 walls.
  Stations (Metta's converter ratios and cooldowns): mine -> 1 ore_red (cooldown 50); generator
  1 ore_red -> 1 battery_red (25); altar 1 battery_red -> 1 heart (10; the *easy* ratio, 3:1 in the
  standard arena); lasery 2 ore_red + 1 battery_red -> 1 laser (10); armory 3 ore_red -> 1 armor
  (10). Every station starts ready (our analogue of the easy variant's
  ``initial_resource_count=1``). Shaped inventory rewards with caps: ore_red 0.1 (cap 1),
  battery_red 0.8 (cap 1), laser 0.5 (cap 1), armor 0.5 (cap 1), heart 1 (uncapped; inventory
  limit 255). Metta's swappable ``block`` objects do not exist in this package and are left out.
- ``mettagrid.navigation``: :func:`make_navigation` with ``cfg.mettagrid.num_agents`` agents. The
  package's builder has no source of hearts, so we add altars (use -> 1 heart, cooldown 100) on its
  random map: a square room of side ``max(10, ceil(5 sqrt(n)))`` with a wall border, ``max(1, n//2)``
  altars and one wall per 10 cells.
- ``mettagrid.assembly_lines``: :func:`make_assembly_lines`, one agent per simulation (cortex.md
  section 6). Every episode draws from the simulation's seeded RNG: the room's width and height
  (each uniform in the ``room_size`` range: tiny 5-10, small 10-20, medium 20-30, large 30-40),
  ``chain_length`` distinct resources r1..rL out of 9, and which station type plays which role
  (out of 12 station types). The chain is "nothing" -> r1 -> ... -> rL -> heart; each link is a
  station on the room's perimeter that takes one unit of its input from the agent and gives one
  unit of its output, then cools down for ``floor((width + height / 2) * chain_length)`` steps
  (Metta's ``avg_hop * L``). ``num_sinks`` extra stations take every intermediate resource the agent
  holds and give nothing (cooldown 10). Reward +1 per heart (inventory limit 15, 1 for the rest).
  ``terrain`` none/sparse/balanced/dense maps to the builder's density strings
  ``no-terrain``/``sparse``/``balanced``/``dense``.

Stations are handler-based objects (``GridObjectConfig(on_use_handler=...)``): the package has no
converter/assembler objects. An agent uses a station by moving into it. A cooldown is a
``cooldown`` resource held by the station: using it sets the amount, a game-level ``on_tick``
handler takes one away per step, and the use handler requires it to be zero. Agents see the
remaining cooldown as the ``inv:cooldown`` feature on the station's cell.

All recipes: vibe-change actions are disabled (5 actions: noop and four moves), ``max_steps`` is
``cfg.mettagrid.max_steps``, the observation window is set to Metta's 11x11 with 200 tokens, and the
unused protocol-detail features are switched off.

Observations: the token observations ``[N, 200, 3]`` (location byte with the row in the high and
the column in the low nibble, feature id, value; 0xFF marks empty tokens, 0xFE global tokens) are
scattered into a uint8 box ``[N, C, 11, 11]`` with ``C = max feature id + 1``; global tokens go to
the centre cell (like the package's ``GridObsWrapper``). Values stay raw; ``spec.obs_scale`` holds
each channel's normalisation from the feature spec.

Batching: one native simulation (``mettagrid_c.MettaGrid``, what ``mettagrid.Simulation`` wraps) per
environment, each writing straight into a slice of shared buffers (``set_buffers``); a step is one
native ``step()`` call per simulation. A simulation whose episode ended (mettagrid flags every agent
at ``max_steps``) is rebuilt in the same step (mettagrid has no native reset) and its rows already
hold the new episode's first observation.
"""
from __future__ import annotations

import functools
import math
import random
from typing import Any

import numpy as np

from fiberlab.config import EnvConfig, MettagridEnvConfig
from fiberlab.envs.base import EnvSpec, EpisodeStats, EpisodeTracker, VecEnv

RECIPES = ("arena", "navigation", "assembly_lines")
OBS_SIZE = 11  # Metta's Fast policy window
OBS_TOKENS = 200
_EMPTY = 0xFF
_GLOBAL = 0xFE

ROOM_SIZES = {"tiny": (5, 10), "small": (10, 20), "medium": (20, 30), "large": (30, 40)}
TERRAINS = {"none": "no-terrain", "sparse": "sparse", "balanced": "balanced", "dense": "dense"}
# Station types and chain resources of Metta's assembly_lines recipe.
STATION_TYPES = (
    "altar", "armory", "factory", "generator_blue", "generator_green", "generator_red",
    "lab", "lasery", "mine_blue", "mine_green", "mine_red", "temple",
)
CHAIN_RESOURCES = (
    "ore_red", "ore_blue", "ore_green", "battery_red", "battery_blue", "battery_green",
    "laser", "blueprint", "armor",
)
SINK_COOLDOWN = 10


# --------------------------------------------------------------------------- config builders
def _station(name: str, inputs: dict[str, int], outputs: dict[str, int], cooldown: int) -> Any:
    """A station: moving into it trades ``inputs`` from the agent for ``outputs``, then cools down."""
    return _cached_station(name, tuple(sorted(inputs.items())), tuple(sorted(outputs.items())), cooldown)


@functools.lru_cache(maxsize=4096)
def _cached_station(name: str, inputs_items: tuple, outputs_items: tuple, cooldown: int) -> Any:
    # Object configs are only read once built, so equal stations share one (saves pydantic time
    # when assembly_lines builds a new config every episode).
    from mettagrid.config.handler_config import Handler, actorHas, isNot, targetHas, updateActor, updateTarget
    from mettagrid.config.mettagrid_config import GridObjectConfig

    inputs, outputs = dict(inputs_items), dict(outputs_items)
    filters: list[Any] = []
    mutations: list[Any] = []
    if cooldown > 0:
        filters.append(isNot(targetHas({"cooldown": 1})))
    if inputs:
        filters.append(actorHas(inputs))
    deltas = {r: -n for r, n in inputs.items()}
    for r, n in outputs.items():
        deltas[r] = deltas.get(r, 0) + n
    if deltas:
        mutations.append(updateActor(deltas))
    if cooldown > 0:
        mutations.append(updateTarget({"cooldown": cooldown}))
    return GridObjectConfig(name=name, on_use_handler=Handler(filters=filters, mutations=mutations))


def _sink(name: str, resources: list[str], cooldown: int) -> Any:
    """A sink: takes every listed resource the agent holds (at least one), gives nothing."""
    return _cached_sink(name, tuple(resources), cooldown)


@functools.lru_cache(maxsize=4096)
def _cached_sink(name: str, resources_items: tuple, cooldown: int) -> Any:
    from mettagrid.config.filter.resource_filter import actorHasAnyOf
    from mettagrid.config.handler_config import Handler, isNot, targetHas, updateActor, updateTarget
    from mettagrid.config.mettagrid_config import GridObjectConfig

    resources = list(resources_items)
    filters: list[Any] = [isNot(targetHas({"cooldown": 1})), actorHasAnyOf(resources)]
    mutations: list[Any] = [updateActor({r: -1 for r in resources}), updateTarget({"cooldown": cooldown})]
    return GridObjectConfig(name=name, on_use_handler=Handler(filters=filters, mutations=mutations))


def _add_stations(game: Any, stations: dict[str, Any]) -> None:
    """Register stations, the ``cooldown`` resource and the per-step cooldown countdown."""
    objects = dict(game.objects)
    objects.update(stations)
    game.objects = objects
    if "cooldown" not in game.resource_names:
        game.resource_names = [*game.resource_names, "cooldown"]
    game.on_tick = _cooldown_countdown(tuple(sorted(stations)))


@functools.lru_cache(maxsize=64)
def _cooldown_countdown(names: tuple[str, ...]) -> Any:
    """Game-level handler run every step: each station of these types loses one ``cooldown``."""
    from mettagrid.config.handler_config import Handler, query, queryDelta
    from mettagrid.config.tag import typeTag

    return Handler(mutations=[queryDelta(query(typeTag(name)), {"cooldown": -1}) for name in names])


def _common(cfg: Any, m: MettagridEnvConfig) -> Any:
    game = cfg.game
    game.actions.change_vibe.enabled = False
    game.max_steps = m.max_steps
    game.obs.width = OBS_SIZE
    game.obs.height = OBS_SIZE
    game.obs.num_tokens = OBS_TOKENS
    game.protocol_details_obs = False  # handler-based stations have no protocols to show
    return cfg


def arena_config(m: MettagridEnvConfig) -> Any:
    """Metta's arena_basic_easy_shaped rebuilt on :func:`make_arena` (see the module docstring)."""
    import mettagrid.mapgen.scenes.random as random_scene
    from mettagrid.builder.envs import make_arena
    from mettagrid.config.game_value import InventoryValue
    from mettagrid.config.reward_config import reward
    from mettagrid.mapgen.mapgen import MapGen

    n = m.num_agents
    per_room = 6 if n % 6 == 0 else n
    room_objects = {"mine_red": 10, "generator_red": 5, "altar": 5, "lasery": 1, "armory": 1, "wall": 20}
    map_builder = MapGen.Config(
        num_agents=n, width=25, height=25, border_width=6, instance_border_width=0,
        instance=random_scene.Random.Config(agents=per_room, objects=room_objects),
    )
    cfg = make_arena(n, combat=False, map_builder=map_builder)
    cfg.label = "arena.basic_easy_shaped"
    _add_stations(cfg.game, {
        "mine_red": _station("mine_red", {}, {"ore_red": 1}, 50),
        "generator_red": _station("generator_red", {"ore_red": 1}, {"battery_red": 1}, 25),
        "altar": _station("altar", {"battery_red": 1}, {"heart": 1}, 10),
        "lasery": _station("lasery", {"ore_red": 2, "battery_red": 1}, {"laser": 1}, 10),
        "armory": _station("armory", {"ore_red": 3}, {"armor": 1}, 10),
    })
    shaped = {"ore_red": (0.1, 1.0), "battery_red": (0.8, 1.0), "laser": (0.5, 1.0), "armor": (0.5, 1.0)}
    rewards = {"heart": reward(InventoryValue(item="heart"))}
    for item, (weight, cap) in shaped.items():
        rewards[item] = reward(InventoryValue(item=item), weight=weight, max=cap)
    cfg.game.agent.rewards = rewards
    return _common(cfg, m)


def navigation_config(m: MettagridEnvConfig) -> Any:
    """:func:`make_navigation` plus heart-giving altars on its random map (see the module docstring)."""
    from mettagrid.builder.envs import make_navigation
    from mettagrid.map_builder.random_map import RandomMapBuilder

    n = m.num_agents
    side = max(10, math.ceil(5 * math.sqrt(n)))
    cfg = make_navigation(n)
    cfg.label = "navigation"
    cfg.game.map_builder = RandomMapBuilder.Config(
        agents=n, width=side, height=side, border_width=1,
        objects={"altar": max(1, n // 2), "wall": side * side // 10},
    )
    _add_stations(cfg.game, {"altar": _station("altar", {}, {"heart": 1}, 100)})
    return _common(cfg, m)


def assembly_lines_config(m: MettagridEnvConfig, rng: np.random.Generator) -> Any:
    """One episode's assembly line: room size, chain resources and station roles drawn from ``rng``."""
    from mettagrid.builder.envs import make_assembly_lines

    lo, hi = ROOM_SIZES[m.room_size]
    width, height = (int(x) for x in rng.integers(lo, hi + 1, size=2))
    chain = [CHAIN_RESOURCES[i] for i in rng.permutation(len(CHAIN_RESOURCES))[: m.chain_length]]
    roles = [STATION_TYPES[i] for i in rng.permutation(len(STATION_TYPES))[: m.chain_length + 1 + m.num_sinks]]
    cooldown = int((width + height / 2) * m.chain_length)
    links = [None, *chain, "heart"]
    stations: dict[str, Any] = {}
    for k, name in enumerate(roles[: m.chain_length + 1]):
        inputs = {} if links[k] is None else {links[k]: 1}
        stations[name] = _station(name, inputs, {links[k + 1]: 1}, cooldown)
    for name in roles[m.chain_length + 1:]:
        stations[name] = _sink(name, chain, SINK_COOLDOWN)
    # Every station type is registered in every episode (unplaced ones do nothing), so the tag ids
    # the agent observes are the same from one episode to the next.
    for name in STATION_TYPES:
        stations.setdefault(name, _station(name, {}, {}, 0))
    cfg = make_assembly_lines(
        num_agents=1, max_steps=m.max_steps, game_objects={}, map_builder_objects={name: 1 for name in roles},
        width=width, height=height, terrain=TERRAINS[m.terrain], chain_length=m.chain_length, num_sinks=m.num_sinks,
    )
    cfg.label = f"assembly_lines.{m.room_size}_{m.chain_length}chain_{m.num_sinks}sinks_{m.terrain}"
    _add_stations(cfg.game, stations)
    return _common(cfg, m)


# --------------------------------------------------------------------------- token -> box
class TokenBox:
    """Scatters token observations ``[N, T, 3]`` uint8 into a dense box ``[N, C, H, W]`` uint8.

    Vectorised, no loop over agents or tokens: the (location, feature) byte pair of every token is
    read as one little-endian uint16 and mapped through a 65536-entry table to its offset in an
    agent's box (negative for tokens to drop: empty 0xFF tokens, locations outside the window,
    feature ids >= C); one masked fancy assignment writes the values. Global tokens (location 0xFE)
    go to the centre cell. Where two tokens share a feature and a cell the later token wins.

    mettagrid packs each agent's tokens at the front of its row (the package's own readers stop at
    the first empty token), so only the first ``K`` columns are read, ``K`` the longest row.
    """

    def __init__(self, num_agents: int, num_channels: int, height: int, width: int) -> None:
        self.shape = (num_agents, num_channels, height, width)
        hw = height * width
        if num_agents * num_channels * hw >= 2**30:
            raise ValueError("observation box too large for int32 offsets")
        pair = np.arange(65536, dtype=np.int64)
        loc, fid = pair & 0xFF, pair >> 8
        row, col = loc >> 4, loc & 0x0F
        row = np.where(loc == _GLOBAL, height // 2, row)
        col = np.where(loc == _GLOBAL, width // 2, col)
        keep = (loc != _EMPTY) & (row < height) & (col < width) & (fid < num_channels)
        self._table = np.where(keep, fid * hw + row * width + col, -(2**30)).astype(np.int32)
        self._base = (np.arange(num_agents, dtype=np.int32) * (num_channels * hw))[:, None]
        self.box = np.zeros(self.shape, dtype=np.uint8)
        self._flat = self.box.reshape(-1)
        self._written = np.zeros(0, dtype=np.int32)  # entries set by the previous call

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """Fill and return the (reused) box from ``tokens`` ``[N, T, 3]`` uint8."""
        tokens = np.ascontiguousarray(tokens, dtype=np.uint8)
        n, t, _ = tokens.shape
        loc = tokens[:, :, 0]
        k = t if n == 0 or (loc[:, -1] != _EMPTY).any() else int((loc == _EMPTY).argmax(axis=1).max())
        pairs = np.ndarray((n, k), dtype="<u2", buffer=tokens, strides=(tokens.strides[0], tokens.strides[1]))
        offset = self._table[pairs]
        valid = offset >= 0
        self._flat[self._written] = 0
        self._written = (offset + self._base)[valid]
        self._flat[self._written] = tokens[:, :k, 2][valid]
        return self.box


# --------------------------------------------------------------------------- the batch
class MettagridVecEnv(VecEnv):
    """``cfg.num_envs`` mettagrid simulations of one recipe, all their agents as one batch.

    ``cfg.name`` is ``mettagrid.arena``, ``mettagrid.navigation`` or ``mettagrid.assembly_lines``;
    ``num_agents = cfg.num_envs * spec.agents_per_env`` with the agents of simulation ``i`` in rows
    ``i * agents_per_env ...``. Simulation ``i`` starts its first episode from seed ``seed + i``; its
    later episodes (and the assembly-line tasks) come from an RNG seeded with ``(seed, i)``, so a
    seed (>= 0) fixes every episode; ``reset(None)`` reuses the constructor's seed.

    Finished episodes report ``extras`` with ``heart`` (hearts gained), ``unique_cells`` (cells
    visited) and, for arena, ``ore_red`` and ``battery_red`` gained. ``sims`` holds the native
    simulations and ``episode_configs`` the ``MettaGridConfig`` of each one's current episode.
    """

    def __init__(self, cfg: EnvConfig, seed: int = 0) -> None:
        family, _, recipe = cfg.name.partition(".")
        if family != "mettagrid" or recipe not in RECIPES:
            raise ValueError(f"unknown mettagrid env {cfg.name!r}: allowed are {', '.join('mettagrid.' + r for r in RECIPES)}")
        import mettagrid.config.mettagrid_c_config as c_config
        from mettagrid.mettagrid_c import MettaGrid

        self._c_config, self._MettaGrid = c_config, MettaGrid
        self.recipe = recipe
        self.mcfg = cfg.mettagrid
        self.num_envs = cfg.num_envs
        self._seed = seed
        self._fixed_cfg = None
        self._fixed_cpp: tuple[Any, dict] | None = None
        if recipe == "arena":
            self._fixed_cfg = arena_config(self.mcfg)
        elif recipe == "navigation":
            self._fixed_cfg = navigation_config(self.mcfg)
        if self._fixed_cfg is not None:  # one conversion to the C++ config serves every episode
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
        self._extras_keys = {"heart": "heart.gained", "unique_cells": "cell.unique_visited"}
        if recipe == "arena":
            self._extras_keys.update({"ore_red": "ore_red.gained", "battery_red": "battery_red.gained"})

        n, tokens = self.num_agents, int(game.obs.num_tokens)
        self._tokens = np.full((n, tokens, int(game.obs.token_dim)), _EMPTY, dtype=np.uint8)
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
        return assembly_lines_config(self.mcfg, rng)

    def _new_simulation(self, i: int, episode_seed: int) -> None:
        """(Re)build simulation ``i`` from ``episode_seed``; it writes its first observation in place.

        What ``mettagrid.Simulation.__init__`` does, minus its per-episode Python extras (timers,
        talk channel, feature tables) and, for arena and navigation, minus the config conversion.
        """
        self.sims[i] = None
        cfg = self._episode_config(self._rngs[i])
        game = cfg.game
        game.map_builder.seed = episode_seed
        if self.recipe == "assembly_lines":
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


__all__ = ["RECIPES", "MettagridVecEnv", "TokenBox", "arena_config", "assembly_lines_config", "navigation_config"]
