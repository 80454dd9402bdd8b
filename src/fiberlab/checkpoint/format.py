"""The fiberlab checkpoint file: one safetensors file, a JSON manifest in its header.

Layout (format version 3; see ``versions.py`` for 1 and 2):
- header metadata key ``fiberlab`` -> JSON manifest: ``format_version``, ``fiberlab_version``,
  ``torch_version``, ``architecture``, ``policy_config`` (full, resolved), ``env_spec``,
  ``progress`` {epoch, agent_step, wall_time}, ``run``, ``seed``, ``config`` (the run's whole
  TrainConfig), ``optimizer`` (class, param groups' hyperparameters, parameter names) and
  ``rng`` (numpy and Python generator states), and ``checksum`` (sha256 over the tensors and the
  rest of the manifest, see :func:`checksum`).
- tensors: ``policy/<state_dict key>``; ``optimizer/<param index>/<state key>``; ``rng/torch``.

No pickle anywhere: loading never runs code, and the architecture is rebuilt through the
registry by name. Reading validates the header into typed models first (``manifest.py``) and
checks the tensors against a policy built on the meta device (``reader.py``) before anything is
allocated. Files are written to ``<name>.tmp`` and renamed, so a reader never sees a half-written
checkpoint under its final name.

This module is the file as bytes: writing it (:func:`save`, :func:`write_checkpoint`) and reading
its header and tensors as stored (:func:`read_raw_header`, :func:`read_manifest`,
:func:`read_tensors`), compressed or not. Loading a policy from it is ``reader.py``; the format
constants, errors and checksums are ``base.py``.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fiberlab import __version__
from fiberlab.checkpoint.base import (
    FORMAT_VERSION,
    MANIFEST_KEY,
    MAX_HEADER_BYTES,
    CheckpointError,
    NotACheckpoint,
    check_version,
    checksum,
    parse_json,
)
from fiberlab.checkpoint.compression import (
    compress_file,
    decompressed,
    detect,
    open_plain_stream,
)
from fiberlab.checkpoint.manifest import Manifest, validate_manifest
from fiberlab.errors import first_line


def write_checkpoint(path: str | Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor], compress: str | None = None, level: int | None = None, shuffle: bool = False) -> Path:
    """Write ``tensors`` with ``manifest`` (its checksum refreshed) atomically to ``path``.

    With ``compress`` the plain file is written first and then compressed to ``path`` (which
    should carry the method's extension); either way the final name appears only when complete.
    """
    path = Path(path)
    # The checksum is hashed on a thread while safetensors writes (both release the GIL): the
    # header gets a placeholder of the same length, patched in place once the digest is known.
    text = json.dumps({**manifest, "checksum": _CHECKSUM_PLACEHOLDER})
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(checksum, json.loads(text), tensors)
            save_file(tensors, str(tmp), metadata={MANIFEST_KEY: text})
            _patch_placeholder(tmp, digest.result())
        if compress is None:
            os.replace(tmp, path)
        else:
            compress_file(tmp, path, method=compress, level=level, shuffle=shuffle)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_CHECKSUM_PLACEHOLDER = "sha256:" + "0" * 64


def _patch_placeholder(path: Path, checksum: str) -> None:
    """Overwrite the checksum placeholder in ``path``'s header with ``checksum`` (same length)."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = f.read(n)
        at = header.find(_CHECKSUM_PLACEHOLDER.encode())
        if at < 0 or header.find(_CHECKSUM_PLACEHOLDER.encode(), at + 1) >= 0 or len(checksum) != len(_CHECKSUM_PLACEHOLDER):
            raise RuntimeError("checksum placeholder not found exactly once in the header")
        f.seek(8 + at)
        f.write(checksum.encode())


def save(
    path: str | Path,
    policy: torch.nn.Module,
    *,
    env_spec: dict[str, Any],
    progress: dict[str, Any],
    run: str,
    seed: int,
    config: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, Any] | None = None,
    torch_rng: torch.Tensor | None = None,
    compress: str | None = None,
    level: int | None = None,
    shuffle: bool = False,
    extra_manifest: dict[str, Any] | None = None,
) -> Path:
    """Write ``policy`` (and optionally optimizer and RNG state) atomically to ``path``.

    ``compress`` = ``"zstd"``, ``"lz4"`` or ``"gzip"`` compresses the file (``shuffle`` groups the
    bytes of float tensors by significance first, which roughly doubles the gain on weights).
    ``extra_manifest`` adds keys to the manifest (e.g. ``migrated_from``).
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in policy.state_dict().items():
        tensors[f"policy/{k}"] = v.detach().to("cpu").contiguous()
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "fiberlab_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "architecture": policy.config.name,
        "policy_config": policy.config.model_dump(),
        "env_spec": env_spec,
        "progress": progress,
        "run": run,
        "seed": seed,
        "config": config,
    }
    if optimizer is not None:
        manifest["optimizer"], state = optimizer_tensors(optimizer, policy)
        tensors.update(state)
    if rng is not None:
        manifest["rng"] = rng
    manifest.update(extra_manifest or {})
    if torch_rng is not None:
        tensors["rng/torch"] = torch_rng
    return write_checkpoint(path, manifest, tensors, compress=compress, level=level, shuffle=shuffle)


def optimizer_tensors(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``optimizer``'s manifest record and its ``optimizer/<param index>/<state key>`` tensors (on the CPU).

    The record holds ``class``, the ``param_groups`` without their parameters, ``group_sizes`` and
    ``param_names`` (each state index's parameter by its name in ``module``; "" for one outside it):
    with the tensors, enough to rebuild ``optimizer.state_dict()`` and no pickle. Policy and AD
    checkpoints both store their optimizer this way, so one record model
    (:class:`~fiberlab.checkpoint.manifest.OptimizerRecord`) and one tensor check
    (``reader.module_tensor_problems``) serve both.
    """
    names = {id(p): n for n, p in module.named_parameters()}
    sd = optimizer.state_dict()
    order = [p for g in optimizer.param_groups for p in g["params"]]
    record = {
        "class": type(optimizer).__name__,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]],
        "group_sizes": [len(g["params"]) for g in sd["param_groups"]],
        "param_names": [names.get(id(p), "") for p in order],
    }
    tensors: dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for key, val in state.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"optimizer/{idx}/{key}"] = t.detach().to("cpu").contiguous()
    return record, tensors


@dataclass
class RawHeader:
    """A checkpoint's header exactly as stored: nothing in it is trusted yet (see ``manifest.py``)."""

    manifest: dict[str, Any]  # the ``fiberlab`` manifest, parsed JSON
    index: dict[str, Any]  # safetensors' tensor entries, parsed JSON
    data_len: int | None  # bytes after the header in a plain file; None when compressed


def _parse_header(path: Path, raw8: bytes, size: int | None, read: Callable[[int], bytes]) -> RawHeader:
    """The raw header from a stream at its start; one-line CheckpointError otherwise."""
    if len(raw8) < 8:
        raise NotACheckpoint(f"{path}: not a fiberlab checkpoint (file is too short)")
    (n,) = struct.unpack("<Q", raw8)
    if n > MAX_HEADER_BYTES or (size is not None and n > size - 8):
        raise NotACheckpoint(f"{path}: corrupt checkpoint (header claims {n} bytes, file has {size if size is not None else 'fewer'})")
    data = read(n)
    if len(data) < n:
        raise NotACheckpoint(f"{path}: corrupt checkpoint (header claims {n} bytes, file ends first)")
    header = parse_json(data)
    if header is None:
        raise NotACheckpoint(f"{path}: corrupt checkpoint (header is not valid JSON)")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get(MANIFEST_KEY), str):
        raise NotACheckpoint(f"{path}: not a fiberlab checkpoint (no '{MANIFEST_KEY}' manifest in the header)")
    manifest = parse_json(meta[MANIFEST_KEY])
    if manifest is None:
        raise CheckpointError(f"{path}: corrupt checkpoint (manifest is not valid JSON, or nested too deeply)")
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (manifest is not a JSON object)")
    index = {k: v for k, v in header.items() if k != "__metadata__"}
    return RawHeader(manifest, index, None if size is None else size - 8 - n)


def read_raw_header(path: str | Path) -> RawHeader:
    """The header as stored (any version), reading only the header; a compressed file is
    decompressed only that far."""
    path = Path(path)
    try:
        method = detect(path)
        if method is not None:
            with open_plain_stream(path) as f:
                return _parse_header(path, f.read(8), None, f.read)
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _parse_header(path, f.read(8), size, f.read)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None


def read_header(path: str | Path) -> dict[str, Any]:
    """The manifest exactly as stored (any version, unvalidated), reading only the header."""
    return read_raw_header(path).manifest


def read_manifest(path: str | Path) -> Manifest:
    """The validated manifest of ``path`` as stored (header only): a typed
    :class:`~fiberlab.checkpoint.manifest.Manifest`; CheckpointError for a bad or too new one."""
    raw = read_header(path)
    check_version(path, raw)
    return validate_manifest(path, raw)


@contextlib.contextmanager
def plain_file(path: str | Path) -> Iterator[Path]:
    """``path`` itself when uncompressed, else a streamed, size-capped temporary plain copy."""
    path = Path(path)
    if detect(path) is None:
        yield path
    else:
        with decompressed(path) as plain:
            yield plain


def read_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` (decompressed if needed), unverified; one-line CheckpointError if
    the file is corrupt. ``fiberlab.checkpoint.reader`` verifies them."""
    path = Path(path)
    try:
        with plain_file(path) as plain:
            return load_file(str(plain), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint ({first_line(e)})") from None
