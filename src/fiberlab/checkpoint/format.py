"""The fiberlab checkpoint file: one safetensors file, a JSON manifest in its header.

Layout (format version 1):
- header metadata key ``fiberlab`` -> JSON manifest: ``format_version``, ``fiberlab_version``,
  ``torch_version``, ``architecture``, ``policy_config`` (full, resolved), ``env_spec``,
  ``progress`` {epoch, agent_step, wall_time}, ``run``, ``seed``, ``config`` (the run's whole
  TrainConfig), ``optimizer`` (class, param groups' hyperparameters, parameter names) and
  ``rng`` (numpy and Python generator states).
- tensors: ``policy/<state_dict key>``; ``optimizer/<param index>/<state key>``; ``rng/torch``.

No pickle anywhere: loading never runs code, and the architecture is rebuilt through the
registry by name. Files are written to ``<name>.tmp`` and renamed, so a reader never sees a
half-written checkpoint under its final name.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
MANIFEST_KEY = "fiberlab"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a larger claim is corruption


class CheckpointError(Exception):
    """A checkpoint that cannot be read: the message is one line naming the file and the fault."""


def _version() -> str:
    from fiberlab import __version__

    return __version__


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
) -> Path:
    """Write ``policy`` (and optionally optimizer and RNG state) atomically to ``path``."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in policy.state_dict().items():
        tensors[f"policy/{k}"] = v.detach().to("cpu").contiguous().clone()
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
                tensors[f"optimizer/{idx}/{key}"] = t.detach().to("cpu").contiguous().clone()
    if rng is not None:
        manifest["rng"] = rng
    if torch_rng is not None:
        tensors["rng/torch"] = torch_rng.clone()
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata={MANIFEST_KEY: json.dumps(manifest)})
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read only the header of ``path`` and return its manifest (no tensor data is read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: not a fiberlab checkpoint (file of {size} bytes is too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise CheckpointError(f"{path}: corrupt checkpoint (header claims {n} bytes, file has {size})")
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt checkpoint (header is not valid JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or MANIFEST_KEY not in meta:
        raise CheckpointError(f"{path}: not a fiberlab checkpoint (no '{MANIFEST_KEY}' manifest in the header)")
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt checkpoint (manifest is not valid JSON)") from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {manifest['format_version']} is newer than this fiberlab reads ({FORMAT_VERSION}); upgrade fiberlab"
        )
    return manifest


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt policy, its manifest and the trainer state tensors."""

    path: Path
    manifest: dict[str, Any]
    policy: torch.nn.Module
    optimizer_state: dict[str, torch.Tensor]
    torch_rng: torch.Tensor | None

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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load ``path``: rebuild the policy through the registry and restore its weights."""
    from fiberlab.policies import build_policy

    path = Path(path)
    manifest = read_manifest(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupt checkpoint ({msg})") from None
    try:
        policy = build_policy(manifest["policy_config"]).to(device)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the policy ({str(e).splitlines()[0]})") from None
    weights = {k[len("policy/"):]: v for k, v in tensors.items() if k.startswith("policy/")}
    try:
        policy.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the architecture ({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
    opt = {k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")}
    return Checkpoint(path, manifest, policy, opt, tensors.get("rng/torch"))
