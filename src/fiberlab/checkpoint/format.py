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
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fiberlab.errors import BadInput, first_line

if TYPE_CHECKING:
    from fiberlab.checkpoint.manifest import Manifest

FORMAT_VERSION = 3
MANIFEST_KEY = "fiberlab"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a larger claim is corruption


class CheckpointError(BadInput):
    """A checkpoint that cannot be read: the message is one line naming the file and the fault."""


class NotACheckpoint(CheckpointError):
    """No fiberlab manifest could be found: not a safetensors file with our header (a legacy
    pickle, another library's file), or one damaged before its manifest."""


class FormatTooNew(CheckpointError):
    """The file's format version is newer than this fiberlab reads."""


def _version() -> str:
    from fiberlab import __version__

    return __version__


def _tensor_digest(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).digest()  # no copy: buffer protocol


def _tensors_hash(tensors: dict[str, torch.Tensor], workers: int | None = None) -> "hashlib._Hash":
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
            from fiberlab.checkpoint.compression import compress_file

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
        "fiberlab_version": _version(),
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
        names = {id(p): n for n, p in policy.named_parameters()}
        sd = optimizer.state_dict()
        groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
        order = [p for g in optimizer.param_groups for p in g["params"]]
        manifest["optimizer"] = {
            "class": type(optimizer).__name__,
            "param_groups": groups,
            "group_sizes": [len(g["params"]) for g in sd["param_groups"]],
            "param_names": [names.get(id(p), "") for p in order],
        }
        for idx, state in sd["state"].items():
            for key, val in state.items():
                t = val if torch.is_tensor(val) else torch.tensor(val)
                tensors[f"optimizer/{idx}/{key}"] = t.detach().to("cpu").contiguous()
    if rng is not None:
        manifest["rng"] = rng
    manifest.update(extra_manifest or {})
    if torch_rng is not None:
        tensors["rng/torch"] = torch_rng
    return write_checkpoint(path, manifest, tensors, compress=compress, level=level, shuffle=shuffle)


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


def parse_json(data: bytes | str) -> Any:
    """Parsed JSON, or None for anything that is not (bad bytes, bad syntax, nesting too deep)."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def read_raw_header(path: str | Path) -> RawHeader:
    """The header as stored (any version), reading only the header; a compressed file is
    decompressed only that far."""
    from fiberlab.checkpoint import compression

    path = Path(path)
    try:
        method = compression.detect(path)
        if method is not None:
            with compression.open_plain_stream(path) as f:
                return _parse_header(path, f.read(8), None, f.read)
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _parse_header(path, f.read(8), size, f.read)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None


def read_header(path: str | Path) -> dict[str, Any]:
    """The manifest exactly as stored (any version, unvalidated), reading only the header."""
    return read_raw_header(path).manifest


def check_version(path: str | Path, manifest: dict[str, Any]) -> int:
    """The stored ``format_version`` if this fiberlab reads it; else a one-line CheckpointError."""
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path}: invalid manifest (format_version={version!r}: an integer from 1 to {FORMAT_VERSION} is allowed)")
    if version > FORMAT_VERSION:
        raise FormatTooNew(f"{path}: format version {version} is newer than this fiberlab reads ({FORMAT_VERSION}); upgrade fiberlab")
    return version


def read_manifest(path: str | Path) -> "Manifest":
    """The validated manifest of ``path`` as stored (header only): a typed
    :class:`~fiberlab.checkpoint.manifest.Manifest`; CheckpointError for a bad or too new one."""
    from fiberlab.checkpoint.manifest import validate_manifest

    raw = read_header(path)
    check_version(path, raw)
    return validate_manifest(path, raw)


@contextlib.contextmanager
def plain_file(path: str | Path) -> Iterator[Path]:
    """``path`` itself when uncompressed, else a streamed, size-capped temporary plain copy."""
    from fiberlab.checkpoint import compression

    path = Path(path)
    if compression.detect(path) is None:
        yield path
    else:
        with compression.decompressed(path) as plain:
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


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt policy, its manifest (upgraded to the current format) and
    the trainer state tensors."""

    path: Path
    manifest: "Manifest"
    policy: torch.nn.Module
    optimizer_state: dict[str, torch.Tensor]
    torch_rng: torch.Tensor | None
    report: Any = None  # the CompatibilityReport it was loaded under

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore ``optimizer`` (built over the same parameters in the same order)."""
        info = self.manifest.optimizer
        if info is None:
            raise CheckpointError(f"{self.path}: holds no optimizer state")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in self.optimizer_state.items():
            idx, name = key.split("/", 1)
            state.setdefault(int(idx), {})[name] = t
        groups, start = [], 0
        for g, n in zip(info.param_groups, info.group_sizes):
            groups.append({**g, "params": list(range(start, start + n))})
            start += n
        try:
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{self.path}: its optimizer state does not fit this optimizer ({first_line(e)})") from None


def load(path: str | Path, device: str | torch.device = "cpu", env_spec: Any = None, force: bool = False, verify: bool = True) -> Checkpoint:
    """Load ``path``: validate it, rebuild the policy through the registry, restore its weights.

    Everything is checked before anything is allocated (``fiberlab.checkpoint.reader``): the
    manifest's types and ranges, the tensor index, and that the tensors are exactly those of the
    architecture the manifest names. Then the tensors are read and, with ``verify`` (the default),
    their checksum is checked; ``verify=False`` is for callers who verified the file already.
    Weights holding NaN or infinity are refused. A file without a checksum is refused unless
    ``force``.

    With ``env_spec`` (an :class:`~fiberlab.envs.base.EnvSpec` or its dict) compatibility is
    checked first: PARTIAL warns and remaps observation features and actions by name so the
    policy behaves as before; INCOMPATIBLE raises :class:`CheckpointError` with the report
    unless ``force``. A file of an older format version loads through the upgrade chain (PARTIAL).
    Every failure is a one-line :class:`CheckpointError`.
    """
    from fiberlab.checkpoint.reader import examine

    return examine(path, env_spec).load(device, force=force, verify=verify)
