"""From a spec to its cells: the grid expanded, each (variant, seed) named deterministically, and
every cell's run config built and validated before anything runs.

A cell's name is its axis values and seed, ``<last key part>-<value>`` joined by ``.``, e.g.
``pattern-AgSA.d_hidden-128.num_layers-3.seed-2``: the same spec always gives the same names, so
each (variant, seed) has exactly one run folder and a rerun finds it. The name is the run's name,
so it keeps to what run names allow (letters, digits, ``.``, ``_``, ``-``; ``=`` is not one):
other characters are written as ``_<hex>`` (``M^`` -> ``M_5e``), lists as their items joined by ``-``.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fiberlab.config import TrainConfig, apply_overrides, override_strings
from fiberlab.errors import BadInput, FiberlabError, first_line
from fiberlab.sweep.spec import SweepSpec

_SAFE = re.compile(r"[A-Za-z0-9._-]")


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: its name, its variant (the name without the seed), axis values, seed."""

    name: str
    variant: str
    axes: dict[str, Any]
    seed: int
    config: TrainConfig | None = field(default=None, compare=False)


def _text(value: Any) -> str:
    """A value as it appears in a name: lists joined by '-', unsafe characters as _<hex>."""
    if isinstance(value, (list, tuple)):
        return "-".join(_text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    raw = str(value)
    return "".join(ch if _SAFE.fullmatch(ch) else f"_{ord(ch):02x}" for ch in raw)


def _labels(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key, or the whole key where two last parts would clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def variants(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of axis values: the grid of ``axes`` times each zip group's rows, in spec order."""
    grid = [[(key, v) for v in values] for key, values in spec.axes.items()]
    zipped = [[tuple(zip(group, row, strict=True)) for row in zip(*group.values(), strict=True)] for group in spec.zip]
    out = []
    for combo in itertools.product(*grid, *zipped):
        values: dict[str, Any] = {}
        for part in combo:
            if isinstance(part[0], tuple):  # a zip row: several (key, value) pairs
                values.update(dict(part))
            else:
                values[part[0]] = part[1]
        out.append(values)
    return out


def expand(spec: SweepSpec) -> list[Cell]:
    """All cells, variants in spec order and seeds within each; names are unique or BadInput says which clash."""
    keys = list(spec.axes) + [k for group in spec.zip for k in group]
    labels = _labels(keys)
    cells, seen = [], {}
    for values in variants(spec):
        variant = ".".join(f"{labels[k]}-{_text(values[k])}" for k in keys) or "base"
        for seed in spec.seeds:
            name = f"{variant}.seed-{seed}" if keys else f"seed-{seed}"
            if name in seen:
                raise BadInput(f"sweep {spec.name}: cells {seen[name]} and {values} both get the name {name!r}: give axis values that differ as text")
            seen[name] = values
            cells.append(Cell(name=name, variant=variant, axes=dict(values), seed=seed))
    return cells


def cell_overrides(spec: SweepSpec, cell: Cell, train_dir: str | Path) -> list[str]:
    """The overrides that make a cell's run: the base's, the axis values, seed, run, folder, budget.

    Cells run in parallel, so each uses one torch thread and plain progress lines by default (the
    base may say otherwise); W&B groups them by sweep and tags them with their axis values.
    """
    over = ["trainer.torch_threads=1", "trainer.update_threads=1", "progress=none", *override_strings(spec.base.overrides)]
    over += override_strings(cell.axes)
    over += [f"seed={cell.seed}", f"run={cell.name}", f"train_dir={Path(train_dir) / spec.name}", "resume=true"]
    over += override_strings({"wandb.group": spec.name, "wandb.tags": [f"{k}={v}" for k, v in cell.axes.items()] + [f"seed={cell.seed}"]})
    if spec.budget is not None:
        over.append(f"trainer.total_timesteps={spec.budget}")
    return over


def build_cells(spec: SweepSpec, train_dir: str | Path) -> list[Cell]:
    """Expand the spec and build every cell's validated run config, before anything runs.

    A bad recipe, axis key or value is one BadInput line naming the cell, the key and the value.
    """
    from fiberlab.recipes import get_recipe

    try:
        base = get_recipe(spec.base.recipe)
    except FiberlabError as e:
        raise BadInput(f"sweep {spec.name}: base recipe: {first_line(e)}") from None
    out = []
    for cell in expand(spec):
        try:
            cfg = apply_overrides(base, cell_overrides(spec, cell, train_dir))
        except FiberlabError as e:
            raise BadInput(f"sweep {spec.name}, cell {cell.name}: {first_line(e)}") from None
        out.append(Cell(cell.name, cell.variant, cell.axes, cell.seed, cfg))
    return out
