"""fiberlab.cortex: recurrent memory backbones composed by a short pattern (``"AgSA"``, ``"M^"``).

Cells (``cells/``) hold the recurrences, blocks (``blocks/``) wrap a cell with norms, projections
and residuals, a column mixes several blocks as experts, a stack layers columns. All of them share
one interface (``base.MemoryModule``): ``forward(x, state=None, *, resets=None) -> (y, state)``.
The math kernels (scans, the chunkwise mLSTM) live in ``kernels/``. Guide: docs/cortex.md.
"""
from fiberlab.cortex.base import MemoryModule, State, detach_state, map_state, zero_rows
from fiberlab.cortex.column import Column, ColumnConfig, RouterConfig
from fiberlab.cortex.pattern import build_stack, parse_pattern, stack_config
from fiberlab.cortex.stack import Stack, StackConfig

__all__ = [
    "Column", "ColumnConfig", "MemoryModule", "RouterConfig", "Stack", "StackConfig", "State",
    "build_stack", "detach_state", "map_state", "parse_pattern", "stack_config", "zero_rows",
]
