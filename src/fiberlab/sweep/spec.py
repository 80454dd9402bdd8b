"""A sweep spec: one YAML file (or the same model built in Python) that says which runs make up a
sweep. Unknown keys are refused, so a typo is an error, not a silently ignored axis.

    name: memory_cells
    base: {recipe: demo, overrides: {policy.core: cortex, policy.num_layers: 3}}
    axes: {policy.pattern: [Ag, X, M, S, A]}          # a grid: the product of every axis
    zip: [{policy.d_hidden: [64, 128], policy.num_layers: [6, 3]}]   # moves together
    seeds: [1, 2, 3, 4, 5]
    budget: 2000000                                    # trainer.total_timesteps of every cell
    resources: {cpus: 1, gpus: 0}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fiberlab.errors import BadInput, first_line

# set by the sweep for every cell: an axis over them would be a different sweep
RESERVED_KEYS = ("seed", "run", "train_dir", "resume", "trainer.total_timesteps")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(_Strict):
    """What every cell shares: a recipe and overrides (the CLI's ``key=value`` strings or a dict)."""

    recipe: str = "demo"
    overrides: list[str] | dict[str, Any] = Field(default_factory=list)


class Resources(_Strict):
    """What one cell asks of the executor: CPU cores and GPUs (fractions allowed for Ray)."""

    cpus: int = Field(1, ge=1)
    gpus: float = Field(0, ge=0)
    accelerators: list[str] = Field(default_factory=lambda: ["L4:1"])  # SkyPilot alternatives when gpus > 0


class SweepSpec(_Strict):
    """The sweep: a name, a base, axes (a grid), ``zip`` groups (axes that move together), explicit
    seeds, the per-cell budget and resources. See the module docstring for an example."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base: Base = Base()
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    budget: int | None = Field(None, ge=1)  # trainer.total_timesteps of every cell; None: the recipe's
    resources: Resources = Resources()
    metric: str = "episode_return"

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat a value: each (variant, seed) runs exactly once")
        return seeds

    @model_validator(mode="after")
    def _axes_make_sense(self) -> SweepSpec:
        keys: list[str] = []
        for key, values in self.axes.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
            keys.append(key)
        for i, group in enumerate(self.zip):
            lengths = {k: len(v) for k, v in group.items()}
            if not group or len(set(lengths.values())) != 1 or 0 in lengths.values():
                raise ValueError(f"zip group {i} {lengths}: its axes need the same, non-zero number of values")
            keys += list(group)
        for key in keys:
            if key in RESERVED_KEYS:
                raise ValueError(f"axis {key!r} is set by the sweep itself: use 'seeds' and 'budget' ({', '.join(RESERVED_KEYS)} are reserved)")
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"axis {repeated[0]!r} appears twice (in axes or zip groups)")
        return self

    def base_hash(self) -> str:
        """What a finished cell's results depend on besides its axis values: base, budget, metric.
        Changing it makes old cells incomparable, so an existing sweep refuses it unless forced."""
        return _digest({"base": self.base.model_dump(), "budget": self.budget})

    def spec_hash(self) -> str:
        return _digest(self.model_dump())


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_spec(data: Any, where: str = "spec") -> SweepSpec:
    """A :class:`SweepSpec` from its dict form; a bad field is one BadInput line naming it."""
    if not isinstance(data, dict):
        raise BadInput(f"{where}: a sweep spec must be a mapping (name, base, axes, zip, seeds, budget, resources), got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        value = f" {err['input']!r}" if err["type"] in ("extra_forbidden", "string_pattern_mismatch") or "type" in err["type"] else ""
        raise BadInput(f"{where}: bad {loc}{value}: {first_line(msg)}") from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read a YAML sweep spec; a missing or malformed file is one BadInput line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such sweep spec file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: not valid YAML ({first_line(e)})") from None
    return parse_spec(data, str(path))
