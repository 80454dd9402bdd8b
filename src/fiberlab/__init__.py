"""fiberlab: train recurrent PPO agents, then make them smaller.

The verbs, each documented where it is defined (:mod:`fiberlab.api` unless noted)::

    fiberlab.train(recipe_or_config, overrides, **more)  -> TrainResult (policy, run_dir, last_checkpoint, metrics)
    fiberlab.evaluate(policy_or_path, env=None, episodes=10)  -> mean return, 95 % interval, lengths
    fiberlab.load(path)  -> Checkpoint (policy, manifest)
    fiberlab.find_fibers(policy, thresholds=None)  -> Fibers
    fiberlab.collapse(policy, fibers=None)  -> the smaller policy
    fiberlab.Callback  (fiberlab.rl.callbacks): hooks into training

They are imported on first use, so ``import fiberlab`` stays light (the CLI's error path and
``--help`` never import torch).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "train": "fiberlab.api",
    "evaluate": "fiberlab.api",
    "load": "fiberlab.api",
    "find_fibers": "fiberlab.api",
    "collapse": "fiberlab.api",
    "Callback": "fiberlab.rl.callbacks",
    "TrainResult": "fiberlab.rl.trainer",
    "TrainConfig": "fiberlab.config",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fiberlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
