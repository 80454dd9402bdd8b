"""The fiberlab checkpoint file: one safetensors file, a JSON manifest in its header.

Layout (format version 2; version 1 lacked ``checksum``, see ``versions.py``):
- header metadata key ``fiberlab`` -> JSON manifest: ``format_version``, ``fiberlab_version``,
  ``torch_version``, ``architecture``, ``policy_config`` (full, resolved), ``env_spec``,
  ``progress`` {epoch, agent_step, wall_time}, ``run``, ``seed``, ``config`` (the run's whole
  TrainConfig), ``optimizer`` (class, param groups' hyperparameters, parameter names) and
  ``rng`` (numpy and Python generator states), and ``checksum`` (sha256 over the tensors, see
  :func:`tensor_checksum`).
- tensors: ``policy/<state_dict key>``; ``optimizer/<param index>/<state key>``; ``rng/torch``.

No pickle anywhere: loading never runs code, and the architecture is rebuilt through the
registry by name. Files are written to ``<name>.tmp`` and renamed, so a reader never sees a
half-written checkpoint under its final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fiberlab.errors import BadInput

FORMAT_VERSION = 2
MANIFEST_KEY = "fiberlab"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a larger claim is corruption


class CheckpointError(BadInput):
    """A checkpoint that cannot be read: the message is one line naming the file and the fault."""


def _version() -> str:
    from fiberlab import __version__

    return __version__


def _tensor_digest(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).digest()  # no copy: buffer protocol


def tensor_checksum(tensors: dict[str, torch.Tensor], workers: int | None = None) -> str:
    """sha256 over every tensor's name, dtype, shape and sha256 digest, in name order.

    Why over tensors and not file bytes: the manifest holding the checksum lives in the file's
    header, so it cannot cover the file itself; tensors are what a flipped byte would corrupt.
    The per-tensor digests run on a small thread pool (hashlib releases the GIL), so hashing a
    50 MB checkpoint costs about half of what one thread would.
    """
    names = sorted(tensors)
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_tensor_digest, (tensors[n] for n in names)))
    h = hashlib.sha256()
    for name, digest in zip(names, digests):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(digest)
    return "sha256:" + h.hexdigest()


def write_checkpoint(path: str | Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor], compress: str | None = None, level: int | None = None, shuffle: bool = False) -> Path:
    """Write ``tensors`` with ``manifest`` (its checksum refreshed) atomically to ``path``.

    With ``compress`` the plain file is written first and then compressed to ``path`` (which
    should carry the method's extension); either way the final name appears only when complete.
    """
    path = Path(path)
    # The checksum is hashed on a thread while safetensors writes (both release the GIL): the
    # header gets a placeholder of the same length, patched in place once the digest is known.
    manifest = {**manifest, "checksum": _CHECKSUM_PLACEHOLDER}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(tensor_checksum, tensors)
            save_file(tensors, str(tmp), metadata={MANIFEST_KEY: json.dumps(manifest)})
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


def save_checkpoint(
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


def _parse_full_header(path: Path, raw8: bytes, size: int | None, read: Callable[[int], bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, safetensors tensor index) from a header; one-line CheckpointError otherwise."""
    if len(raw8) < 8:
        raise CheckpointError(f"{path}: not a fiberlab checkpoint (file is too short)")
    (n,) = struct.unpack("<Q", raw8)
    if n > MAX_HEADER_BYTES or (size is not None and n > size - 8):
        raise CheckpointError(f"{path}: corrupt checkpoint (header claims {n} bytes, file has {size if size is not None else 'fewer'})")
    data = read(n)
    if len(data) < n:
        raise CheckpointError(f"{path}: corrupt checkpoint (header claims {n} bytes, file ends first)")
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt checkpoint (header is not valid JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or MANIFEST_KEY not in meta:
        raise CheckpointError(f"{path}: not a fiberlab checkpoint (no '{MANIFEST_KEY}' manifest in the header)")
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt checkpoint (manifest is not valid JSON)") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (manifest is not a JSON object)")
    index = {k: v for k, v in header.items() if k != "__metadata__"}
    return manifest, index


def read_header_and_index(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest as stored (any version) and the tensor index (name -> dtype, shape,
    data_offsets), reading only the header; a compressed file is decompressed only that far."""
    from fiberlab.checkpoint import compression

    path = Path(path)
    try:
        method = compression.detect(path)
        if method is not None:
            with compression.open_plain_stream(path) as f:
                return _parse_full_header(path, f.read(8), None, f.read)
        size = path.stat().st_size
        with open(path, "rb") as f:
            return _parse_full_header(path, f.read(8), size, f.read)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None


def read_header(path: str | Path) -> dict[str, Any]:
    """The manifest exactly as stored (any version), reading only the header."""
    return read_header_and_index(path)[0]


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of ``path`` (header only); refuses a format newer than this fiberlab."""
    manifest = read_header(path)
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version} is newer than this fiberlab reads ({FORMAT_VERSION}); upgrade fiberlab")
    return manifest


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
    """Every tensor of ``path`` (decompressed if needed); one-line CheckpointError if corrupt."""
    path = Path(path)
    try:
        with plain_file(path) as plain:
            return load_file(str(plain), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupt checkpoint ({msg})") from None


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Manifest and tensors, upgraded through the version chain to the current format."""
    from fiberlab.checkpoint.versions import upgrade

    manifest = read_manifest(path)
    tensors = read_tensors(path, device)
    return upgrade(manifest, tensors)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt policy, its manifest and the trainer state tensors."""

    path: Path
    manifest: dict[str, Any]
    policy: torch.nn.Module
    optimizer_state: dict[str, torch.Tensor]
    torch_rng: torch.Tensor | None
    report: Any = None  # the CompatibilityReport it was loaded under

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore ``optimizer`` (built over the same parameters in the same order)."""
        info = self.manifest.get("optimizer")
        if info is None:
            raise CheckpointError(f"{self.path}: holds no optimizer state")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in self.optimizer_state.items():
            idx, name = key.split("/", 1)
            state.setdefault(int(idx), {})[name] = t
        groups, start = [], 0
        for g, n in zip(info["param_groups"], info["group_sizes"]):
            groups.append({**g, "params": list(range(start, start + n))})
            start += n
        optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", env_spec: Any = None, force: bool = False) -> Checkpoint:
    """Load ``path``: rebuild the policy through the registry and restore its weights.

    With ``env_spec`` (an :class:`~fiberlab.envs.base.EnvSpec` or its dict) compatibility is
    checked first: PARTIAL warns and remaps observation features and actions by name so the
    policy behaves as before; INCOMPATIBLE raises :class:`CheckpointError` with the report
    unless ``force``. A file of an older format version loads through the upgrade chain (PARTIAL).
    """
    path = Path(path)
    stored = read_manifest(path)
    return checkpoint_from(path, stored, read_tensors(path, device), device, env_spec, force)


def checkpoint_from(path: Path, stored: dict[str, Any], tensors: dict[str, torch.Tensor], device: str | torch.device = "cpu", env_spec: Any = None, force: bool = False) -> Checkpoint:
    """Build a :class:`Checkpoint` from a manifest as stored and its tensors (see load_checkpoint)."""
    from fiberlab.checkpoint.compat import apply_remap, check_compatibility
    from fiberlab.checkpoint.versions import upgrade
    from fiberlab.policies import build_policy

    report = check_compatibility(stored, env_spec, path=path)
    if report.level == "INCOMPATIBLE" and not force:
        raise CheckpointError(f"{path}: incompatible: {'; '.join(report.errors)}")
    if report.level == "PARTIAL":
        warnings.warn(f"{path}: partially compatible: {'; '.join(report.warnings)}", stacklevel=3)
    manifest, tensors = upgrade(stored, tensors)
    try:
        # Built on the meta device: no time spent initialising weights the file overwrites
        # (orthogonal init of a 3.9 M-parameter net costs ~0.1 s), then filled from the file.
        with torch.device("meta"):
            policy = build_policy(report.policy_config or manifest["policy_config"])
        policy = policy.to_empty(device=device)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the policy ({str(e).splitlines()[0]})") from None
    weights = {k[len("policy/"):]: v for k, v in tensors.items() if k.startswith("policy/")}
    try:
        policy.load_state_dict(weights, strict=True)
        policy.refresh_buffers()
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise CheckpointError(f"{path}: weights do not fit the architecture ({lines[1] if len(lines) > 1 else lines[0]})") from None
    if report.remap is not None:
        policy = apply_remap(policy, report.remap)
    opt = {k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")}
    return Checkpoint(path, manifest, policy, opt, tensors.get("rng/torch"), report)
