"""The learning-history file: DICP's HDF5 schema plus the behaviour policy's action probabilities.

Why this schema: AD code bases (DICP, the compression guide) read
``datasets/history_<env>_PPO_alg-seed<k>.hdf5`` with one group per goal (``'0'`` .. ``'80'``) of
time-major arrays, so a file written here is read by theirs and theirs by ours. fiberlab always
writes the ``_compressed`` variant, which adds per step the probability of the taken action under
the behaviour policy (``action_probs``) and the segment mask derived from it
(``compression_mask``), plus file attributes that say how the mask was made.

Per goal group, T = steps per stream (1000), S = streams (100), all gzip-compressed::

    states (T, S, 2) int32      actions (T, S) int32        rewards (T, S) float32
    next_states (T, S, 2) int32 dones (T, S) bool           action_probs (T, S) float32
    compression_mask (T, S) uint8

``next_states`` at ``done`` is the TRUE terminal state (DICP stores the reset state there but
evaluates on the terminal one; fiberlab uses the terminal state in both places).

Reading validates everything a trainer relies on before it runs for hours: every fault (a missing
file, not HDF5, another schema, a missing dataset or goal group, a wrong shape or dtype) is one
:class:`~fiberlab.errors.BadInput` line naming the file and the fault. A plain DICP file (no
``schema`` attribute) is accepted: its arrays are converted to the dtypes above on read.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np

from fiberlab.errors import BadInput

SCHEMA = "fiberlab.distill.history/1"
ALG = "PPO"
# name -> (trailing shape after (T, S), dtype written by fiberlab)
DATASETS: dict[str, tuple[tuple[int, ...], np.dtype]] = {
    "states": ((2,), np.dtype(np.int32)),
    "actions": ((), np.dtype(np.int32)),
    "rewards": ((), np.dtype(np.float32)),
    "next_states": ((2,), np.dtype(np.int32)),
    "dones": ((), np.dtype(np.bool_)),
    "action_probs": ((), np.dtype(np.float32)),
    "compression_mask": ((), np.dtype(np.uint8)),
}
REQUIRED = ("states", "actions", "rewards", "next_states", "dones")  # DICP's plain schema
OPTIONAL = ("action_probs", "compression_mask")  # the compressed variant
REQUIRED_ATTRS = ("env", "alg", "alg_seed", "n_stream", "horizon", "on_policy_threshold", "compression_window",
                  "mask_rule", "total_steps", "compressed_steps", "compression_ratio", "schema")
# dtype kinds a plain (schema-less) DICP file may use: numpy kind letters
_PLAIN_KINDS = {"states": "iu", "actions": "iu", "rewards": "fiub", "next_states": "iu", "dones": "biu",
                "action_probs": "f", "compression_mask": "biu"}
_NAME = re.compile(r"^history_(?P<env>.+)_PPO_alg-seed(?P<seed>-?\d+)(?P<compressed>_compressed)?\.hdf5$")


def history_path(out_dir: str | Path, env: str, alg_seed: int, compressed: bool = True) -> Path:
    """The seed's file name: ``<out_dir>/history_<env>_PPO_alg-seed<alg_seed>[_compressed].hdf5``."""
    suffix = "_compressed" if compressed else ""
    return Path(out_dir) / f"history_{env}_PPO_alg-seed{alg_seed}{suffix}.hdf5"


@dataclass
class GoalHistory:
    """One goal's learning history, time-major numpy arrays [T, S, ...] (T steps per stream, S streams)."""

    states: np.ndarray  # [T, S, 2] int32: what the agent saw when it acted
    actions: np.ndarray  # [T, S] int32
    rewards: np.ndarray  # [T, S] float32
    next_states: np.ndarray  # [T, S, 2] int32: the true next state (terminal at done)
    dones: np.ndarray  # [T, S] bool
    action_probs: np.ndarray | None = None  # [T, S] float32: P(taken action) under the behaviour policy
    compression_mask: np.ndarray | None = None  # [T, S] uint8

    @property
    def steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def n_stream(self) -> int:
        return int(self.actions.shape[1])

    def episode_returns(self) -> np.ndarray:
        """[n_episodes, S]: each stream's return of each complete episode (the PPO learning curve).

        An episode ends at a step with ``done``; steps after the last ``done`` of a stream are an
        unfinished episode and are left out. Darkroom's episodes all end together, so the result is
        rectangular; for streams with different counts the shortest count is kept.
        """
        cum = np.cumsum(self.rewards, axis=0, dtype=np.float64)  # [T, S]
        per_stream = []
        for s in range(self.n_stream):
            ends = np.flatnonzero(self.dones[:, s])
            at_end = cum[ends, s]
            per_stream.append(np.diff(np.concatenate([[0.0], at_end])))
        n = min((len(r) for r in per_stream), default=0)
        return np.stack([r[:n] for r in per_stream], axis=1) if per_stream else np.zeros((0, 0))


def _fault(path: Path | str, what: str) -> BadInput:
    return BadInput(f"{path}: {what}")


def _check_dataset(path: Path, goal: str, name: str, ds: Any, T: int, S: int, plain: bool) -> None:
    trailing, dtype = DATASETS[name]
    want = (T, S, *trailing)
    if tuple(ds.shape) != want:
        raise _fault(path, f"goal '{goal}' dataset '{name}' has shape {tuple(ds.shape)}: {want} is expected "
                           f"(time-major: steps, streams{', 2' if trailing else ''})")
    if plain:
        if ds.dtype.kind not in _PLAIN_KINDS[name]:
            raise _fault(path, f"goal '{goal}' dataset '{name}' has dtype {ds.dtype}: a numeric dtype of kind "
                               f"{'/'.join(_PLAIN_KINDS[name])} is expected")
    elif ds.dtype != dtype:
        raise _fault(path, f"goal '{goal}' dataset '{name}' has dtype {ds.dtype}: {dtype} is expected")


class HistoryFile:
    """A validated, open learning-history file: ``with open_history(p) as h: h.goal(56).actions``.

    Validation reads only metadata (shapes, dtypes, attributes), so opening the 81-goal file is
    instant; arrays are read on demand by :meth:`goal` and :meth:`stack`.
    """

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise _fault(self.path, "no such file (collect one with `fiberlab ad collect`)")
        if self.path.is_dir():
            raise _fault(self.path, "is a directory, not an HDF5 learning-history file")
        try:
            ok = h5py.is_hdf5(str(self.path))
        except OSError as e:
            raise _fault(self.path, f"cannot be read ({e.strerror or e})") from None
        if not ok:
            raise _fault(self.path, "not an HDF5 file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise _fault(self.path, f"cannot be opened as HDF5 ({str(e).splitlines()[0] if str(e) else 'OSError'})") from None
        try:
            self._validate()
        except BaseException:
            self._f.close()
            raise

    # ----------------------------------------------------------------------- validation
    def _validate(self) -> None:
        f, path = self._f, self.path
        self.attrs: dict[str, Any] = {k: _plain(v) for k, v in f.attrs.items()}
        schema = self.attrs.get("schema")
        self.plain = schema is None
        if schema is not None and schema != SCHEMA:
            raise _fault(path, f"schema {schema!r} is not a learning-history file ({SCHEMA!r} is expected)")
        names = list(f.keys())
        goal_names = [k for k in names if k.isdigit() and str(int(k)) == k]
        if not goal_names:
            shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else "nothing"
            raise _fault(path, f"no goal groups '0', '1', ... (the file holds {shown}): not a learning-history file")
        if not self.plain:
            missing = [a for a in REQUIRED_ATTRS if a not in self.attrs]
            if missing:
                raise _fault(path, f"missing file attribute {missing[0]!r} (a {SCHEMA} file has {', '.join(REQUIRED_ATTRS)})")
        self.goals: list[int] = sorted(int(k) for k in goal_names)
        first = f[str(self.goals[0])]
        if not hasattr(first, "keys") or "actions" not in first:
            raise _fault(path, f"goal '{self.goals[0]}' has no dataset 'actions'")
        shape = first["actions"].shape
        if len(shape) != 2:
            raise _fault(path, f"goal '{self.goals[0]}' dataset 'actions' has shape {tuple(shape)}: (steps, streams) is expected")
        self.steps, self.n_stream = int(shape[0]), int(shape[1])
        if not self.plain and int(self.attrs["n_stream"]) != self.n_stream:
            raise _fault(path, f"attribute n_stream={self.attrs['n_stream']} but the arrays hold {self.n_stream} streams")
        optional_seen: set[str] = set()
        for g in self.goals:
            grp = f[str(g)]
            if not hasattr(grp, "keys"):
                raise _fault(path, f"'{g}' is a dataset, not a goal group")
            wanted = REQUIRED + (() if self.plain else OPTIONAL)
            for name in wanted:
                if name not in grp:
                    raise _fault(path, f"goal '{g}' has no dataset '{name}' (a goal group holds {', '.join(wanted)})")
                _check_dataset(path, str(g), name, grp[name], self.steps, self.n_stream, self.plain)
            if self.plain:
                for name in OPTIONAL:
                    if name in grp:
                        _check_dataset(path, str(g), name, grp[name], self.steps, self.n_stream, True)
                        optional_seen.add(name)
        self.fields: tuple[str, ...] = REQUIRED + (OPTIONAL if not self.plain else tuple(n for n in OPTIONAL if n in optional_seen))
        if self.plain:  # every goal must hold the same optional datasets, or stacking would be ragged
            for g in self.goals:
                for name in self.fields:
                    if name not in f[str(g)]:
                        raise _fault(path, f"goal '{g}' has no dataset '{name}' (other goals have it)")

    # ----------------------------------------------------------------------- access
    @property
    def env(self) -> str:
        """The env family: the ``env`` attribute, else (plain DICP file) parsed from the file name."""
        if "env" in self.attrs:
            return str(self.attrs["env"])
        m = _NAME.match(self.path.name)
        if m is None:
            raise _fault(self.path, "no 'env' attribute and the name is not history_<env>_PPO_alg-seed<k>.hdf5")
        return m.group("env")

    def _check_goal(self, goal: int) -> str:
        key = str(int(goal))
        if int(goal) not in self.goals:
            held = goal_ranges(self.goals)
            raise _fault(self.path, f"no goal group '{key}' (the file holds goals {held})")
        return key

    def _read(self, key: str, name: str, out: np.ndarray | None = None) -> np.ndarray:
        ds = self._f[key][name]
        dtype = DATASETS[name][1]
        if out is None:
            out = np.empty(ds.shape, dtype=dtype)
        if ds.dtype == dtype:
            ds.read_direct(out)
        else:  # a plain DICP file: convert (e.g. int64 actions, float64 rewards) on read
            out[...] = ds[()].astype(dtype)
        return out

    def goal(self, goal: int) -> GoalHistory:
        """Every dataset of one goal, as numpy arrays in the schema's dtypes."""
        key = self._check_goal(goal)
        arrays = {name: self._read(key, name) for name in self.fields}
        return GoalHistory(**arrays)

    def stack(self, goals: Sequence[int] | None = None, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{field: array [G, T, S, ...]}`` for the given goals (default: all) and fields (default:
        every field the file holds), read straight into one preallocated array per field."""
        goals = list(self.goals if goals is None else goals)
        wanted = list(self.fields if fields is None else fields)
        for name in wanted:
            if name not in DATASETS:
                raise BadInput(f"unknown history field {name!r}: allowed are {', '.join(DATASETS)}")
            if name not in self.fields:
                raise _fault(self.path, f"has no dataset '{name}' (it holds {', '.join(self.fields)})")
        keys = [self._check_goal(g) for g in goals]
        out: dict[str, np.ndarray] = {}
        for name in wanted:
            trailing, dtype = DATASETS[name]
            arr = np.empty((len(goals), self.steps, self.n_stream, *trailing), dtype=dtype)
            for i, key in enumerate(keys):
                self._read(key, name, arr[i])
            out[name] = arr
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> HistoryFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HistoryFile({str(self.path)!r}, env={self.attrs.get('env', '?')}, goals={len(self.goals)}, T={self.steps}, S={self.n_stream})"


def open_history(path: str | Path) -> HistoryFile:
    """Open and validate a learning-history file (fiberlab's or DICP's plain one); BadInput on any fault."""
    return HistoryFile(path)


# --------------------------------------------------------------------------- writing
def write_history(path: str | Path, goals: Iterable[tuple[int, GoalHistory]],
                  attrs: dict[str, Any] | Callable[[], dict[str, Any]], compression_level: int = 4) -> Path:
    """Write goals to ``path`` complete or not at all: to ``<path>.tmp``, then an atomic rename.

    ``goals`` may be a generator (one goal in memory at a time). Every goal must carry
    ``action_probs`` and ``compression_mask`` (fiberlab always writes the compressed variant).
    ``attrs`` (a dict, or a function returning one, called after the last goal so that a generator
    can fill in totals such as ``compressed_steps``) must hold :data:`REQUIRED_ATTRS` except
    ``schema``, which is set here. Dicts and lists are stored as JSON strings.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            n = 0
            for goal, h in goals:
                grp = f.create_group(str(int(goal)))
                for fld in dataclass_fields(GoalHistory):
                    arr = getattr(h, fld.name)
                    if arr is None:
                        raise ValueError(f"write_history: goal {goal} has no {fld.name}")
                    trailing, dtype = DATASETS[fld.name]
                    arr = np.ascontiguousarray(arr, dtype=dtype)
                    if arr.ndim != 2 + len(trailing) or arr.shape[2:] != trailing:
                        raise ValueError(f"write_history: goal {goal} {fld.name} has shape {arr.shape}")
                    grp.create_dataset(fld.name, data=arr, compression="gzip", compression_opts=compression_level, shuffle=True)
                n += 1
            if n == 0:
                raise ValueError("write_history: no goals to write")
            values = {**(attrs() if callable(attrs) else attrs), "schema": SCHEMA}
            missing = [a for a in REQUIRED_ATTRS if a not in values]
            if missing:
                raise ValueError(f"write_history: missing attribute {missing[0]!r}")
            for k, v in values.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _plain(v: Any) -> Any:
    """HDF5 attribute values as plain Python (numpy scalars and bytes decoded)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def goal_ranges(goals: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8': a short list in an error line."""
    out: list[str] = []
    start = prev = None
    for g in sorted(goals):
        if start is None:
            start = prev = g
        elif g == prev + 1:
            prev = g
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = g
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(out)
