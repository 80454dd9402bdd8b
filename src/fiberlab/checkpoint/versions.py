"""The chain of format upgrades: pure functions ``(manifest, tensors) -> (manifest, tensors)``.

``upgrade`` applies them in order from a file's ``format_version`` to :data:`FORMAT_VERSION`, so a
checkpoint written by any earlier fiberlab loads, and ``fiberlab ckpt migrate`` rewrites it.
To change the format: bump ``FORMAT_VERSION`` in ``format.py`` and add one function here.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

Tensors = dict[str, torch.Tensor]
Manifest = dict[str, Any]


def _v1_to_v2(manifest: Manifest, tensors: Tensors) -> tuple[Manifest, Tensors]:
    """v2 adds the tensor checksum to the manifest."""
    from fiberlab.checkpoint.format import tensor_checksum

    return {**manifest, "format_version": 2, "checksum": tensor_checksum(tensors)}, tensors


UPGRADES: dict[int, Callable[[Manifest, Tensors], tuple[Manifest, Tensors]]] = {1: _v1_to_v2}


def upgrade(manifest: Manifest, tensors: Tensors) -> tuple[Manifest, Tensors]:
    """Bring ``(manifest, tensors)`` from their version up to the current one."""
    from fiberlab.checkpoint.format import FORMAT_VERSION

    version = int(manifest.get("format_version", 1))
    while version < FORMAT_VERSION:
        manifest, tensors = UPGRADES[version](manifest, tensors)
        version = int(manifest["format_version"])
    return manifest, tensors
