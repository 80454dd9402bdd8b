"""mettagrid 0.26.22 (Softmax's C++ grid world) as one batch of agents: ``mettagrid.<map>`` envs.

Three modules, one job each:

- :mod:`~fiberlab.envs.mettagrid.maps`: the maps as data (``MAPS``: arena, navigation,
  assembly_lines), each a builder of its ``MettaGridConfig`` and what the adapter must know of it;
- :mod:`~fiberlab.envs.mettagrid.tokens`: token observations -> the uint8 grid (``TokenBox``);
- :mod:`~fiberlab.envs.mettagrid.vecenv`: the :class:`~fiberlab.envs.base.VecEnv` adapter
  (``MettagridVecEnv``).

mettagrid itself is imported only when an env is built, so this package imports without it.
Guide: docs/environments_mettagrid.md.
"""
from fiberlab.envs.mettagrid.maps import (
    MAPS,
    MettagridMap,
    arena_config,
    assembly_lines_config,
    navigation_config,
)
from fiberlab.envs.mettagrid.tokens import TokenBox
from fiberlab.envs.mettagrid.vecenv import MettagridVecEnv

__all__ = ["MAPS", "MettagridMap", "MettagridVecEnv", "TokenBox", "arena_config", "assembly_lines_config", "navigation_config"]
