"""Migrate files and folders to the current fiberlab format: the library behind ``fiberlab ckpt
migrate`` (whose flags and printing are ``fiberlab.cli.ckpt_migrate``).

Inputs (see ``docs/checkpoints_migration.md``): fiberlab files of an older format version
(upgraded through :mod:`fiberlab.checkpoint.versions`), plain safetensors state dicts, and
``torch.save`` pickles (training saves, Metta and PufferLib files). Detecting and reading them is
``migrate_sources.py`` (pickles are opened ``weights_only``; full unpickling needs
``trust_pickle``), converting them ``migrate_convert.py``; this module decides per file, writes,
backs up and reports.

Writes are atomic (``write_checkpoint``: temp file + rename; backups likewise), so an interrupted
migration never leaves a partial file under a final name; a file already current, or a legacy file
whose output already records its sha256, is skipped, so running twice changes nothing.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fiberlab.atomic import write_json_atomic
from fiberlab.checkpoint.base import FORMAT_VERSION, CheckpointError, file_sha256
from fiberlab.checkpoint.compression import detect
from fiberlab.checkpoint.format import read_manifest, save, write_checkpoint
from fiberlab.checkpoint.legacy_layouts import MigrationError
from fiberlab.checkpoint.migrate_convert import convert_legacy
from fiberlab.checkpoint.migrate_sources import (
    FIBERLAB,
    PICKLED_OBJECT,
    POLICY_RECORD,
    SAFETENSORS,
    STATE_DICT,
    TRAINER_STATE,
    TRAINING_SAVE,
    UNKNOWN,
    Probe,
    detect_kind,
    probe_file,
    read_source,
)
from fiberlab.checkpoint.reader import Examined, examine, read_verified_tensors
from fiberlab.checkpoint.versions import upgrade
from fiberlab.errors import BadInput, first_line

__all__ = [  # the kinds and detect_kind are part of this module's API (see the docs)
    "FIBERLAB", "PICKLED_OBJECT", "POLICY_RECORD", "SAFETENSORS", "STATE_DICT", "TRAINER_STATE", "TRAINING_SAVE", "UNKNOWN",
    "FileResult", "MigrationSummary", "detect_kind", "migrate",
]

CANDIDATE_SUFFIXES = (".pt", ".pth", ".safetensors")
REPORT_NAME = "migration_report.json"
Say = Callable[[str], None]  # receives one line per step (the CLI's -v prints them)


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


# --------------------------------------------------------------------------- writing
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


# --------------------------------------------------------------------------- one file
def _default_output(path: Path, kind: str) -> Path:
    return path if kind.startswith("fiberlab") else path.with_suffix(".safetensors")


def _already_migrated(out: Path, sha: str) -> bool:
    try:
        manifest = read_manifest(out)
    except CheckpointError:
        return False
    return (manifest.migrated_from or {}).get("sha256") == sha


def _migrate_one(path: Path, out: Path | None, *, backup: bool, trust_pickle: bool, say: Say) -> FileResult:
    probe = probe_file(path, trust_pickle)
    say(f"{path}: detected {probe.kind}")
    result = FileResult(str(path), None, "failed", probe.reason or "not a checkpoint this tool reads", probe.kind)
    try:
        return _migrate_probed(path, out, probe, result, backup=backup, say=say)
    except MigrationError as e:
        result.status, result.reason = "failed", str(e)
        return result


def _migrate_probed(path: Path, out: Path | None, probe: Probe, result: FileResult, *, backup: bool, say: Say) -> FileResult:
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
        return _upgrade(path, target, result, backup=backup, in_place=in_place)
    sha = file_sha256(path)
    if not in_place and target.exists():
        if _already_migrated(target, sha):
            result.status, result.reason = "skipped", f"already migrated to {target}"
        else:
            result.reason = f"{target} exists and is not a migration of this file: give another OUTPUT or move it"
        return result
    policy, fields, optimizer, layout, warns = convert_legacy(path, read_source(path, probe))
    result.layout, result.warnings = layout, warns
    say(f"{path}: {layout} weights -> fiberlab {policy.config.name} {policy.config.obs_shape}, {policy.config.num_actions} actions")
    migrated_from = {"path": str(path), "kind": kind, "sha256": sha, "layout": layout}
    if fields["name_convention"]:
        migrated_from["name_convention"] = fields["name_convention"]

    def write() -> None:
        save(
            target, policy, env_spec=fields["env_spec"], progress=fields["progress"], run=fields["run"],
            seed=fields["seed"], config=None, optimizer=optimizer, extra_manifest={"migrated_from": migrated_from},
        )

    return _commit(path, result, write, backup=backup)


def _examined_tensors(path: Path) -> tuple[Examined, dict[str, torch.Tensor]]:
    """What loading ``path`` would check, checksum included: (Examined, verified tensors).

    CheckpointError for a damaged file or one whose policy this fiberlab cannot build."""
    ex = examine(path)
    if ex.policy is None:
        raise CheckpointError(f"{path}: {'; '.join(ex.report.errors)}")
    return ex, read_verified_tensors(ex)


def _upgrade(path: Path, target: Path, result: FileResult, *, backup: bool, in_place: bool) -> FileResult:
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
    manifest, tensors = upgrade(ex.stored, tensors)
    result.layout = "fiberlab"
    method = detect(path)
    return _commit(path, result, lambda: write_checkpoint(target, manifest, tensors, compress=method), backup=backup)


def _commit(path: Path, result: FileResult, write: Callable[[], Any], *, backup: bool) -> FileResult:
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


# --------------------------------------------------------------------------- files and folders
def _quiet(_: str) -> None:
    pass


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
    input: str | Path,
    output: str | Path | None = None,
    *,
    backup: bool = True,
    recursive: bool = False,
    trust_pickle: bool = False,
    say: Say | None = None,
    report_path: str | Path | None = None,
) -> MigrationSummary:
    """Migrate a file or every candidate file of a directory (``*.pt``, ``*.pth``, ``*.safetensors``).

    ``output``: for a file, the output file (or a directory to put it in; default beside the input
    as ``<stem>.safetensors``, fiberlab files in place); for a directory, a directory mirroring it.
    Directories write a JSON report (default ``<output or input dir>/migration_report.json``); a
    file writes one only when ``report_path`` is given. ``say`` gets one line per step (what was
    detected, what was done). Raises :class:`~fiberlab.errors.BadInput` for bad paths; per-file
    faults are recorded as ``failed`` results, never raised.
    """
    say = say or _quiet
    src = Path(input)
    dst = Path(output) if output is not None else None
    if not src.exists():
        raise BadInput(f"{src}: no such file or directory")
    summary = MigrationSummary(str(src), str(dst) if dst else None)
    if src.is_dir():
        if dst is not None and dst.exists() and not dst.is_dir():
            raise BadInput(f"{dst}: OUTPUT for a directory must be a directory")
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
            r = _migrate_one(f, out, backup=backup, trust_pickle=trust_pickle, say=say)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a batch
            r = FileResult(str(f), None, "failed", f"{type(e).__name__}: {first_line(e)}", UNKNOWN)
        say(f"{f}: {r.status}: {r.reason}")
        summary.results.append(r)
    if report is not None:
        write_json_atomic(report, summary.to_dict())
        summary.report_path = str(report)
    return summary

