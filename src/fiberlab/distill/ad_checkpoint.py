"""AD transformers in fiberlab's safe checkpoint format: safetensors + a JSON manifest, no pickle.

The file is written by :func:`fiberlab.checkpoint.format.write_checkpoint` (atomic: a temporary
name, then a rename; the checksum covers the tensors AND the manifest) and read back with that
module's header and tensor readers. The manifest says ``kind: "ad_transformer"`` and holds the
whole :class:`~fiberlab.distill.config.ADConfig` (so the network is rebuilt from the file alone),
the model's sizes, a free-form ``meta`` (step, env, dataset, test accuracy, marker rates, ...) and,
in a resumable ``last`` checkpoint, the optimizer record and the scheduler state. The optimizer is
stored exactly as in a policy checkpoint (:func:`fiberlab.checkpoint.format.optimizer_tensors`,
validated by :class:`fiberlab.checkpoint.manifest.OptimizerRecord`).

Tensors: ``model/<state_dict key>``, ``optimizer/<param index>/<state key>``, ``rng/<name>``
(uint8 generator states).

Loading trusts nothing before it is checked, in this order: the header (size-capped, by the
checkpoint package), the manifest (a pydantic model; the config re-validated as an ADConfig), the
tensor index against a model built on the meta device (names, shapes, dtypes: a bogus width is
refused before anything is allocated; the same check as a policy checkpoint's,
:func:`fiberlab.checkpoint.reader.module_tensor_problems`), the checksum, finiteness. Any fault is ONE
:class:`~fiberlab.errors.BadInput` line naming the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from fiberlab import __version__
from fiberlab.checkpoint.base import FORMAT_VERSION, CheckpointError, checksum
from fiberlab.checkpoint.format import (
    optimizer_tensors,
    read_raw_header,
    read_tensors,
    write_checkpoint,
)
from fiberlab.checkpoint.manifest import OptimizerRecord, validate_index
from fiberlab.checkpoint.reader import module_tensor_problems, restore_optimizer
from fiberlab.distill.config import ADConfig
from fiberlab.distill.model import ADTransformer
from fiberlab.errors import BadInput

KIND = "ad_transformer"
MODEL_PREFIX = "model/"
_RNG_KEY = re.compile(r"^rng/([A-Za-z_][A-Za-z0-9_]{0,63})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSizes(_Strict):
    num_states: int
    num_actions: int
    grid: int


class ADManifest(_Strict):
    """What an AD checkpoint's header must hold; anything else is not ours."""

    format_version: int
    kind: Literal["ad_transformer"]
    fiberlab_version: str
    torch_version: str
    config: dict[str, Any]
    model: ModelSizes
    meta: dict[str, Any]
    optimizer: OptimizerRecord | None = None
    scheduler: dict[str, Any] | None = None
    checksum: str

    @model_validator(mode="before")
    @classmethod
    def _legacy_optimizer(cls, data: Any) -> Any:
        """Files written before the optimizer record was shared with policy checkpoints (``cls``,
        each group's ``size``) still resume: their record is read as the shared layout. The
        checksum covers the manifest as stored, so this changes nothing it verifies."""
        opt = data.get("optimizer") if isinstance(data, dict) else None
        groups = opt.get("param_groups") if isinstance(opt, dict) and "cls" in opt else None
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            return data
        return {**data, "optimizer": {"class": opt["cls"], "param_groups": [{k: v for k, v in g.items() if k != "size"} for g in groups],
                                      "group_sizes": [g.get("size") for g in groups], "param_names": opt.get("param_names")}}


@dataclass
class ADCheckpoint:
    """A loaded AD checkpoint: the model and everything a resumed run needs."""

    path: Path
    model: ADTransformer
    config: ADConfig
    meta: dict[str, Any]
    optimizer: OptimizerRecord | None = None
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)  # "<index>/<key>" -> tensor
    scheduler: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] = field(default_factory=dict)

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore ``optimizer`` (built over this model's parameters, in the same order)."""
        if self.optimizer is None:
            raise BadInput(f"{self.path}: holds no optimizer state (a best checkpoint; resume from last.safetensors)")
        if type(optimizer).__name__ != self.optimizer.class_:
            raise BadInput(f"{self.path}: its optimizer state is {self.optimizer.class_}'s, not {type(optimizer).__name__}'s")
        restore_optimizer(self.path, self.optimizer, self.optimizer_state, optimizer)


def save_ad(path: str | Path, model: ADTransformer, cfg: ADConfig, meta: dict[str, Any], optimizer: torch.optim.Optimizer | None = None,
            scheduler_state: dict[str, Any] | None = None, rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (+ optimizer state, scheduler state and RNG states for a resumable checkpoint)
    atomically to ``path``. ``meta`` must be JSON-serialisable."""
    tensors: dict[str, torch.Tensor] = {MODEL_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    record, optimizer_state = optimizer_tensors(optimizer, model) if optimizer is not None else (None, {})
    tensors.update(optimizer_state)
    for name, state in (rng or {}).items():
        tensors[f"rng/{name}"] = state.detach().to("cpu", torch.uint8).contiguous()
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "fiberlab_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "config": cfg.model_dump(mode="json"),
        "model": {"num_states": model.num_states, "num_actions": model.num_actions, "grid": model.grid},
        "meta": meta,
        "optimizer": record,  # null in a best checkpoint, as is the scheduler
        "scheduler": scheduler_state,
    }
    return write_checkpoint(path, manifest, tensors)


def read_ad(path: str | Path, device: torch.device | str = "cpu") -> ADCheckpoint:
    """Load and verify an AD checkpoint (see the module docstring for the order of checks)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such AD checkpoint" + (" (a directory)" if path.is_dir() else ""))
    raw = read_raw_header(path)  # CheckpointError (a BadInput naming the file) for any header fault
    stored = raw.manifest
    if stored.get("kind") != KIND:
        raise BadInput(f"{path}: not an AD checkpoint (kind {stored.get('kind')!r}; fiberlab ad train writes kind {KIND!r})")
    try:
        manifest = ADManifest.model_validate(stored)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "manifest"
        raise BadInput(f"{path}: invalid AD checkpoint manifest ({where}: {err.get('msg', 'invalid')})") from None
    if manifest.format_version > FORMAT_VERSION:
        raise BadInput(f"{path}: format version {manifest.format_version} is newer than this fiberlab reads ({FORMAT_VERSION}); upgrade fiberlab")
    try:
        cfg = ADConfig.model_validate(manifest.config)
    except ValidationError as e:
        err = e.errors()[0]
        raise BadInput(f"{path}: its config is invalid ({'.'.join(str(p) for p in err.get('loc', ())) or 'config'}: {err.get('msg', 'invalid')})") from None
    sizes = manifest.model
    try:
        with torch.device("meta"):
            skeleton = ADTransformer(cfg, sizes.num_states, sizes.num_actions, sizes.grid)
    except BadInput as e:
        raise BadInput(f"{path}: its model sizes are invalid ({e})") from None
    index = validate_index(path, raw.index, raw.data_len)
    problems = _index_problems(skeleton, manifest, index)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadInput(f"{path}: tensors do not match the model its config describes ({problems[0]}){more}")
    tensors = read_tensors(path)
    if checksum(stored, tensors) != manifest.checksum:
        raise BadInput(f"{path}: checksum mismatch: the file was altered after it was written (restore a copy)")
    weights = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    for name, t in weights.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise BadInput(f"{path}: tensor {name!r} holds NaN or infinity (use an earlier checkpoint)")
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG alone
        model = ADTransformer(cfg, sizes.num_states, sizes.num_actions, sizes.grid)
    model.load_state_dict(weights, strict=True)
    model.to(device)
    return ADCheckpoint(
        path=path, model=model, config=cfg, meta=manifest.meta, optimizer=manifest.optimizer,
        optimizer_state={k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")},
        scheduler=manifest.scheduler, rng={k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")})


def load_ad(path: str | Path, device: torch.device | str = "cpu") -> tuple[ADTransformer, ADConfig, dict[str, Any]]:
    """``(model, config, meta)`` of an AD checkpoint, the model on ``device`` in eval mode."""
    ck = read_ad(path, device)
    return ck.model.eval(), ck.config, ck.meta


def _index_problems(skeleton: ADTransformer, manifest: ADManifest, index: dict[str, Any]) -> list[str]:
    """Every way the stored tensors differ from what the described model and optimizer hold: the
    policy checkpoint's check (model tensors under ``model/``, any ``rng/<name>``), and every
    parameter the optimizer record names must be the model's."""
    names = manifest.optimizer.param_names if manifest.optimizer else []
    problems = module_tensor_problems(skeleton, MODEL_PREFIX, index, names, what="model", rng_key=_RNG_KEY, rng_hint="rng/<name>")
    params = dict(skeleton.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        problems.append(f"the optimizer record names parameter {unknown[0]!r}, which the model does not have")
    return problems


__all__ = ["KIND", "ADCheckpoint", "ADManifest", "CheckpointError", "load_ad", "read_ad", "save_ad"]
