"""Registries that rebuild a cortex module from its config, and the tagged form configs are saved in.

Why a registry: a block holds "some cell config" and a column holds "some block configs". The block
builds its cell from the config's class alone (``build_cell(cfg)``), so new cells plug in by
registering, never by editing the blocks.

Why tags: pydantic validates a field annotated ``CellConfig`` as the base class and would drop the
subclass's fields on a round trip through JSON. A config is therefore saved as
``{"kind": "<ConfigClassName>", "config": {...its fields...}}`` and rebuilt from the class registered
under that name. This works whether or not a cell config carries its own ``kind`` field.
"""
from __future__ import annotations

import importlib
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, SerializationInfo

from fiberlab.cortex.base import MemoryModule
from fiberlab.cortex.config import CellConfig, CortexConfig

# config class -> module class; filled by register_cell / register_block
CELLS: dict[type[CellConfig], type[MemoryModule]] = {}
BLOCKS: dict[type[CortexConfig], type[MemoryModule]] = {}

# the built-in cells: (module under fiberlab.cortex.cells, config class, cell class)
BUILTIN_CELLS = [
    ("lstm", "LSTMConfig", "LSTMCell"),
    ("conv", "CausalConvConfig", "CausalConvCell"),
    ("axon", "AxonConfig", "AxonCell"),
    ("agalite", "AGaLiTeConfig", "AGaLiTeCell"),
    ("mlstm", "MLSTMConfig", "MLSTMCell"),
    ("slstm", "SLSTMConfig", "SLSTMCell"),
    ("xl", "XLConfig", "XLCell"),
]


def register_cell(config_cls: type[CellConfig], cell_cls: type[MemoryModule]) -> None:
    """Make ``build_cell`` (and config JSON) know a cell: ``cell_cls(cfg)`` must build it."""
    CELLS[config_cls] = cell_cls


def register_block(config_cls: type[CortexConfig], block_cls: type[MemoryModule]) -> None:
    BLOCKS[config_cls] = block_cls


def builtin_cell_config(name: str) -> type[CellConfig]:
    """The config class of a built-in cell by class name (``"AxonConfig"``), registering its cell.

    Imported lazily so the structure (blocks, columns, stacks) works before every cell exists.
    """
    for module, cfg_name, cell_name in BUILTIN_CELLS:
        if cfg_name == name:
            try:
                mod = importlib.import_module(f"fiberlab.cortex.cells.{module}")
            except ModuleNotFoundError as e:
                raise ValueError(f"cell {name} needs fiberlab.cortex.cells.{module}, which cannot be imported ({e})") from None
            cfg_cls, cell_cls = getattr(mod, cfg_name), getattr(mod, cell_name)
            register_cell(cfg_cls, cell_cls)
            return cfg_cls
    raise ValueError(f"unknown cell config {name!r}: allowed are {', '.join(c for _, c, _ in BUILTIN_CELLS)}")


def _lookup(kind: str, table: dict) -> type[CortexConfig]:
    for cls in table:
        if cls.__name__ == kind:
            return cls
    if table is CELLS:
        return builtin_cell_config(kind)
    raise ValueError(f"unknown config kind {kind!r}: allowed are {', '.join(sorted(c.__name__ for c in table))}")


def build_cell(cfg: CellConfig) -> MemoryModule:
    """The cell a config describes (registered under the config's exact class)."""
    cls = CELLS.get(type(cfg))
    if cls is None:  # a built-in cell not imported yet
        _lookup(type(cfg).__name__, CELLS)
        cls = CELLS.get(type(cfg))
    if cls is None:
        raise ValueError(f"no cell registered for {type(cfg).__name__}: allowed are {', '.join(sorted(c.__name__ for c in CELLS))}")
    return cls(cfg)


def build_block(cfg: CortexConfig) -> MemoryModule:
    cls = BLOCKS.get(type(cfg))
    if cls is None:
        raise ValueError(f"no block registered for {type(cfg).__name__}: allowed are {', '.join(sorted(c.__name__ for c in BLOCKS))}")
    return cls(cfg)


def _tagged(table: dict, base: type[CortexConfig]):
    """An annotated field type: a config instance in Python, ``{"kind", "config"}`` in a dump."""

    def validate(value: Any) -> CortexConfig:
        if isinstance(value, base):
            return value
        if isinstance(value, dict) and set(value) == {"kind", "config"}:
            return _lookup(value["kind"], table).model_validate(value["config"])
        raise ValueError(f"expected a {base.__name__} or {{'kind': ..., 'config': {{...}}}}, got {value!r}")

    def serialize(value: CortexConfig, info: SerializationInfo) -> dict:
        return {"kind": type(value).__name__, "config": value.model_dump(mode=info.mode)}

    return Annotated[base, PlainValidator(validate), PlainSerializer(serialize)]


TaggedCell = _tagged(CELLS, CellConfig)
TaggedBlock = _tagged(BLOCKS, CortexConfig)
