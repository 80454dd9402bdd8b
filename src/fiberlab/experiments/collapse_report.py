"""``collapse_report.json``: what a collapsed, ablation, continued or scratch run was made from.

One record (:class:`CollapseReport`) for the four kinds. Each kind writes its own keys in a fixed
order (:data:`KEYS`), the same as the files written before this module, so old run folders read
and compare the same; :func:`read_report` reads any of them back (``compare``, ``scratch``). A run
collapsed to a target size (:mod:`fiberlab.fibration.target`) adds one key at the end, ``target``
(the search: target, fraction reached, scale, base thresholds, evaluations); runs without one write
exactly the keys they wrote before.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fiberlab.atomic import write_json_atomic
from fiberlab.errors import BadInput, first_line
from fiberlab.fibration.fibers import LSTM_KEYS

FILE = "collapse_report.json"

_SOURCE = ("source_run", "source_checkpoint", "source_epoch", "source_agent_step")
_SIZES = ("nodes_before", "nodes_after", "node_fraction", "param_fraction", "params_before", "params_after")
_END = ("return_original", "return_collapsed", "draw")
KEYS: dict[str, tuple[str, ...]] = {
    "collapsed": ("kind", *_SOURCE, "thresholds", *LSTM_KEYS, "layers", *_SIZES, *_END),
    "ablation": ("kind", *_SOURCE, "thresholds", *LSTM_KEYS, "layers", "kept", "node_fraction", "param_fraction", *_END),
    "continued": ("kind", *_SOURCE, "thresholds", "layers", *_SIZES, *_END),
    "scratch": (*_SOURCE, "thresholds", "layers", "node_fraction", "param_fraction", "kind", "like", *_END),
}


@dataclass
class CollapseReport:
    """Source checkpoint, thresholds, how the LSTM partition was reached, per-layer widths
    (``layers[name] = {"before": units, "after": width}``), sizes and their fractions, zero-shot
    returns (None: not measured), ablation ``draw`` and ``kept`` units, the collapsed run a
    scratch run is ``like``, and the ``target`` search its thresholds came from (None: given
    directly). Fields a kind does not write stay None."""

    kind: str
    source_run: str | None = None
    source_checkpoint: str | None = None
    source_epoch: int | None = None
    source_agent_step: int | None = None
    thresholds: dict[str, float] | None = None
    lstm_rounds: int | None = None
    lstm_converged: bool | None = None
    lstm_cycle: int | None = None
    lstm_refine_rounds: int | None = None
    layers: dict[str, dict[str, int]] | None = None
    kept: dict[str, list[int]] | None = None
    nodes_before: int | None = None
    nodes_after: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    node_fraction: float | None = None
    param_fraction: float | None = None
    return_original: float | None = None
    return_collapsed: float | None = None
    draw: int | None = None
    like: str | None = None
    target: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The kind's keys (``KEYS[kind]``), in the file's order, then ``target`` when set."""
        keys = KEYS[self.kind] if self.target is None else (*KEYS[self.kind], "target")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollapseReport:
        """Any report file's dict: unknown keys are ignored, missing ones None, a missing kind is
        ``collapsed`` (as ``compare`` reads it)."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in known}, "kind": d.get("kind") or "collapsed"})


def write_report(run_dir: str | Path, report: CollapseReport) -> Path:
    path = Path(run_dir) / FILE
    write_json_atomic(path, report.to_dict())
    return path


def read_report(run_dir: str | Path) -> dict[str, Any] | None:
    """The raw report of ``run_dir`` (None when it has none); unreadable: BadInput, one line."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise BadInput(f"unreadable {path}: {first_line(e)}") from None
    if not isinstance(report, dict):
        raise BadInput(f"unreadable {path}: not a JSON object")
    return report
