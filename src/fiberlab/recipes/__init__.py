"""Named recipes: Python modules that return a :class:`TrainConfig`.

A recipe module defines ``DESCRIPTION`` (one line) and ``config()``. Families take a name after a
dot: ``atari.<Game>`` (any ALE game), ``popgym.<EnvName>`` (any popgym task) and
``assembly_lines.<curriculum>`` (a named curriculum); ``config(name)`` builds the member and a
module that is both a recipe and a family (assembly_lines) may describe the family apart in
``FAMILY_DESCRIPTION``.
"""
from __future__ import annotations

import importlib

from fiberlab.config import ConfigError, TrainConfig

RECIPES = ("demo", "arena", "navigation", "assembly_lines", "beam_rider", "darkroom")
FAMILIES = ("atari", "popgym", "assembly_lines")


def list_recipes() -> list[tuple[str, str]]:
    """(name, one-line description) of every recipe and family."""
    out = [(name, importlib.import_module(f"fiberlab.recipes.{name}").DESCRIPTION) for name in RECIPES]
    for fam in FAMILIES:
        module = importlib.import_module(f"fiberlab.recipes.{fam}")
        out.append((f"{fam}.<Name>", getattr(module, "FAMILY_DESCRIPTION", module.DESCRIPTION)))
    return out


def get_recipe(name: str) -> TrainConfig:
    """The config of recipe ``name``; :class:`ConfigError` names the allowed ones otherwise."""
    allowed = ", ".join([*RECIPES, *(f + ".<Name>" for f in FAMILIES)])
    if name in RECIPES:
        cfg = importlib.import_module(f"fiberlab.recipes.{name}").config()
    elif "." in name and name.split(".", 1)[0] in FAMILIES:
        family, item = name.split(".", 1)
        try:
            cfg = importlib.import_module(f"fiberlab.recipes.{family}").config(item)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    else:
        raise ConfigError(f"unknown recipe {name!r}: allowed are {allowed}")
    return cfg.model_copy(update={"recipe": name})
