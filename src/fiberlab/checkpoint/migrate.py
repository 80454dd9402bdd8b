"""``fiberlab ckpt migrate``: turn legacy and older checkpoints into current fiberlab files.

Inputs (see ``docs/checkpoints_migration.md``): fiberlab files of an older format version
(upgraded through :mod:`fiberlab.checkpoint.versions`), plain safetensors state dicts, and
``torch.save`` pickles: raw state dicts, training saves (weights + optimizer + counters),
PolicyRecord-like dicts, Metta ``<run>__e<E>__s<S>__t<T>__sc<score>.pt`` and PufferLib
``model_000050.pt`` files. Weights named the fiberlab way, the PufferLib Atari way or the Metta
Fast way are mapped onto a registry architecture whose widths are read off the tensor shapes; the
policy is rebuilt and loaded strictly before anything is written.

Security: pickles are opened with ``torch.load(weights_only=True)`` (tensors and plain containers
only, nothing is imported or called). A file that needs full unpickling (a whole pickled module,
a PolicyRecord object, or a pickle crafted to run code) is refused unless ``trust_pickle``.

Writes are atomic (``write_checkpoint``: temp file + rename; backups likewise), so an interrupted
migration never leaves a partial file under a final name; a file already current, or a legacy file
whose output already records its sha256, is skipped, so running twice changes nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import shutil
import struct
import sys
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fiberlab.atomic import write_json_atomic
from fiberlab.errors import first_line
from fiberlab.checkpoint import versions
from fiberlab.checkpoint.legacy_layouts import MigrationError, infer_policy_config, map_state_dict
from fiberlab.checkpoint.format import (
    FORMAT_VERSION,
    MANIFEST_KEY,
    MAX_HEADER_BYTES,
    CheckpointError,
    check_version,
    parse_json,
    read_header,
    read_manifest,
    save,
    write_checkpoint,
)

CANDIDATE_SUFFIXES = (".pt", ".pth", ".safetensors")
REPORT_NAME = "migration_report.json"

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



class UsageError(ValueError):
    """Bad arguments to :func:`migrate` (exit code 2 from :func:`main`)."""


@dataclass
class FileResult:
    """What happened to one file. ``status``: ``migrated``, ``skipped`` or ``failed``."""

    path: str
    output: str | None
    status: str
    reason: str
    kind: str
    layout: str | None = None  # weight naming recognised: fiberlab, pufferlib_atari, metta_fast
    backup: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class MigrationSummary:
    """Per-file results of one :func:`migrate` call, and the JSON report written (if any)."""

    input: str
    output: str | None
    results: list[FileResult] = field(default_factory=list)
    report_path: str | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def migrated(self) -> int:
        return self.count("migrated")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "format_version": FORMAT_VERSION,
            "totals": {"files": len(self.results), "migrated": self.migrated, "skipped": self.skipped, "failed": self.failed},
            "files": [asdict(r) for r in self.results],
        }


# --------------------------------------------------------------------------- detection
@dataclass
class _Probe:
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


def _probe(path: Path, trust_pickle: bool = False) -> _Probe:
    from fiberlab.checkpoint import compression

    try:
        compressed = compression.detect(path) is not None
    except OSError as e:
        return _Probe(UNKNOWN, reason=f"cannot read ({e.strerror or e})")
    has_manifest = True if compressed else _safetensors_manifest_state(path)
    if has_manifest is None and path.suffix == ".safetensors":
        return _Probe(UNKNOWN, reason="not a valid safetensors file (truncated, or a corrupt header)")
    if has_manifest:
        try:
            manifest = read_header(path)
        except CheckpointError as e:
            return _Probe(UNKNOWN, reason=str(e).split(": ", 1)[-1])
        try:
            version = check_version(path, manifest)
        except CheckpointError as e:
            return _Probe(UNKNOWN, manifest, reason=str(e).split(": ", 1)[-1])
        return _Probe(FIBERLAB if version == FORMAT_VERSION else f"fiberlab_v{version}", manifest)
    if has_manifest is False:
        from safetensors.torch import load_file

        try:
            return _Probe(SAFETENSORS, obj=load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - any reader fault is this file's fault
            return _Probe(UNKNOWN, reason=f"corrupt safetensors file ({first_line(e)})")
    try:
        obj = _torch_load(path, trust_pickle=False)
    except Exception as e:  # noqa: BLE001
        if not _needs_full_unpickling(e):
            detail = re.search(r"(Unsupported operand \d+|String is too long)", str(e))
            return _Probe(UNKNOWN, reason=f"not a checkpoint this tool reads (torch.load: {detail[1] if detail else first_line(e)})")
        if not trust_pickle:
            return _Probe(PICKLED_OBJECT, reason=_refusal(e))
        try:
            obj = _torch_load(path, trust_pickle=True)
        except Exception as e2:  # noqa: BLE001
            return _Probe(PICKLED_OBJECT, reason=f"full unpickling failed ({first_line(e2)})")
        return _Probe(PICKLED_OBJECT, obj=obj)
    return _Probe(_classify(obj), obj=obj)


def detect_kind(path: str | Path) -> str:
    """The kind of ``path`` (see the module constants). Never unpickles beyond ``weights_only``."""
    return _probe(Path(path)).kind


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
class _Payload:
    state_dict: dict[str, torch.Tensor]
    optimizer: Mapping | None
    hints: dict[str, Any]


def _payload(probe: _Probe, path: Path) -> _Payload:
    obj = probe.obj
    if probe.kind in (SAFETENSORS, STATE_DICT):
        return _Payload(dict(obj), None, {})
    if probe.kind in (TRAINING_SAVE, POLICY_RECORD):
        return _Payload(_weights_in(obj), _optimizer_in(obj), {**_hints_from(obj), **_hints_from(obj.get("metadata"))})
    if probe.kind == PICKLED_OBJECT:  # trusted and fully unpickled
        if isinstance(obj, nn.Module):
            return _Payload(dict(obj.state_dict()), None, _hints_from(getattr(obj, "metadata", None)))
        module = _module_in(obj)
        if module is not None:
            hints = _hints_from(getattr(obj, "metadata", None))
            run = getattr(obj, "run_name", None)
            if isinstance(run, str) and run:
                hints.setdefault("run", run)
            return _Payload(dict(module.state_dict()), None, hints)
        if isinstance(obj, Mapping):
            sd = _as_state_dict(obj) or _weights_in(obj)
            if sd is not None:
                return _Payload(sd, _optimizer_in(obj), {**_hints_from(obj), **_hints_from(obj.get("metadata"))})
        raise MigrationError(f"the unpickled {type(obj).__name__} holds no recognisable policy weights")
    if probe.kind == TRAINER_STATE:
        raise MigrationError("trainer state only (optimizer and counters, no policy weights)")
    raise MigrationError(probe.reason or "no policy weights found")


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


# --------------------------------------------------------------------------- optimizer
def _convert_optimizer(opt_sd: Mapping, key_map: dict[str, str], policy: nn.Module) -> tuple[torch.optim.Optimizer | None, str | None]:
    """An Adam/AdamW over ``policy`` holding ``opt_sd``'s state, moved from the source parameter
    order (the state dict's order, as ``model.parameters()`` gives it) to fiberlab's; or a reason
    why it was dropped."""
    groups = opt_sd.get("param_groups")
    state = opt_sd.get("state")
    if not isinstance(groups, list) or not isinstance(state, Mapping) or not all(isinstance(g, Mapping) and "params" in g for g in groups):
        return None, "optimizer state dropped: not a torch optimizer state_dict"
    adam_keys = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    if not all("betas" in g for g in groups) or not all(isinstance(s, Mapping) and set(s) <= adam_keys and {"exp_avg", "exp_avg_sq"} <= set(s) for s in state.values()):
        return None, "optimizer state dropped: not an Adam state_dict (only Adam/AdamW state is converted)"
    source_keys = list(key_map)
    flat_ids = [pid for g in groups for pid in g["params"]]
    if len(flat_ids) != len(source_keys):
        return None, f"optimizer state dropped: it has {len(flat_ids)} parameters, the policy {len(source_keys)}"
    ours = dict(policy.named_parameters())
    order = {n: i for i, n in enumerate(ours)}
    name_of_id = {pid: key_map[source_keys[i]] for i, pid in enumerate(flat_ids)}
    if set(name_of_id.values()) != set(ours):
        return None, "optimizer state dropped: its parameters do not cover the policy's"
    for pid, s in state.items():
        if pid not in name_of_id:
            return None, f"optimizer state dropped: state for parameter {pid}, which no group holds"
        shape = tuple(ours[name_of_id[pid]].shape)
        if tuple(s["exp_avg"].shape) != shape:
            return None, f"optimizer state dropped: moments of parameter {pid} {tuple(s['exp_avg'].shape)} do not fit {name_of_id[pid]} {shape}"
    new_groups, new_state, hyper_groups = [], {}, []
    next_id = 0
    for g in groups:
        names = sorted((name_of_id[pid] for pid in g["params"]), key=order.__getitem__)
        inverse = {name_of_id[pid]: pid for pid in g["params"]}
        ids = []
        for n in names:
            if inverse[n] in state:
                new_state[next_id] = dict(state[inverse[n]])
            ids.append(next_id)
            next_id += 1
        new_groups.append({"params": [ours[n] for n in names]})
        hyper_groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
    decoupled = any(g.get("decoupled_weight_decay") for g in groups)
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)(new_groups)
    try:
        opt.load_state_dict({"state": new_state, "param_groups": hyper_groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        return None, f"optimizer state dropped: {first_line(e)}"
    return opt, None


# --------------------------------------------------------------------------- writing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _backup(path: Path) -> Path:
    """Copy ``path`` to ``<path>.bak`` (``.bak.1``, ``.bak.2``, ... if taken), atomically."""
    bak = path.with_name(path.name + ".bak")
    n = 0
    while bak.exists():
        n += 1
        bak = path.with_name(f"{path.name}.bak.{n}")
    _atomic_copy(path, bak)
    return bak


def _build_legacy(path: Path, probe: _Probe) -> tuple[nn.Module, dict[str, Any], torch.optim.Optimizer | None, str, list[str]]:
    """Policy (weights loaded strictly), manifest fields, optimizer, layout and warnings."""
    from fiberlab.policies import build_policy

    payload = _payload(probe, path)
    hints, convention = _hints_from_name(path)
    side = _sibling_trainer_state(path)
    opt_sd = payload.optimizer
    if side is not None:
        hints.update({k: v for k, v in _hints_from(side).items() if k != "epoch"})
        opt_sd = opt_sd or _optimizer_in(side)
    hints.update(payload.hints)
    renamed, key_map, layout, extras = map_state_dict(payload.state_dict)
    cfg, notes = infer_policy_config(renamed, extras.get("obs_scale"))
    try:
        policy = build_policy(cfg)
    except (ValueError, TypeError) as e:
        raise MigrationError(f"cannot build {cfg.get('name')} with the inferred widths ({first_line(e)})") from None
    try:
        policy.load_state_dict({k: v.detach().to(torch.float32) if v.is_floating_point() else v for k, v in renamed.items()}, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise MigrationError(f"weights do not fit the inferred {cfg['name']} policy ({lines[1] if len(lines) > 1 else lines[0]})") from None
    warn = list(notes)
    optimizer = None
    if opt_sd is not None:
        optimizer, why = _convert_optimizer(opt_sd, key_map, policy)
        if why:
            warn.append(why)
    for missing in ("epoch", "agent_step"):
        if missing not in hints:
            warn.append(f"{missing} unknown: recorded as 0")
    env_spec = {
        "name": "unknown",
        "obs_shape": list(cfg["obs_shape"]),
        "obs_dtype": "float32" if cfg["name"] == "mlp_lstm" else "uint8",
        "num_actions": cfg["num_actions"],
        "feature_names": [],  # unknown: empty names make the compatibility check match by position
        "action_names": [],
        "obs_scale": list(cfg["obs_scale"] or [1.0]),
        "agents_per_env": 1,
    }
    progress = {"epoch": int(hints.get("epoch", 0)), "agent_step": int(hints.get("agent_step", 0)), "wall_time": float(hints.get("wall_time", 0.0))}
    if "score" in hints:
        progress["score"] = hints["score"]
    fields = {
        "env_spec": env_spec,
        "progress": progress,
        "run": hints.get("run") or path.stem,
        "seed": hints.get("seed"),
        "name_convention": convention,
    }
    return policy, fields, optimizer, layout, warn


# --------------------------------------------------------------------------- one file
def _default_output(path: Path, kind: str) -> Path:
    return path if kind.startswith("fiberlab") else path.with_suffix(".safetensors")


def _already_migrated(out: Path, sha: str) -> bool:
    try:
        manifest = read_manifest(out)
    except CheckpointError:
        return False
    return (manifest.migrated_from or {}).get("sha256") == sha


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, flush=True)


def _migrate_one(path: Path, out: Path | None, *, backup: bool, trust_pickle: bool, verbose: bool) -> FileResult:
    probe = _probe(path, trust_pickle)
    _say(verbose, f"{path}: detected {probe.kind}")
    result = FileResult(str(path), None, "failed", probe.reason or "not a checkpoint this tool reads", probe.kind)
    try:
        return _migrate_probed(path, out, probe, result, backup=backup, verbose=verbose)
    except MigrationError as e:
        result.status, result.reason = "failed", str(e)
        return result


def _migrate_probed(path: Path, out: Path | None, probe: _Probe, result: FileResult, *, backup: bool, verbose: bool) -> FileResult:
    kind = probe.kind
    if kind == FIBERLAB:  # current, but only skipped if it would load: a corrupt file is a failure
        try:
            ex, _ = _examined_tensors(path)
        except CheckpointError as e:
            result.reason = str(e).split(": ", 1)[-1]
            return result
        if ex.unverified:  # removed from a current file: not for migrate to re-bless
            result.reason = "no checksum recorded in a current-format file (removed?): load it with force=True only if you trust it"
            return result
        result.status, result.reason = "skipped", "already current"
        return result
    if kind == TRAINER_STATE:
        result.status, result.reason = "skipped", "trainer state only (no policy weights); a PufferLib model_<E>.pt beside it takes its optimizer and counters"
        return result
    if kind == UNKNOWN or (kind == PICKLED_OBJECT and probe.obj is None):
        return result
    target = out or _default_output(path, kind)
    if target.is_dir():
        target = target / _default_output(path, kind).name
    in_place = target.resolve() == path.resolve()
    result.output = str(target)
    if kind.startswith("fiberlab_v"):
        return _upgrade(path, target, probe, result, backup=backup, in_place=in_place)
    sha = _sha256(path)
    if not in_place and target.exists():
        if _already_migrated(target, sha):
            result.status, result.reason = "skipped", f"already migrated to {target}"
        else:
            result.reason = f"{target} exists and is not a migration of this file: give another OUTPUT or move it"
        return result
    policy, fields, optimizer, layout, warns = _build_legacy(path, probe)
    result.layout, result.warnings = layout, warns
    _say(verbose, f"{path}: {layout} weights -> fiberlab {policy.config.name} {policy.config.obs_shape}, {policy.config.num_actions} actions")
    migrated_from = {"path": str(path), "kind": kind, "sha256": sha, "layout": layout}
    if fields["name_convention"]:
        migrated_from["name_convention"] = fields["name_convention"]

    def write() -> None:
        save(
            target, policy, env_spec=fields["env_spec"], progress=fields["progress"], run=fields["run"],
            seed=fields["seed"], config=None, optimizer=optimizer, extra_manifest={"migrated_from": migrated_from},
        )

    return _commit(path, result, write, backup=backup)


def _examined_tensors(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """What loading ``path`` would check, checksum included: (Examined, verified tensors).

    CheckpointError for a damaged file or one whose policy this fiberlab cannot build."""
    from fiberlab.checkpoint.reader import examine, read_verified_tensors

    ex = examine(path)
    if ex.policy is None:
        raise CheckpointError(f"{path}: {'; '.join(ex.report.errors)}")
    return ex, read_verified_tensors(ex)


def _upgrade(path: Path, target: Path, probe: _Probe, result: FileResult, *, backup: bool, in_place: bool) -> FileResult:
    from fiberlab.checkpoint import compression

    if not in_place and target.exists():
        result.reason = f"{target} exists: give another OUTPUT or move it"
        return result
    try:  # the stored checksum is verified first: a new one must never bless corrupt tensors
        ex, tensors = _examined_tensors(path)
    except CheckpointError as e:
        result.reason = str(e).split(": ", 1)[-1]
        return result
    if ex.unverified:
        result.warnings.append(f"format {ex.manifest.format_version} recorded no checksum: its tensors are taken as they are and checksummed now")
    manifest, tensors = versions.upgrade(ex.stored, tensors)
    result.layout = "fiberlab"
    method = compression.detect(path)
    return _commit(path, result, lambda: write_checkpoint(target, manifest, tensors, compress=method), backup=backup)


def _commit(path: Path, result: FileResult, write: Any, *, backup: bool) -> FileResult:
    """Back up ``path``, run ``write`` (atomic); on any failure remove the fresh backup."""
    bak = _backup(path) if backup else None
    try:
        write()
    except BaseException:
        if bak is not None:
            bak.unlink(missing_ok=True)
        raise
    result.status, result.reason = "migrated", f"converted from {result.kind}"
    result.backup = str(bak) if bak else None
    return result


# --------------------------------------------------------------------------- public API
def _candidates(root: Path, recursive: bool, exclude: Path | None) -> list[Path]:
    files = root.rglob("*") if recursive else root.iterdir()
    out = []
    for f in files:
        if not f.is_file() or f.suffix not in CANDIDATE_SUFFIXES:
            continue
        if exclude is not None and exclude in f.resolve().parents:
            continue
        out.append(f)
    return sorted(out)


def migrate(
    input: str | Path,  # noqa: A002 - the CLI's name
    output: str | Path | None = None,
    *,
    backup: bool = True,
    recursive: bool = False,
    trust_pickle: bool = False,
    verbose: bool = False,
    report_path: str | Path | None = None,
) -> MigrationSummary:
    """Migrate a file or every candidate file of a directory (``*.pt``, ``*.pth``, ``*.safetensors``).

    ``output``: for a file, the output file (or a directory to put it in; default beside the input
    as ``<stem>.safetensors``, fiberlab files in place); for a directory, a directory mirroring it.
    Directories write a JSON report (default ``<output or input dir>/migration_report.json``); a
    file writes one only when ``report_path`` is given. Raises :class:`UsageError` for bad paths;
    per-file faults are recorded as ``failed`` results, never raised.
    """
    src = Path(input)
    dst = Path(output) if output is not None else None
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    summary = MigrationSummary(str(src), str(dst) if dst else None)
    if src.is_dir():
        if dst is not None and dst.exists() and not dst.is_dir():
            raise UsageError(f"{dst}: OUTPUT for a directory must be a directory")
        files = _candidates(src, recursive, dst.resolve() if dst is not None and dst.resolve() != src.resolve() else None)
        pairs = []
        for f in files:
            rel = f.relative_to(src)
            pairs.append((f, None if dst is None else dst / rel.parent))
        report = Path(report_path) if report_path is not None else (dst or src) / REPORT_NAME
    else:
        pairs = [(src, dst)]
        report = Path(report_path) if report_path is not None else None
    for f, out in pairs:
        if out is not None and src.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        try:
            r = _migrate_one(f, out, backup=backup, trust_pickle=trust_pickle, verbose=verbose)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a batch
            r = FileResult(str(f), None, "failed", f"{type(e).__name__}: {first_line(e)}", UNKNOWN)
        _say(verbose, f"{f}: {r.status}: {r.reason}")
        summary.results.append(r)
    if report is not None:
        write_json_atomic(report, summary.to_dict())
        summary.report_path = str(report)
    return summary


# --------------------------------------------------------------------------- command line
PROG = "fiberlab ckpt migrate"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Convert legacy checkpoints (torch.save state dicts, training saves, Metta and PufferLib files, "
        "plain safetensors) and older fiberlab format versions into current fiberlab checkpoints.",
        epilog="Exit codes: 0 every file migrated or skipped, 1 some file failed, 2 bad arguments. "
        "See docs/checkpoints_migration.md.",
    )
    p.add_argument("input", metavar="INPUT", help="a checkpoint file or a directory of them")
    p.add_argument("output", metavar="OUTPUT", nargs="?", help="output file, or directory for a directory INPUT (default: beside the input)")
    p.add_argument("--no-backup", action="store_true", help="do not copy each migrated input to <input>.bak")
    p.add_argument("--recursive", action="store_true", help="also migrate files in subdirectories")
    p.add_argument("--trust-pickle", action="store_true", help="fully unpickle files that need it (can run code: trusted sources only)")
    p.add_argument("-v", "--verbose", action="store_true", help="say what is detected and done for each file")
    return p


def _print_summary(summary: MigrationSummary) -> None:
    for r in summary.results:
        line = f"{r.status:<8} {r.path}"
        if r.status == "migrated":
            line += f" -> {r.output} ({r.kind}{', ' + r.layout + ' names' if r.layout and r.layout != 'fiberlab' else ''})"
            if r.backup:
                line += f", backup {r.backup}"
        else:
            line += f": {r.reason}"
        print(line)
        for w in r.warnings:
            print(f"         warning: {w}")
    total = f"{len(summary.results)} file{'s' if len(summary.results) != 1 else ''}: {summary.migrated} migrated, {summary.skipped} skipped, {summary.failed} failed"
    if summary.report_path:
        total += f"; report {summary.report_path}"
    print(total)


def main(argv: list[str] | None = None) -> int:
    """``fiberlab ckpt migrate INPUT [OUTPUT] [--no-backup] [--recursive] [--trust-pickle] [-v]``."""
    try:
        args = _parser().parse_args(argv)
        summary = migrate(args.input, args.output, backup=not args.no_backup, recursive=args.recursive,
                          trust_pickle=args.trust_pickle, verbose=args.verbose)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an OUTPUT or report location that cannot be written
        print(f"{PROG}: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    _print_summary(summary)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
