"""assembly_lines tasks and their named curricula (sweeps.md section 2, docs/environments.md).

Why a module of its own: a task (chain length, sinks, room, terrain, episode length) is plain data
that the map builder (:func:`fiberlab.envs.mettagrid.maps.assembly_lines_config`), the tests and the
docs all read, and it must import without mettagrid. A *curriculum* is four lists; every episode of
every simulation draws one entry from each list with the simulation's seeded RNG, then the room's
width and height from the drawn size's range, and its ``max_steps`` from Metta's formula
(:func:`reference_max_steps`).

The lists follow Metta's ``assembly_lines`` recipe (``curriculum_args``) except where that recipe is
silent or repeats itself, noted per entry below and in docs/environments.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fiberlab.config import MettagridEnvConfig

# Cells a side of each room size: width and height are each drawn uniformly from [lo, hi].
ROOM_SIZES: dict[str, tuple[int, int]] = {
    "tiny": (5, 10), "small": (10, 20), "medium": (20, 30), "large": (30, 40), "xlarge": (40, 50),
}
# Our terrain names -> the density strings of mettagrid's perimeter room builder.
TERRAINS: dict[str, str] = {"none": "no-terrain", "sparse": "sparse", "balanced": "balanced", "dense": "dense"}
ALL_TERRAINS = ("none", "sparse", "balanced", "dense")


@dataclass(frozen=True)
class Curriculum:
    """The lists one curriculum draws from (each entry equally likely, drawn independently)."""

    chain_lengths: tuple[int, ...]
    num_sinks: tuple[int, ...]
    room_sizes: tuple[str, ...]
    terrains: tuple[str, ...]


CURRICULA: dict[str, Curriculum] = {
    # Metta's level_0/1/2: tiny rooms without terrain, the chain growing one link at a time.
    "level_0": Curriculum((1,), (0, 1), ("tiny",), ("none",)),
    "level_1": Curriculum((1, 2), (0, 1), ("tiny",), ("none",)),
    "level_2": Curriculum((1, 2, 3), (0, 1, 2), ("tiny",), ("none",)),
    # Long chains in rooms up to medium, still no terrain.
    "longer_chains": Curriculum((1, 2, 3, 4, 5, 6), (0, 1, 2), ("tiny", "small", "medium"), ("none",)),
    # terrain_1..3 are Metta's (every terrain density in each); Metta's terrain_4 repeats terrain_3,
    # ours adds large rooms so each level is strictly harder and only chain 6 separates it from full.
    "terrain_1": Curriculum((2, 3), (0, 1), ("tiny", "small"), ALL_TERRAINS),
    "terrain_2": Curriculum((2, 3, 4), (0, 1, 2), ("tiny", "small"), ALL_TERRAINS),
    "terrain_3": Curriculum((2, 3, 4, 5), (0, 1, 2), ("tiny", "small", "medium"), ALL_TERRAINS),
    "terrain_4": Curriculum((2, 3, 4, 5), (0, 1, 2), ("tiny", "small", "medium", "large"), ALL_TERRAINS),
    # Metta's full: every room size it trains on (xlarge is a knob only, as in Metta) and terrain.
    "full": Curriculum((2, 3, 4, 5, 6), (0, 1, 2), ("tiny", "small", "medium", "large"), ALL_TERRAINS),
}
# MettagridEnvConfig.curriculum's Literal names the same curricula in the same order (tested).


@dataclass(frozen=True)
class AssemblyTask:
    """One episode's assembly line: what the map builder needs, and what tests and reports read."""

    chain_length: int
    num_sinks: int
    room_size: str
    terrain: str
    width: int
    height: int
    max_steps: int

    @property
    def avg_hop(self) -> float:
        """Metta's ``avg_hop = width + height / 2`` (sic: not ``(width + height) / 2``); it sets
        the stations' cooldown ``floor(avg_hop * chain_length)`` and, under a curriculum, ``max_steps``."""
        return self.width + self.height / 2


def reference_max_steps(chain_length: int, num_sinks: int, width: int, height: int) -> int:
    """Metta's episode length for a task: ``4 * avg_hop * (num_sinks + 10 * chain_length)``.

    ``avg_hop = width + height / 2``, so ``4 * avg_hop = 4 * width + 2 * height`` is an integer and
    the product is exact (Metta's ``int(...)`` of the float gives the same number): 4 hops' worth of
    steps per sink to find out it is one, and per link of the chain for 10 completed chains.
    """
    return (4 * width + 2 * height) * (num_sinks + 10 * chain_length)


def curriculum_of(name: str) -> Curriculum:
    """The named curriculum; :class:`ValueError` naming the allowed ones otherwise."""
    if name not in CURRICULA:
        raise ValueError(f"unknown assembly_lines curriculum {name!r}: allowed are {', '.join(CURRICULA)}")
    return CURRICULA[name]


def draw_task(m: MettagridEnvConfig, rng: np.random.Generator) -> AssemblyTask:
    """One episode's task from ``rng``.

    ``m.curriculum`` None: the fixed knobs ``chain_length``, ``num_sinks``, ``room_size``,
    ``terrain`` and ``max_steps``; only width and height are drawn (first, so episodes are the same
    as before curricula existed). A curriculum: chain length, sinks, room size and terrain drawn
    from its lists (in that order), then width and height, and ``max_steps`` from
    :func:`reference_max_steps`; ``m.max_steps`` and the fixed knobs are ignored.
    """
    if m.curriculum is None:
        chain, sinks, size, terrain = m.chain_length, m.num_sinks, m.room_size, m.terrain
    else:
        c = CURRICULA[m.curriculum]
        chain = c.chain_lengths[int(rng.integers(len(c.chain_lengths)))]
        sinks = c.num_sinks[int(rng.integers(len(c.num_sinks)))]
        size = c.room_sizes[int(rng.integers(len(c.room_sizes)))]
        terrain = c.terrains[int(rng.integers(len(c.terrains)))]
    lo, hi = ROOM_SIZES[size]
    width, height = (int(x) for x in rng.integers(lo, hi + 1, size=2))
    max_steps = m.max_steps if m.curriculum is None else reference_max_steps(chain, sinks, width, height)
    return AssemblyTask(chain, sinks, size, terrain, width, height, max_steps)
