"""Examine and load a checkpoint: ``ckpt check``, ``ckpt inspect``, :func:`load`, ``fiberlab
eval``, resume and ``ckpt migrate`` all call these functions, so what ``check`` reports is by
construction what ``load`` does. :func:`load` is :func:`examine` then :meth:`Examined.load`, and
returns a :class:`Checkpoint`.

Order (each step runs only on what the previous ones accepted; nothing is allocated until the
header has vouched for every size):

1. header: parsed (size-capped), manifest validated into :class:`Manifest`, tensor index checked
   against itself and the file size (``manifest.py``);
2. compatibility with the env at hand (``compat.py``): the report's levels;
3. the policy is built on the meta device from the validated config (no memory, no init cost),
   and the index must hold exactly its tensors, shapes and dtypes, plus well-formed optimizer
   and RNG state: a width of 1e9 or a stray 100 GB tensor is refused here, before any data is
   read or decompressed;
4. the tensors are read; their checksum is verified (``verify``) and every float must be finite.

Faults of the file itself raise a one-line :class:`CheckpointError`; questions of fit (older
format, other env, missing checksum) go into the :class:`CompatibilityReport`.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fiberlab.checkpoint.base import (
    FORMAT_VERSION,
    CheckpointError,
    NotACheckpoint,
    check_version,
    checksum,
)
from fiberlab.checkpoint.compat import (
    CompatibilityReport,
    apply_remap,
    check_compatibility,
    corrupt_report,
    unknown_report,
)
from fiberlab.checkpoint.format import RawHeader, read_raw_header, read_tensors
from fiberlab.checkpoint.manifest import (
    OPTIMIZER_KEY,
    Manifest,
    OptimizerRecord,
    TensorEntry,
    index_problems,
    manifest_problems,
    validate_index,
    validate_manifest,
)
from fiberlab.checkpoint.versions import upgrade
from fiberlab.errors import first_line
from fiberlab.policies import build_policy

RNG_KEY = "rng/torch"
TORCH_RNG_KEY = re.compile(r"^rng/torch$")  # a policy checkpoint's one RNG tensor (an AD checkpoint allows more)
MAX_RNG_BYTES = 1 << 20  # torch's CPU generator state is 5,056 bytes; CUDA's is smaller
TORCH_TO_SAFETENSORS = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
NO_CHECKSUM = "no checksum recorded: integrity cannot be verified (load refuses it unless forced)"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt policy, its manifest (upgraded to the current format) and
    the trainer state tensors."""

    path: Path
    manifest: Manifest
    policy: torch.nn.Module
    optimizer_state: dict[str, torch.Tensor]
    torch_rng: torch.Tensor | None
    report: Any = None  # the CompatibilityReport it was loaded under

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore ``optimizer`` (built over the same parameters in the same order)."""
        info = self.manifest.optimizer
        if info is None:
            raise CheckpointError(f"{self.path}: holds no optimizer state")
        restore_optimizer(self.path, info, self.optimizer_state, optimizer)


def restore_optimizer(path: Path, record: OptimizerRecord, state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Load ``optimizer`` from a checkpoint's optimizer ``record`` and its ``"<index>/<key>"`` tensors.

    The inverse of :func:`fiberlab.checkpoint.format.optimizer_tensors`, so policy and AD
    checkpoints restore the same way. JSON stored a tuple hyperparameter (Adam's ``betas``) as a
    list: it becomes a tuple again where ``optimizer`` holds one, so the restored state is the
    saved one. ``optimizer`` must be built over the same parameters in the same order; when it
    does not fit, a one-line CheckpointError naming ``path``.
    """
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        idx, name = key.split("/", 1)
        by_index.setdefault(int(idx), {})[name] = t
    groups, start = [], 0
    for i, (g, n) in enumerate(zip(record.param_groups, record.group_sizes)):
        own = optimizer.param_groups[i] if i < len(optimizer.param_groups) else {}
        g = {k: tuple(v) if isinstance(v, list) and isinstance(own.get(k), tuple) else v for k, v in g.items()}
        groups.append({**g, "params": list(range(start, start + n))})
        start += n
    try:
        optimizer.load_state_dict({"state": by_index, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its optimizer state does not fit this optimizer ({first_line(e)})") from None


@dataclass
class Examined:
    """A checkpoint whose header passed every check: what loading it will build, and the report."""

    path: Path
    stored: dict[str, Any]  # the manifest as stored (what its checksum covers)
    manifest: Manifest  # the same, validated
    index: dict[str, TensorEntry]
    report: CompatibilityReport
    policy: nn.Module | None  # built on the meta device; None when the config cannot be built (see report)
    unverified: bool = False  # set by read_verified_tensors when the file records no checksum

    def load(self, device: str | torch.device = "cpu", *, force: bool = False, verify: bool = True) -> Checkpoint:
        """Read, verify and materialise: the :class:`Checkpoint` ``load`` returns."""
        report = self.report
        if report.level == "INCOMPATIBLE" and not force:
            raise CheckpointError(f"{self.path}: incompatible: {'; '.join(report.errors)}")
        if self.policy is None:
            raise CheckpointError(f"{self.path}: cannot rebuild the policy ({'; '.join(report.errors) or 'its config is invalid'})")
        tensors = read_verified_tensors(self, verify)
        if self.unverified and not force:
            raise CheckpointError(f"{self.path}: no checksum recorded, integrity cannot be verified: load it with force=True, or rewrite it with fiberlab ckpt migrate {self.path}")
        if report.level == "PARTIAL":
            warnings.warn(f"{self.path}: partially compatible: {'; '.join(report.warnings)}", stacklevel=3)
        stored, tensors = upgrade(self.stored, tensors)
        manifest = validate_manifest(self.path, stored)
        policy = self.policy.to_empty(device=device)
        try:  # shapes and dtypes were matched in examine(); this is belt and braces
            policy.load_state_dict({k[len("policy/"):]: v for k, v in tensors.items() if k.startswith("policy/")}, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{self.path}: weights do not fit the architecture ({str(e).strip().splitlines()[-1]})") from None
        policy.refresh_buffers()
        if report.remap is not None:
            policy = apply_remap(policy, report.remap)
        optimizer = {k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")}
        return Checkpoint(self.path, manifest, policy, optimizer, tensors.get(RNG_KEY), report)


def validated_header(path: str | Path) -> tuple[RawHeader, Manifest, dict[str, TensorEntry]]:
    """Step 1: the raw header, its validated manifest and its checked tensor index."""
    raw = read_raw_header(path)
    check_version(path, raw.manifest)
    manifest = validate_manifest(path, raw.manifest)
    index = validate_index(path, raw.index, raw.data_len)
    return raw, manifest, index


def meta_policy(manifest: Manifest, report: CompatibilityReport) -> nn.Module | None:
    """Step 3a: the policy the manifest describes, on the meta device (no memory, no init cost).

    Any failure to build (a pattern the cortex registry rejects, a width the encoder cannot take)
    becomes an error in ``report``: the file names something this fiberlab cannot build.
    """
    if not report.policy_config:
        return None
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # init warnings about odd widths: the shape check below speaks
            return build_policy(report.policy_config)
    except Exception as e:  # noqa: BLE001 - untrusted config: any builder fault is the file's
        report.error(f"the registry cannot build architecture {manifest.architecture!r} with the stored config ({first_line(e)[:200]})")
        report.recommend("load it with the fiberlab version that wrote it")
        report.finish()
        return None


def tensor_problems(policy: nn.Module, manifest: Manifest, index: dict[str, TensorEntry]) -> list[str]:
    """Step 3b: every way the index differs from what ``policy`` and its optimizer hold."""
    order = manifest.optimizer.param_names if manifest.optimizer else []
    return module_tensor_problems(policy, "policy/", index, order)


def module_tensor_problems(module: nn.Module, prefix: str, index: dict[str, TensorEntry], optimizer_param_names: list[str], *,
                           what: str = "architecture", rng_key: re.Pattern[str] = TORCH_RNG_KEY, rng_hint: str = RNG_KEY) -> list[str]:
    """Every way a checkpoint's tensor index differs from what ``module`` and an optimizer over its
    parameters hold, one line each (empty: they match).

    Allowed, and nothing else: ``module``'s state dict under ``prefix`` (every tensor, each of
    exactly its shape and dtype); ``optimizer/<i>/<key>`` for the ``i``-th of
    ``optimizer_param_names`` (the optimizer record's, empty without one), shaped like that
    parameter (a moment) or one element (a step); RNG states named by ``rng_key`` (U8[n], capped).
    Policy and AD checkpoints are both checked here against a module built on the meta device, so
    a bogus size or a stray tensor in either is refused in the same words before anything is
    allocated. ``what`` names the module in the messages; ``rng_hint`` the RNG names allowed.
    """
    expected = {prefix + k: v for k, v in module.state_dict().items()}
    params = dict(module.named_parameters())
    problems = []
    for name, entry in index.items():
        if name in expected:
            want = expected[name]
            dtype = TORCH_TO_SAFETENSORS.get(want.dtype)
            if entry.shape != list(want.shape) or entry.dtype != dtype:
                problems.append(f"tensor {name!r} is {entry.dtype}{entry.shape}, the {what} needs {dtype}{list(want.shape)}")
        elif name.startswith("optimizer/"):
            problems += _optimizer_problem(name, entry, optimizer_param_names, params, what)
        elif rng_key.match(name):
            if entry.dtype != "U8" or len(entry.shape) != 1 or entry.nbytes > MAX_RNG_BYTES:
                problems.append(f"tensor {name!r} is {entry.dtype}{entry.shape}; an RNG state is U8[n], n <= {MAX_RNG_BYTES}")
        else:
            problems.append(f"unexpected tensor {name[:80]!r} (allowed: {prefix}<key>, optimizer/<i>/<key>, {rng_hint})")
    missing = sorted(set(expected) - set(index))
    if missing:
        problems.append(f"{len(missing)} tensor(s) of the {what} missing, first {missing[0]!r}")
    return problems


def _optimizer_problem(name: str, entry: TensorEntry, order: list[str], params: dict[str, nn.Parameter], what: str) -> list[str]:
    """An optimizer tensor must belong to a listed parameter and be its size (a moment) or a scalar (a step)."""
    m = OPTIMIZER_KEY.match(name)
    if m is None or not order:
        return [f"unexpected tensor {name[:80]!r} (optimizer state needs an 'optimizer' record and names optimizer/<i>/<key>)"]
    i = int(m[1])
    if i >= len(order):
        return [f"tensor {name!r} is for parameter {i}, the optimizer record lists {len(order)}"]
    param = params.get(order[i])
    if param is None:
        return [f"tensor {name!r} is for parameter {order[i]!r}, which the {what} does not have"]
    if entry.numel != 1 and entry.shape != list(param.shape):  # a step counter, or a moment shaped like the parameter
        return [f"tensor {name!r} is {entry.dtype}{entry.shape}; parameter {order[i]!r} is {list(param.shape)}"]
    return []


def examine(path: str | Path, env_spec: Any = None) -> Examined:
    """Steps 1 to 3: everything that can be known from the header; raises CheckpointError for a
    fault of the file, puts questions of fit into ``report``."""
    path = Path(path)
    raw, manifest, index = validated_header(path)
    report = check_compatibility(manifest, env_spec, path=path)
    policy = meta_policy(manifest, report)
    if policy is not None:
        problems = tensor_problems(policy, manifest, index)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckpointError(f"{path}: tensors do not match the architecture ({problems[0]}){more}")
    return Examined(path, raw.manifest, manifest, index, report, policy)


def load(path: str | Path, device: str | torch.device = "cpu", env_spec: Any = None, force: bool = False, verify: bool = True) -> Checkpoint:
    """Load ``path``: validate it, rebuild the policy through the registry, restore its weights.

    Everything is checked before anything is allocated (steps 1 to 3 above): the manifest's types
    and ranges, the tensor index, and that the tensors are exactly those of the architecture the
    manifest names. Then the tensors are read and, with ``verify`` (the default), their checksum
    is checked; ``verify=False`` is for callers who verified the file already. Weights holding NaN
    or infinity are refused. A file without a checksum is refused unless ``force``.

    With ``env_spec`` (an :class:`~fiberlab.envs.base.EnvSpec` or its dict) compatibility is
    checked first: PARTIAL warns and remaps observation features and actions by name so the
    policy behaves as before; INCOMPATIBLE raises :class:`CheckpointError` with the report
    unless ``force``. A file of an older format version loads through the upgrade chain (PARTIAL).
    Every failure is a one-line :class:`CheckpointError`.
    """
    return examine(path, env_spec).load(device, force=force, verify=verify)


def read_verified_tensors(ex: Examined, verify: bool = True) -> dict[str, torch.Tensor]:
    """Step 4: the tensors, checked against the stored checksum (``verify``) and for NaN/inf.

    A file without a checksum is marked ``unverified`` (PARTIAL, with a warning)."""
    tensors = read_tensors(ex.path)
    if verify:
        recorded = ex.manifest.checksum
        if recorded is None:
            ex.unverified = True
            if NO_CHECKSUM not in ex.report.warnings:
                ex.report.warn(NO_CHECKSUM)
                ex.report.recommend(f"rewrite it with a checksum: fiberlab ckpt migrate {ex.path}")
                ex.report.finish()
        elif checksum(ex.stored, tensors) != recorded:
            raise CheckpointError(f"{ex.path}: checksum mismatch: the file was altered after it was written (restore a copy)")
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{ex.path}: tensor {bad!r} holds NaN or infinity; a policy with such weights cannot act (use an earlier checkpoint)")
    return tensors


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first (by name) floating-point tensor holding NaN or infinity, or None.

    One min/max pass per tensor (NaN propagates into both; +-inf shows as an extreme): about 10x
    faster than ``isfinite(t).all()``, which writes a boolean tensor as large as the weights."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and t.numel():
            lo, hi = torch.aminmax(t)
            if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
                return name
    return None


def check_file(path: str | Path, env_spec: Any = None) -> CompatibilityReport:
    """``fiberlab ckpt check``: the report of everything ``load`` would do, never an exception.

    UNKNOWN: not a fiberlab checkpoint (migrate it); INCOMPATIBLE with a "restore" recommendation:
    the file is damaged; otherwise the compatibility report, integrity included."""
    path = Path(path)
    try:
        ex = examine(path, env_spec)
        if ex.policy is not None:
            read_verified_tensors(ex)
        return ex.report
    except NotACheckpoint as e:
        return unknown_report(str(e).split(": ", 1)[-1], str(path))
    except CheckpointError as e:
        return corrupt_report(str(e).split(": ", 1)[-1] if str(e).startswith(str(path)) else str(e))


def header_problems(raw: RawHeader) -> list[str]:
    """``fiberlab ckpt inspect``: every reason, one line each, why the header alone condemns the
    file (empty: the header is fine; the tensor data is not read)."""
    version = raw.manifest.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        return [f"format version {version} is newer than this fiberlab reads ({FORMAT_VERSION}): upgrade fiberlab"]
    problems = [f"manifest: {p}" for p in manifest_problems(raw.manifest)] + index_problems(raw.index, raw.data_len)
    if problems:
        return problems
    manifest = Manifest.model_validate(raw.manifest)
    report = check_compatibility(manifest)
    policy = meta_policy(manifest, report)
    problems = list(report.errors)
    if policy is not None:
        index = {name: TensorEntry.model_validate(v) for name, v in raw.index.items()}
        problems += tensor_problems(policy, manifest, index)
    return problems
