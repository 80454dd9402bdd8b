"""The pattern language: a short string names a whole stack (spec section 4).

``build_stack("AgSA", d_hidden=128, num_layers=3)`` -> 3 columns, each with the experts Ag, S, A.

- Tokens (block, cell): A (PostUp, Axon) · Ag (PostUpGated, AGaLiTe) · X / X^ (PostUpGated,
  Transformer-XL) · M / M^ (PreUp, mLSTM) · S / S^ (PostUp, sLSTM) · L (PassThrough, LSTM) ·
  C (PassThrough, causal conv). ``^`` "axonifies" M, S and X (their configs' ``axonify=True``).
- Parsing: commas (and spaces) separate; otherwise the longest token wins, so "AgSA" is [Ag, S, A].
- A string is one layer's experts, repeated ``num_layers`` times; a list gives each layer its own.
- Overrides by config class name merge only the fields given into every config of that class:
  ``build_stack("X", 64, 2, XLConfig={"mem_len": 16}, RouterConfig={"temperature": 0.5})``.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fiberlab.cortex.blocks.base import BlockConfig
from fiberlab.cortex.blocks.passthrough import PassThroughBlockConfig
from fiberlab.cortex.blocks.postup import PostUpBlockConfig
from fiberlab.cortex.blocks.postup_gated import PostUpGatedBlockConfig
from fiberlab.cortex.blocks.preup import PreUpBlockConfig, inner_width
from fiberlab.cortex.column import ColumnConfig, RouterConfig
from fiberlab.cortex.config import CortexConfig
from fiberlab.cortex.registry import BUILTIN_CELLS, builtin_cell_config
from fiberlab.cortex.stack import Stack, StackConfig
from fiberlab.errors import BadInput

# token -> (block config class, cell config class name, axonify)
TOKENS: dict[str, tuple[type[BlockConfig], str, bool]] = {
    "A": (PostUpBlockConfig, "AxonConfig", False),
    "Ag": (PostUpGatedBlockConfig, "AGaLiTeConfig", False),
    "X": (PostUpGatedBlockConfig, "XLConfig", False),
    "X^": (PostUpGatedBlockConfig, "XLConfig", True),
    "M": (PreUpBlockConfig, "MLSTMConfig", False),
    "M^": (PreUpBlockConfig, "MLSTMConfig", True),
    "S": (PostUpBlockConfig, "SLSTMConfig", False),
    "S^": (PostUpBlockConfig, "SLSTMConfig", True),
    "L": (PassThroughBlockConfig, "LSTMConfig", False),
    "C": (PassThroughBlockConfig, "CausalConvConfig", False),
}
ALLOWED = ", ".join(TOKENS)
# PreUp's cell reads `a` itself only where the cell has its own input nonlinearity (mLSTM's conv + SiLU)
CELL_READS_RAW_INPUT = {"MLSTMConfig"}
# the configs a pattern builds, which overrides may name (adapters are built by hand, not by patterns)
STRUCTURE_CONFIGS: dict[str, type[CortexConfig]] = {
    c.__name__: c
    for c in (PassThroughBlockConfig, PreUpBlockConfig, PostUpBlockConfig, PostUpGatedBlockConfig, RouterConfig, StackConfig)
}


def parse_pattern(pattern: str) -> list[str]:
    """One layer's tokens: commas and spaces separate, otherwise the longest token matches first."""
    if not isinstance(pattern, str):
        raise BadInput(f"a layer pattern must be a string, got {pattern!r}")
    tokens, i = [], 0
    by_length = sorted(TOKENS, key=len, reverse=True)
    while i < len(pattern):
        if pattern[i] in ", ":
            i += 1
            continue
        tok = next((t for t in by_length if pattern.startswith(t, i)), None)
        if tok is None or pattern.startswith(tok + "^", i):
            bad = pattern[i : i + len(tok) + 1] if tok else pattern[i]
            raise BadInput(f"unknown token {bad!r} at position {i} of pattern {pattern!r}: allowed tokens are {ALLOWED} ('^' applies to M, S, X)")
        tokens.append(tok)
        i += len(tok)
    if not tokens:
        raise BadInput(f"empty pattern {pattern!r}: give at least one of {ALLOWED}")
    return tokens


def _layer_tokens(pattern: str | list[str], num_layers: int) -> list[list[str]]:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise BadInput(f"num_layers must be a positive integer, got {num_layers!r}")
    if isinstance(pattern, str):
        return [parse_pattern(pattern)] * num_layers
    if not isinstance(pattern, (list, tuple)) or len(pattern) != num_layers:
        n = len(pattern) if isinstance(pattern, (list, tuple)) else pattern
        raise BadInput(f"a list pattern needs num_layers={num_layers} entries (one per layer), got {n!r}")
    return [parse_pattern(p) for p in pattern]


def _config_class(name: str) -> type[CortexConfig]:
    if name in STRUCTURE_CONFIGS:
        return STRUCTURE_CONFIGS[name]
    if name in {c for _, c, _ in BUILTIN_CELLS}:
        return builtin_cell_config(name)
    allowed = sorted([*STRUCTURE_CONFIGS, *(c for _, c, _ in BUILTIN_CELLS)])
    raise BadInput(f"unknown override type {name!r}: allowed are {', '.join(allowed)}")


def _check_overrides(overrides: dict[str, Any]) -> dict[type[CortexConfig], dict[str, Any]]:
    """Resolve override names to classes; every field must exist (d_hidden is the pattern's)."""
    out = {}
    for name, fields in overrides.items():
        cls = _config_class(name)
        if not isinstance(fields, dict):
            raise BadInput(f"override {name} must be a dict of fields, got {fields!r}")
        for f in fields:
            if f not in cls.model_fields or f in ("cell", "base", "experts", "layers"):
                allowed = sorted(set(cls.model_fields) - {"cell", "base", "experts", "layers", "d_hidden"})
                raise BadInput(f"unknown field {name}.{f}: allowed are {', '.join(allowed) or 'none'}")
            if f == "d_hidden":
                raise BadInput(f"{name}.d_hidden is set by build_stack's d_hidden, not by an override")
        out[cls] = fields
    return out


def _make(cls: type[CortexConfig], overrides: dict, **fields: Any) -> CortexConfig:
    """``cls(**fields)`` with the overrides for ``cls`` merged in; bad values -> one-line ValueError."""
    merged = {**fields, **overrides.get(cls, {})}
    try:
        return cls(**merged)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BadInput(f"bad value {err.get('input')!r} for {cls.__name__}.{loc}: {err['msg']}") from None


def _block(token: str, d_hidden: int, overrides: dict) -> BlockConfig:
    block_cls, cell_name, axonify = TOKENS[token]
    cell_cls = builtin_cell_config(cell_name)
    extra = {"axonify": True} if axonify else {}
    if block_cls is PreUpBlockConfig:  # the cell runs at the inner width D = proj_factor * H
        proj = overrides.get(PreUpBlockConfig, {}).get("proj_factor", PreUpBlockConfig.model_fields["proj_factor"].default)
        cell = _make(cell_cls, overrides, d_hidden=inner_width(d_hidden, proj), **extra)
        return _make(block_cls, overrides, d_hidden=d_hidden, cell=cell, silu_cell_input=cell_name not in CELL_READS_RAW_INPUT)
    cell = _make(cell_cls, overrides, d_hidden=d_hidden, **extra)
    return _make(block_cls, overrides, cell=cell)


def stack_config(pattern: str | list[str], d_hidden: int, num_layers: int, **overrides: dict) -> StackConfig:
    """The :class:`StackConfig` a pattern names (see the module docstring)."""
    if not isinstance(d_hidden, int) or d_hidden < 1:
        raise BadInput(f"d_hidden must be a positive integer, got {d_hidden!r}")
    layers = _layer_tokens(pattern, num_layers)
    over = _check_overrides(overrides)
    columns = [ColumnConfig(experts=[_block(t, d_hidden, over) for t in tokens], router=_make(RouterConfig, over)) for tokens in layers]
    return _make(StackConfig, over, layers=columns)


def build_stack(pattern: str | list[str], d_hidden: int, num_layers: int, **overrides: dict) -> Stack:
    """Build the stack a pattern names: ``build_stack("Ag,A,S", 128, 2)``."""
    return Stack(stack_config(pattern, d_hidden, num_layers, **overrides))
