"""The chain of format upgrades: pure functions ``(manifest, tensors) -> (manifest, tensors)``.

``upgrade`` applies them in order from a file's ``format_version`` to :data:`FORMAT_VERSION`, so a
checkpoint written by any earlier fiberlab loads, and ``fiberlab ckpt migrate`` rewrites it.
To change the format: bump ``FORMAT_VERSION`` in ``base.py`` and add one function here.

- 1 -> 2: the manifest gains ``checksum`` over the tensors.
- 2 -> 3: the checksum covers the rest of the manifest too (``base.checksum``).

Both recompute a checksum from the tensors at hand, so the caller verifies the stored one first
(``reader.read_verified_tensors``): an upgrade must never bless corrupt tensors.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fiberlab.checkpoint.base import FORMAT_VERSION, checksum, tensor_checksum

Tensors = dict[str, torch.Tensor]
Manifest = dict[str, Any]


def _v1_to_v2(manifest: Manifest, tensors: Tensors) -> tuple[Manifest, Tensors]:
    """v2 adds the tensor checksum to the manifest."""
    return {**manifest, "format_version": 2, "checksum": tensor_checksum(tensors)}, tensors


def _v2_to_v3(manifest: Manifest, tensors: Tensors) -> tuple[Manifest, Tensors]:
    """v3's checksum covers the manifest as well as the tensors."""
    upgraded = {**manifest, "format_version": 3}
    return {**upgraded, "checksum": checksum(upgraded, tensors)}, tensors


UPGRADES: dict[int, Callable[[Manifest, Tensors], tuple[Manifest, Tensors]]] = {1: _v1_to_v2, 2: _v2_to_v3}


def upgrade(manifest: Manifest, tensors: Tensors) -> tuple[Manifest, Tensors]:
    """Bring ``(manifest, tensors)`` from their version up to the current one.

    The version must have been checked (``base.check_version``): 1 to the current one."""
    version = manifest["format_version"]
    while version < FORMAT_VERSION:
        manifest, tensors = UPGRADES[version](manifest, tensors)
        version = manifest["format_version"]
    return manifest, tensors
