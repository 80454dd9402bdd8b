"""The mettagrid maps as data: one record per map name, each with the builder of its game config.

Why a table: the adapter (:mod:`fiberlab.envs.mettagrid.vecenv`) treats every map alike and reads
what differs (whether the config changes every episode, which episode stats to report, which
builders take the episode seed) from the map's :class:`MettagridMap` record. Adding a map is a
builder and one row in :data:`MAPS`. mettagrid is imported inside the builders only, so this module
imports without it.

All maps are built with the package's own builders (``mettagrid.builder.envs``):

- ``arena``: :func:`make_arena` (``combat=False``) with ``cfg.mettagrid.num_agents`` agents, made to
  look like Metta's ``arena_basic_easy_shaped``: rooms of 25x25 cells with 6 agents each (one room
  with all agents when the count is not a multiple of 6), per room 10 ``mine_red``, 5
  ``generator_red``, 5 ``altar``, 1 ``lasery``, 1 ``armory`` and 20 walls. Stations (Metta's
  converter ratios and cooldowns): mine -> 1 ore_red (cooldown 50); generator 1 ore_red -> 1
  battery_red (25); altar 1 battery_red -> 1 heart (10; the *easy* ratio, 3:1 in the standard
  arena); lasery 2 ore_red + 1 battery_red -> 1 laser (10); armory 3 ore_red -> 1 armor (10). Every
  station starts ready (our analogue of the easy variant's ``initial_resource_count=1``). Shaped
  inventory rewards with caps: ore_red 0.1 (cap 1), battery_red 0.8 (cap 1), laser 0.5 (cap 1),
  armor 0.5 (cap 1), heart 1 (uncapped; inventory limit 255). Metta's swappable ``block`` objects
  do not exist in this package and are left out.
- ``navigation``: :func:`make_navigation` with ``cfg.mettagrid.num_agents`` agents. The package's
  builder has no source of hearts, so we add altars (use -> 1 heart, cooldown 100) on its random
  map: a square room of side ``max(10, ceil(5 sqrt(n)))`` with a wall border, ``max(1, n//2)``
  altars and one wall per 10 cells.
- ``assembly_lines``: :func:`make_assembly_lines`, one agent per simulation (cortex.md section 6).
  Every episode draws from the simulation's seeded RNG: with ``curriculum`` set, the chain length,
  sinks, room size and terrain from that curriculum's lists and ``max_steps`` from Metta's formula
  (:mod:`fiberlab.envs.mettagrid.curricula`); then the room's width and height (each uniform
  in the ``room_size`` range: tiny 5-10, small 10-20, medium 20-30, large 30-40, xlarge 40-50),
  ``chain_length`` distinct resources r1..rL out of 9, and which station type plays which role (out of 12 station
  types). The chain is "nothing" -> r1 -> ... -> rL -> heart; each link is a station on the room's
  perimeter that takes one unit of its input from the agent and gives one unit of its output, then
  cools down for ``floor((width + height / 2) * chain_length)`` steps (Metta's ``avg_hop * L``).
  ``num_sinks`` extra stations take every intermediate resource the agent holds and give nothing
  (cooldown 10). Reward +1 per heart (inventory limit 15, 1 for the rest). ``terrain``
  none/sparse/balanced/dense maps to the builder's density strings
  ``no-terrain``/``sparse``/``balanced``/``dense``.

Stations are handler-based objects (``GridObjectConfig(on_use_handler=...)``): the package has no
converter/assembler objects. An agent uses a station by moving into it. A cooldown is a
``cooldown`` resource held by the station: using it sets the amount, a game-level ``on_tick``
handler takes one away per step, and the use handler requires it to be zero. Agents see the
remaining cooldown as the ``inv:cooldown`` feature on the station's cell.

All maps: vibe-change actions are disabled (5 actions: noop and four moves), ``max_steps`` is
``cfg.mettagrid.max_steps`` (assembly_lines under a curriculum: the task's own), the observation
window is set to Metta's 11x11 with 200 tokens, and the unused protocol-detail features are
switched off.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fiberlab.config import MettagridEnvConfig
from fiberlab.envs.mettagrid.curricula import TERRAINS, AssemblyTask, draw_task

OBS_SIZE = 11  # Metta's Fast policy window
OBS_TOKENS = 200

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

# Reported by every map: EpisodeStats.extras key -> mettagrid agent stat.
COMMON_EXTRAS = {"heart": "heart.gained", "unique_cells": "cell.unique_visited"}

MapBuilder = Callable[[MettagridEnvConfig, np.random.Generator], Any]  # -> one episode's MettaGridConfig


@dataclass(frozen=True)
class MettagridMap:
    """What the adapter needs to know about one map.

    ``fixed``: the config is the same every episode, so the adapter builds it (and converts it to
    the C++ config) once and only rebuilds the grid; otherwise ``build`` runs every episode with the
    simulation's RNG. ``seeds_room``: the map builder's nested room builder (``instance``) takes the
    episode seed too. ``extras``: the episode stats reported per agent (key -> mettagrid stat).
    """

    name: str
    build: MapBuilder
    fixed: bool
    extras: Mapping[str, str]
    seeds_room: bool = False


# --------------------------------------------------------------------------- stations
def station(name: str, inputs: dict[str, int], outputs: dict[str, int], cooldown: int) -> Any:
    """A station: moving into it trades ``inputs`` from the agent for ``outputs``, then cools down."""
    return _cached_station(name, tuple(sorted(inputs.items())), tuple(sorted(outputs.items())), cooldown)


@functools.lru_cache(maxsize=4096)
def _cached_station(name: str, inputs_items: tuple, outputs_items: tuple, cooldown: int) -> Any:
    # Object configs are only read once built, so equal stations share one (saves pydantic time
    # when assembly_lines builds a new config every episode).
    from mettagrid.config.handler_config import (
        Handler,
        actorHas,
        isNot,
        targetHas,
        updateActor,
        updateTarget,
    )
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


def sink(name: str, resources: list[str], cooldown: int) -> Any:
    """A sink: takes every listed resource the agent holds (at least one), gives nothing."""
    return _cached_sink(name, tuple(resources), cooldown)


@functools.lru_cache(maxsize=4096)
def _cached_sink(name: str, resources_items: tuple, cooldown: int) -> Any:
    from mettagrid.config.filter.resource_filter import actorHasAnyOf
    from mettagrid.config.handler_config import (
        Handler,
        isNot,
        targetHas,
        updateActor,
        updateTarget,
    )
    from mettagrid.config.mettagrid_config import GridObjectConfig

    resources = list(resources_items)
    filters: list[Any] = [isNot(targetHas({"cooldown": 1})), actorHasAnyOf(resources)]
    mutations: list[Any] = [updateActor({r: -1 for r in resources}), updateTarget({"cooldown": cooldown})]
    return GridObjectConfig(name=name, on_use_handler=Handler(filters=filters, mutations=mutations))


def add_stations(game: Any, stations: dict[str, Any]) -> None:
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


def _common(cfg: Any, m: MettagridEnvConfig, max_steps: int | None = None) -> Any:
    """Settings shared by every map: no vibe actions, episode length (``max_steps``, else
    ``m.max_steps``), Metta's observation window."""
    game = cfg.game
    game.actions.change_vibe.enabled = False
    game.max_steps = m.max_steps if max_steps is None else max_steps
    game.obs.width = OBS_SIZE
    game.obs.height = OBS_SIZE
    game.obs.num_tokens = OBS_TOKENS
    game.protocol_details_obs = False  # handler-based stations have no protocols to show
    return cfg


# --------------------------------------------------------------------------- maps
def arena_config(m: MettagridEnvConfig, rng: np.random.Generator | None = None) -> Any:
    """Metta's arena_basic_easy_shaped rebuilt on :func:`make_arena` (see the module docstring).

    The same every episode: ``rng`` is not used."""
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
    add_stations(cfg.game, {
        "mine_red": station("mine_red", {}, {"ore_red": 1}, 50),
        "generator_red": station("generator_red", {"ore_red": 1}, {"battery_red": 1}, 25),
        "altar": station("altar", {"battery_red": 1}, {"heart": 1}, 10),
        "lasery": station("lasery", {"ore_red": 2, "battery_red": 1}, {"laser": 1}, 10),
        "armory": station("armory", {"ore_red": 3}, {"armor": 1}, 10),
    })
    shaped = {"ore_red": (0.1, 1.0), "battery_red": (0.8, 1.0), "laser": (0.5, 1.0), "armor": (0.5, 1.0)}
    rewards = {"heart": reward(InventoryValue(item="heart"))}
    for item, (weight, cap) in shaped.items():
        rewards[item] = reward(InventoryValue(item=item), weight=weight, max=cap)
    cfg.game.agent.rewards = rewards
    return _common(cfg, m)


def navigation_config(m: MettagridEnvConfig, rng: np.random.Generator | None = None) -> Any:
    """:func:`make_navigation` plus heart-giving altars on its random map (see the module docstring).

    The same every episode: ``rng`` is not used."""
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
    add_stations(cfg.game, {"altar": station("altar", {}, {"heart": 1}, 100)})
    return _common(cfg, m)


def assembly_lines_config(m: MettagridEnvConfig, rng: np.random.Generator) -> Any:
    """One episode's assembly line: the task (:func:`~fiberlab.envs.mettagrid.curricula.draw_task`:
    the fixed knobs or a curriculum's draw), chain resources and station roles, all from ``rng``."""
    from mettagrid.builder.envs import make_assembly_lines

    task = draw_task(m, rng)
    chain_length, width, height = task.chain_length, task.width, task.height
    chain = [CHAIN_RESOURCES[i] for i in rng.permutation(len(CHAIN_RESOURCES))[:chain_length]]
    roles = [STATION_TYPES[i] for i in rng.permutation(len(STATION_TYPES))[: chain_length + 1 + task.num_sinks]]
    cooldown = int(task.avg_hop * chain_length)  # Metta: floor((width + height / 2) * L)
    links = [None, *chain, "heart"]
    stations: dict[str, Any] = {}
    for k, name in enumerate(roles[: chain_length + 1]):
        inputs = {} if links[k] is None else {links[k]: 1}
        stations[name] = station(name, inputs, {links[k + 1]: 1}, cooldown)
    for name in roles[chain_length + 1:]:
        stations[name] = sink(name, chain, SINK_COOLDOWN)
    # Every station type is registered in every episode (unplaced ones do nothing), so the tag ids
    # the agent observes are the same from one episode to the next.
    for name in STATION_TYPES:
        stations.setdefault(name, station(name, {}, {}, 0))
    cfg = make_assembly_lines(
        num_agents=1, max_steps=task.max_steps, game_objects={}, map_builder_objects={name: 1 for name in roles},
        width=width, height=height, terrain=TERRAINS[task.terrain], chain_length=chain_length,
        num_sinks=task.num_sinks,
    )
    prefix = "assembly_lines." if m.curriculum is None else f"assembly_lines.{m.curriculum}:"
    cfg.label = f"{prefix}{task.room_size}_{chain_length}chain_{task.num_sinks}sinks_{task.terrain}"
    add_stations(cfg.game, stations)
    return _common(cfg, m, max_steps=task.max_steps)


def assembly_task(cfg: Any) -> AssemblyTask:
    """The task an assembly_lines episode config was built from, read back from it (its label
    ``assembly_lines[.<curriculum>:]<room_size>_<L>chain_<S>sinks_<terrain>``, its room and
    ``max_steps``): what tests and reports use to see which task an episode drew."""
    room = cfg.game.map_builder.instance
    size, _, _, terrain = cfg.label.rsplit(":", 1)[-1].removeprefix("assembly_lines.").split("_")
    return AssemblyTask(int(room.chain_length), int(room.num_sinks), size, terrain, int(room.width), int(room.height),
                        int(cfg.game.max_steps))


MAPS: dict[str, MettagridMap] = {
    "arena": MettagridMap(
        "arena", arena_config, fixed=True,
        extras={**COMMON_EXTRAS, "ore_red": "ore_red.gained", "battery_red": "battery_red.gained"},
    ),
    "navigation": MettagridMap("navigation", navigation_config, fixed=True, extras=COMMON_EXTRAS),
    "assembly_lines": MettagridMap("assembly_lines", assembly_lines_config, fixed=False, extras=COMMON_EXTRAS, seeds_room=True),
}
