"""mettagrid 0.26.22 (Softmax's C++ grid world) as one batch of agents: ``mettagrid.<map>`` envs.

Four modules, one job each:

- :mod:`~fiberlab.envs.mettagrid.curricula`: assembly_lines tasks and their named curricula
  (``CURRICULA``, ``draw_task``, ``reference_max_steps``), plain data;
- :mod:`~fiberlab.envs.mettagrid.maps`: the maps as data (``MAPS``: arena, navigation,
  assembly_lines), each a builder of its ``MettaGridConfig`` and what the adapter must know of it;
- :mod:`~fiberlab.envs.mettagrid.tokens`: token observations -> the uint8 grid (``TokenBox``);
- :mod:`~fiberlab.envs.mettagrid.vecenv`: the :class:`~fiberlab.envs.base.VecEnv` adapter
  (``MettagridVecEnv``).

mettagrid itself is imported only when an env is built, so this package imports without it.
Guide: docs/environments_mettagrid.md.
"""
from fiberlab.envs.mettagrid.curricula import CURRICULA, AssemblyTask, Curriculum, draw_task, reference_max_steps
from fiberlab.envs.mettagrid.maps import (
    MAPS,
    MettagridMap,
    arena_config,
    assembly_lines_config,
    assembly_task,
    navigation_config,
)
from fiberlab.envs.mettagrid.tokens import TokenBox
from fiberlab.envs.mettagrid.vecenv import MettagridVecEnv

__all__ = [
    "CURRICULA", "MAPS", "AssemblyTask", "Curriculum", "MettagridMap", "MettagridVecEnv", "TokenBox", "arena_config",
    "assembly_lines_config", "assembly_task", "draw_task", "navigation_config", "reference_max_steps",
]
