"""The checkpoint header as typed models, validated the moment it is read.

A checkpoint's header is untrusted input: a flipped byte, a truncated copy or a crafted file can
put anything there. Everything downstream (compatibility, the upgrade chain, rebuilding the policy,
``fiberlab eval``, resume) works on the models below, never on raw dictionaries, so a field of the
wrong type or out of range is one :class:`~fiberlab.checkpoint.base.CheckpointError` naming the
field and what is allowed, raised before anything is allocated.

Two parts are checked:

- the **manifest** (:class:`Manifest`): types and ranges of every field fiberlab reads. Unknown
  extra keys are kept (a caller's ``extra_manifest``), never interpreted.
- the **tensor index** (:func:`index_problems`): every entry's dtype, shape and ``data_offsets``;
  ``end - begin = prod(shape) * itemsize``; entries tile ``[0, data_len)`` without gap or
  overlap (what safetensors itself requires); and, for a plain file, ``8 + header + data_len`` is
  the file's size. So no size in the header can exceed what the file really holds.

Whether the tensors fit the architecture the manifest names is checked against a policy built on
the meta device (no memory): see ``fiberlab.checkpoint.reader``.

Of its siblings this module imports only ``base``: everything else reads the models from here.
"""
from __future__ import annotations

import math
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from fiberlab.checkpoint.base import CheckpointError
from fiberlab.config import TrainConfig, check_obs_scale

# safetensors dtype names -> bytes per element
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
MAX_DIMS = 8  # torch allows more; no tensor of a fiberlab policy or optimizer has more than 4
CHECKSUM_PATTERN = r"^sha256:[0-9a-f]{64}$"
Number = StrictInt | StrictFloat


class _Record(BaseModel):
    """Strict types (no "5" for 5, no 1.0 for True), unknown keys kept but never read."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class EnvRecord(_Record):
    """What the checkpoint records of the environment it was trained on (``EnvSpec.to_dict``).

    Every field is optional (converted files may know only a name) but typed when present."""

    name: StrictStr | None = None
    obs_shape: list[StrictInt] | None = Field(None, min_length=1, max_length=MAX_DIMS)
    obs_dtype: StrictStr | None = None
    num_actions: StrictInt | None = Field(None, ge=1)
    feature_names: list[StrictStr] | None = None
    action_names: list[StrictStr] | None = None
    obs_scale: list[Number] | None = Field(None, min_length=1)
    agents_per_env: StrictInt | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> EnvRecord:
        if self.obs_shape is not None and any(d < 1 for d in self.obs_shape):
            raise ValueError(f"obs_shape {self.obs_shape} has a dimension below 1")
        if self.action_names and self.num_actions is not None and len(self.action_names) != self.num_actions:
            raise ValueError(f"{len(self.action_names)} action_names for num_actions={self.num_actions}")
        if self.obs_scale is not None:
            check_obs_scale(self.obs_scale, self.obs_shape)
        return self


class Progress(_Record):
    epoch: StrictInt = Field(ge=0)
    agent_step: StrictInt = Field(ge=0)
    wall_time: Number = Field(0.0, ge=0)


class OptimizerRecord(_Record):
    """Enough to rebuild ``optimizer.state_dict()`` around the ``optimizer/<i>/<key>`` tensors."""

    class_: StrictStr = Field(alias="class")
    param_groups: list[dict[str, Any]]
    group_sizes: list[StrictInt]
    param_names: list[StrictStr]

    @model_validator(mode="after")
    def _consistent(self) -> OptimizerRecord:
        if len(self.group_sizes) != len(self.param_groups) or any(n < 0 for n in self.group_sizes):
            raise ValueError(f"group_sizes {self.group_sizes[:8]} do not describe the {len(self.param_groups)} param_groups")
        if sum(self.group_sizes) != len(self.param_names):
            raise ValueError(f"group_sizes add up to {sum(self.group_sizes)}, param_names has {len(self.param_names)}")
        if any("params" in g for g in self.param_groups):
            raise ValueError("param_groups may not list params (they are rebuilt from group_sizes)")
        return self


class Manifest(_Record):
    """The ``fiberlab`` manifest of a checkpoint of format 1 or later (see ``format.py``).

    ``policy_config`` stays a plain object here: whether this fiberlab can build it (fields added
    or unknown since) is a compatibility question, answered by ``compat.check_compatibility``.
    ``config`` (the run's TrainConfig) is validated only where it is used: :meth:`run_config`.
    """

    format_version: StrictInt = Field(ge=1)
    fiberlab_version: StrictStr | None = None
    torch_version: StrictStr | None = None
    architecture: StrictStr
    policy_config: dict[str, Any]
    env_spec: EnvRecord = EnvRecord()
    progress: Progress
    run: StrictStr | None = None
    seed: StrictInt | None = None
    config: dict[str, Any] | None = None
    optimizer: OptimizerRecord | None = None
    rng: dict[str, Any] | None = None
    checksum: str | None = Field(None, pattern=CHECKSUM_PATTERN)
    migrated_from: dict[str, Any] | None = None

    def run_config(self, where: str):
        """The run's :class:`~fiberlab.config.TrainConfig`, or None for a converted file."""
        if not self.config:
            return None
        try:
            return TrainConfig.model_validate(self.config)
        except ValidationError as e:
            raise CheckpointError(f"{where}: its run config is invalid ({first_error(e, 'config')})") from None

    def as_dict(self) -> dict[str, Any]:
        """The manifest as the JSON it was read from (only the keys it had; ``class`` as stored)."""
        return self.model_dump(by_alias=True, exclude_unset=True)


def first_error(e: ValidationError, prefix: str = "") -> str:
    """One line: ``field.path=value: what is wrong`` for the first of pydantic's errors."""
    return _describe(e.errors()[0], prefix)


def _describe(err: dict[str, Any], prefix: str = "") -> str:
    loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    value = err.get("input")
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc or 'manifest'}={shown}: {msg}" if err["type"] != "missing" else f"{loc}: required field missing"


def manifest_problems(raw: dict[str, Any]) -> list[str]:
    """Every schema fault of a stored manifest, one line each (empty: valid)."""
    try:
        Manifest.model_validate(raw)
    except ValidationError as e:
        return [_describe(err) for err in e.errors()]
    except RecursionError:
        return ["manifest is nested too deeply"]
    return []


def validate_manifest(path: Any, raw: dict[str, Any]) -> Manifest:
    """The :class:`Manifest` of ``raw``, or a one-line CheckpointError naming the first bad field."""
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise CheckpointError(f"{path}: invalid manifest ({first_error(e)})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: invalid manifest (nested too deeply)") from None


# --------------------------------------------------------------------------- the tensor index
class TensorEntry(BaseModel):
    """One tensor of the safetensors index, with its byte range checked against its shape."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    dtype: StrictStr
    shape: list[StrictInt] = Field(max_length=MAX_DIMS)
    data_offsets: list[StrictInt] = Field(min_length=2, max_length=2)

    @model_validator(mode="after")
    def _sized(self) -> TensorEntry:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r} is not a safetensors dtype")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a negative dimension")
        begin, end = self.data_offsets
        if not 0 <= begin <= end:
            raise ValueError(f"data_offsets {list(self.data_offsets)} are not 0 <= begin <= end")
        if end - begin != self.nbytes:
            raise ValueError(f"data_offsets span {end - begin} bytes, shape {self.shape} of {self.dtype} needs {self.nbytes}")
        return self

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _check_index(index: dict[str, Any], data_len: int | None) -> tuple[dict[str, TensorEntry], list[str]]:
    """The well-formed entries and every fault, one line each (see :func:`index_problems`)."""
    entries: dict[str, TensorEntry] = {}
    problems = []
    for name, raw in index.items():
        try:
            entries[name] = TensorEntry.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"tensor {name[:80]!r}: {loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}")
    cursor = 0
    for begin, end, name in sorted((*e.data_offsets, n) for n, e in entries.items()):
        if begin < cursor:
            problems.append(f"tensor {name[:80]!r}: data_offsets [{begin}, {end}] overlap the previous tensor")
        elif begin > cursor:
            problems.append(f"tensor {name[:80]!r}: data_offsets [{begin}, {end}] leave a gap after byte {cursor}")
        cursor = max(cursor, end)
    if data_len is not None and not problems and cursor != data_len:
        problems.append(f"tensor data is {cursor} bytes by the header, the file holds {data_len}")
    return entries, problems


def index_problems(index: dict[str, Any], data_len: int | None) -> list[str]:
    """Every fault of the tensor index, one line each (empty: valid).

    ``data_len``: the bytes after the header in a plain file (None for a compressed one, whose
    decompression is bounded by what the index declares)."""
    return _check_index(index, data_len)[1]


def validate_index(path: Any, index: dict[str, Any], data_len: int | None) -> dict[str, TensorEntry]:
    """The checked index (name -> :class:`TensorEntry`), or a one-line CheckpointError."""
    entries, problems = _check_index(index, data_len)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path}: corrupt tensor index ({problems[0]}){more}")
    return entries


OPTIMIZER_KEY = re.compile(r"^optimizer/(\d{1,9})/([A-Za-z_][A-Za-z0-9_]{0,63})$")
