"""What every module of the checkpoint package shares: the errors, the format constants, JSON
parsing that never raises, the version check and the checksums.

It imports none of its siblings, so each of them can import it at the top: the package's imports
go one way (``base`` <- ``manifest``, ``versions`` <- ``compression*`` <- ``format`` <- ``compat`` <- ``reader``
<- ``migrate*``), with no import hidden inside a function to break a circle.

To change the file format: bump :data:`FORMAT_VERSION` here and add one upgrade to ``versions.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from fiberlab.errors import BadInput

FORMAT_VERSION = 3
MANIFEST_KEY = "fiberlab"  # the safetensors header metadata key holding the JSON manifest
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a larger claim is corruption


class CheckpointError(BadInput):
    """A checkpoint that cannot be read: the message is one line naming the file and the fault."""


class NotACheckpoint(CheckpointError):
    """No fiberlab manifest could be found: not a safetensors file with our header (a legacy
    pickle, another library's file), or one damaged before its manifest."""


class FormatTooNew(CheckpointError):
    """The file's format version is newer than this fiberlab reads."""


def parse_json(data: bytes | str) -> Any:
    """Parsed JSON, or None for anything that is not (bad bytes, bad syntax, nesting too deep)."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def check_version(path: str | Path, manifest: dict[str, Any]) -> int:
    """The stored ``format_version`` if this fiberlab reads it; else a one-line CheckpointError."""
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path}: invalid manifest (format_version={version!r}: an integer from 1 to {FORMAT_VERSION} is allowed)")
    if version > FORMAT_VERSION:
        raise FormatTooNew(f"{path}: format version {version} is newer than this fiberlab reads ({FORMAT_VERSION}); upgrade fiberlab")
    return version


# --------------------------------------------------------------------------- checksums
def _tensor_digest(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).digest()  # no copy: buffer protocol


def _tensors_hash(tensors: dict[str, torch.Tensor], workers: int | None = None) -> hashlib._Hash:
    names = sorted(tensors)
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_tensor_digest, (tensors[n] for n in names)))
    h = hashlib.sha256()
    for name, digest in zip(names, digests):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(digest)
    return h


def tensor_checksum(tensors: dict[str, torch.Tensor], workers: int | None = None) -> str:
    """Format 2's checksum: sha256 over every tensor's name, dtype, shape and sha256 digest, in
    name order. The per-tensor digests run on a small thread pool (hashlib releases the GIL)."""
    return "sha256:" + _tensors_hash(tensors, workers).hexdigest()


def canonical_manifest(manifest: dict[str, Any]) -> bytes:
    """The manifest without its ``checksum``, as canonical JSON (sorted keys, ASCII, no spaces).

    Computed from the parsed JSON, so the writer hashes exactly what a reader will parse back."""
    rest = {k: v for k, v in manifest.items() if k != "checksum"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def checksum(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """The checksum a manifest of its ``format_version`` records for ``tensors``.

    Format 3 and later: ``sha256(tensor part | canonical manifest)``, so a changed manifest field
    (a width, ``obs_scale``, the env spec) is caught like a changed weight. Format 2 covered the
    tensors only (:func:`tensor_checksum`). The checksum lives in the header, so it cannot cover
    the file's bytes as such; it covers everything they mean.
    """
    h = _tensors_hash(tensors)
    version = manifest.get("format_version")
    if type(version) is int and version >= 3:
        h.update(b"|manifest|")
        h.update(canonical_manifest(manifest))
    return "sha256:" + h.hexdigest()


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes, read ``block`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
