"""What a file to migrate is, and what it holds: detecting the source kind and reading it.

Kinds (the constants below): fiberlab files (current or older format), plain safetensors state
dicts, and ``torch.save`` pickles: raw state dicts, training saves (weights + optimizer +
counters), PolicyRecord-like dicts, PufferLib trainer states, and pickles that need full
unpickling. Progress hints come from the file's dicts and from Metta
(``<run>__e<E>__s<S>__t<T>__sc<score>.pt``, ``<run>:v<E>``) and PufferLib (``model_000050.pt``)
file names.

Security: pickles are opened with ``torch.load(weights_only=True)`` (tensors and plain containers
only, nothing is imported or called). A file that needs full unpickling (a whole pickled module,
a PolicyRecord object, or a pickle crafted to run code) is refused unless ``trust_pickle``.

Nothing here writes: converting what was read is ``migrate_convert.py``, walking folders and
writing results is ``migrate.py``.
"""
from __future__ import annotations

import pickle
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from fiberlab.checkpoint.base import (
    FORMAT_VERSION,
    MANIFEST_KEY,
    MAX_HEADER_BYTES,
    CheckpointError,
    check_version,
    parse_json,
)
from fiberlab.checkpoint.compression import detect
from fiberlab.checkpoint.format import read_header
from fiberlab.checkpoint.legacy_layouts import MigrationError
from fiberlab.errors import first_line

# Detected kinds.
FIBERLAB = "fiberlab"  # current format: skipped
SAFETENSORS = "safetensors_state_dict"  # safetensors without our manifest
STATE_DICT = "state_dict"  # torch.save of {name: tensor}
TRAINING_SAVE = "training_save"  # {model|state_dict|policy: weights, optimizer: ..., epoch: ...}
POLICY_RECORD = "policy_record"  # {policy|state_dict: weights, metadata: {...}} (Metta-like)
TRAINER_STATE = "trainer_state"  # optimizer and counters only (PufferLib trainer_state.pt)
PICKLED_OBJECT = "pickled_object"  # needs full unpickling (whole nn.Module, PolicyRecord object, ...)
UNKNOWN = "unknown"

WEIGHT_KEYS = ("model", "state_dict", "model_state_dict", "policy", "policy_state_dict", "agent", "agent_state_dict", "weights", "net")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "optimizer_state")
EPOCH_KEYS = ("epoch", "update", "epochs")
STEP_KEYS = ("agent_step", "global_step", "total_steps", "timesteps", "steps", "step")
TIME_KEYS = ("wall_time", "total_time", "train_time")
RUN_KEYS = ("run", "run_id", "run_name")

METTA_NAME = re.compile(r"^(?P<run>.+?)__e(?P<epoch>\d+)__s(?P<step>\d+)__t(?P<time>\d+(?:\.\d+)?)__sc(?P<score>-?\d+(?:\.\d+)?)$")
METTA_VERSION_NAME = re.compile(r"^(?P<run>.+):v(?P<epoch>\d+)$")  # Metta's later <run>:v<epoch>(.pt | directory)
PUFFER_NAME = re.compile(r"^model_(?P<epoch>\d+)$")


# --------------------------------------------------------------------------- detection
@dataclass
class Probe:
    """What :func:`probe` found: the kind, and the manifest or the loaded object when there is one."""

    kind: str
    manifest: dict[str, Any] | None = None
    obj: Any = None
    reason: str = ""


def _safetensors_manifest_state(path: Path) -> bool | None:
    """True: safetensors with our manifest; False: safetensors without it; None: not safetensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return None
            (n,) = struct.unpack("<Q", raw)
            if n < 2 or n > MAX_HEADER_BYTES or n > size - 8:
                return None
            head = f.read(n)
    except OSError:
        return None
    header = parse_json(head)
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__")
    return isinstance(meta, dict) and MANIFEST_KEY in meta


def _classify(obj: Any) -> str:
    """The kind of a successfully loaded pickle payload."""
    if isinstance(obj, nn.Module):
        return PICKLED_OBJECT
    if not isinstance(obj, Mapping):
        return PICKLED_OBJECT if _module_in(obj) is not None else UNKNOWN
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        return STATE_DICT
    if _weights_in(obj) is not None:
        return POLICY_RECORD if isinstance(obj.get("metadata"), Mapping) else TRAINING_SAVE
    if any(isinstance(obj.get(k), Mapping) for k in OPTIMIZER_KEYS):
        return TRAINER_STATE
    return UNKNOWN


def _module_in(obj: Any) -> nn.Module | None:
    """The policy module of a PolicyRecord-like object (``policy``/``_policy``/``_cached_policy``)."""
    for attr in ("policy", "_policy", "_cached_policy", "model"):
        m = getattr(obj, attr, None)
        if isinstance(m, nn.Module):
            return m
    return None


def _as_state_dict(v: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(v, nn.Module):
        return dict(v.state_dict())
    if isinstance(v, Mapping) and v and all(torch.is_tensor(t) for t in v.values()):
        return dict(v)
    return None


def _weights_in(obj: Mapping) -> dict[str, torch.Tensor] | None:
    """The state dict held under a weights key (one level of nesting allowed)."""
    for key in WEIGHT_KEYS:
        if key in obj:
            sd = _as_state_dict(obj[key])
            if sd is not None:
                return sd
            if isinstance(obj[key], Mapping):
                for inner in WEIGHT_KEYS:
                    sd = _as_state_dict(obj[key].get(inner))
                    if sd is not None:
                        return sd
    return None


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's business
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)


# What torch's weights_only unpickler says when a pickle names something beyond tensors and plain
# containers (a class, a function); anything else it raises means the file is corrupt.
_NEEDS_CODE = re.compile(r"unsupported global|can only (?:build|create)|trying to call reduce", re.IGNORECASE)


def _needs_full_unpickling(e: BaseException) -> bool:
    return isinstance(e, pickle.UnpicklingError) and _NEEDS_CODE.search(str(e)) is not None


def _refusal(e: BaseException) -> str:
    m = re.search(r"unsupported GLOBAL:? (?:GLOBAL )?([\w.]+)", str(e), re.IGNORECASE)
    what = f" (it names {m.group(1)}, which weights_only loading does not allow)" if m else ""
    return (f"needs full unpickling{what}: refused, since unpickling can run arbitrary code; "
            "rerun with --trust-pickle only if you trust where the file came from")


def probe_file(path: Path, trust_pickle: bool = False) -> Probe:
    """The kind of ``path`` and, for a legacy kind, the loaded object (fully unpickled only with
    ``trust_pickle`` and only when it needs it); never raises for a fault of the file."""
    try:
        compressed = detect(path) is not None
    except OSError as e:
        return Probe(UNKNOWN, reason=f"cannot read ({e.strerror or e})")
    has_manifest = True if compressed else _safetensors_manifest_state(path)
    if has_manifest is None and path.suffix == ".safetensors":
        return Probe(UNKNOWN, reason="not a valid safetensors file (truncated, or a corrupt header)")
    if has_manifest:
        try:
            manifest = read_header(path)
        except CheckpointError as e:
            return Probe(UNKNOWN, reason=str(e).split(": ", 1)[-1])
        try:
            version = check_version(path, manifest)
        except CheckpointError as e:
            return Probe(UNKNOWN, manifest, reason=str(e).split(": ", 1)[-1])
        return Probe(FIBERLAB if version == FORMAT_VERSION else f"fiberlab_v{version}", manifest)
    if has_manifest is False:
        try:
            return Probe(SAFETENSORS, obj=load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - any reader fault is this file's fault
            return Probe(UNKNOWN, reason=f"corrupt safetensors file ({first_line(e)})")
    try:
        obj = _torch_load(path, trust_pickle=False)
    except Exception as e:  # noqa: BLE001
        if not _needs_full_unpickling(e):
            detail = re.search(r"(Unsupported operand \d+|String is too long)", str(e))
            return Probe(UNKNOWN, reason=f"not a checkpoint this tool reads (torch.load: {detail[1] if detail else first_line(e)})")
        if not trust_pickle:
            return Probe(PICKLED_OBJECT, reason=_refusal(e))
        try:
            obj = _torch_load(path, trust_pickle=True)
        except Exception as e2:  # noqa: BLE001
            return Probe(PICKLED_OBJECT, reason=f"full unpickling failed ({first_line(e2)})")
        return Probe(PICKLED_OBJECT, obj=obj)
    return Probe(_classify(obj), obj=obj)


def detect_kind(path: str | Path) -> str:
    """The kind of ``path`` (see the module constants). Never unpickles beyond ``weights_only``."""
    return probe_file(Path(path)).kind


# --------------------------------------------------------------------------- payload extraction
def _scalar(v: Any) -> float | int | None:
    if torch.is_tensor(v) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool):
        return None
    return v if isinstance(v, (int, float)) else None


def _hints_from(d: Mapping | None) -> dict[str, Any]:
    """Progress counters, run name, seed and score found in a dict of a training save."""
    out: dict[str, Any] = {}
    if not isinstance(d, Mapping):
        return out
    for name, keys in (("epoch", EPOCH_KEYS), ("agent_step", STEP_KEYS), ("wall_time", TIME_KEYS)):
        for k in keys:
            v = _scalar(d.get(k))
            if v is not None:
                out[name] = float(v) if name == "wall_time" else int(v)
                break
    for k in RUN_KEYS:
        if isinstance(d.get(k), str) and d[k]:
            out["run"] = d[k]
            break
    if _scalar(d.get("seed")) is not None:
        out["seed"] = int(_scalar(d["seed"]))
    if _scalar(d.get("score")) is not None:
        out["score"] = float(_scalar(d["score"]))
    return out


def _hints_from_name(path: Path) -> tuple[dict[str, Any], str | None]:
    """Progress encoded in Metta and PufferLib file names, and which convention matched."""
    stem = path.stem
    m = METTA_NAME.match(stem)
    if m:
        return {"run": m["run"], "epoch": int(m["epoch"]), "agent_step": int(m["step"]), "wall_time": float(m["time"]),
                "score": float(m["score"]) / 1e4}, "metta"
    m = PUFFER_NAME.match(stem)
    if m:
        return {"epoch": int(m["epoch"]), "run": path.parent.name or None}, "pufferlib"
    for name in (stem, path.parent.name):  # <run>:v<epoch>.pt, or <run>:v<epoch>/weights.safetensors
        m = METTA_VERSION_NAME.match(name)
        if m:
            return {"run": m["run"], "epoch": int(m["epoch"])}, "metta"
    return {}, None


@dataclass
class Source:
    """What a legacy file holds: its weights, its optimizer state (if any), the progress hints
    found in it, its name and a PufferLib ``trainer_state.pt`` beside it, and the naming
    convention its file name follows (``metta``, ``pufferlib`` or None)."""

    state_dict: dict[str, torch.Tensor]
    optimizer: Mapping | None
    hints: dict[str, Any]
    convention: str | None


def _payload(probe: Probe) -> tuple[dict[str, torch.Tensor], Mapping | None, dict[str, Any]]:
    obj = probe.obj
    if probe.kind in (SAFETENSORS, STATE_DICT):
        return dict(obj), None, {}
    if probe.kind in (TRAINING_SAVE, POLICY_RECORD):
        return _weights_in(obj), _optimizer_in(obj), {**_hints_from(obj), **_hints_from(obj.get("metadata"))}
    if probe.kind == PICKLED_OBJECT:  # trusted and fully unpickled
        if isinstance(obj, nn.Module):
            return dict(obj.state_dict()), None, _hints_from(getattr(obj, "metadata", None))
        module = _module_in(obj)
        if module is not None:
            hints = _hints_from(getattr(obj, "metadata", None))
            run = getattr(obj, "run_name", None)
            if isinstance(run, str) and run:
                hints.setdefault("run", run)
            return dict(module.state_dict()), None, hints
        if isinstance(obj, Mapping):
            sd = _as_state_dict(obj) or _weights_in(obj)
            if sd is not None:
                return sd, _optimizer_in(obj), {**_hints_from(obj), **_hints_from(obj.get("metadata"))}
        raise MigrationError(f"the unpickled {type(obj).__name__} holds no recognisable policy weights")
    if probe.kind == TRAINER_STATE:
        raise MigrationError("trainer state only (optimizer and counters, no policy weights)")
    raise MigrationError(probe.reason or "no policy weights found")


def read_source(path: Path, probe: Probe) -> Source:
    """Everything a legacy file (already probed) offers for its conversion; MigrationError if it
    holds no policy weights."""
    state_dict, opt_sd, found = _payload(probe)
    hints, convention = _hints_from_name(path)
    side = _sibling_trainer_state(path)
    if side is not None:
        hints.update({k: v for k, v in _hints_from(side).items() if k != "epoch"})
        opt_sd = opt_sd or _optimizer_in(side)
    hints.update(found)
    return Source(state_dict, opt_sd, hints, convention)


def _optimizer_in(obj: Mapping) -> Mapping | None:
    for key in OPTIMIZER_KEYS:
        v = obj.get(key)
        if isinstance(v, torch.optim.Optimizer):  # only after trusted full unpickling
            v = v.state_dict()
        if isinstance(v, Mapping) and "state" in v and "param_groups" in v:
            return v
    return None


def _sibling_trainer_state(path: Path) -> Mapping | None:
    """PufferLib keeps optimizer and counters of its latest ``model_<E>.pt`` in ``trainer_state.pt``."""
    side = path.parent / "trainer_state.pt"
    if not PUFFER_NAME.match(path.stem) or not side.is_file():
        return None
    try:
        obj = _torch_load(side, trust_pickle=False)
    except Exception:  # noqa: BLE001 - a side file we cannot read is simply not used
        return None
    if not isinstance(obj, Mapping) or obj.get("model_name") not in (None, path.name):
        return None
    return obj

