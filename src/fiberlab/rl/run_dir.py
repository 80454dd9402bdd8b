"""Run folders: ``train_dir/<run>/`` with config.json, metrics.jsonl, checkpoints/, tensorboard/."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from fiberlab.atomic import write_json_atomic
from fiberlab.config import TrainConfig
from fiberlab.errors import BadInput

CKPT_RE = re.compile(r"^(?P<run>.+)__e(?P<epoch>\d+)__s(?P<step>\d+)\.safetensors$")


def default_run_name(recipe: str) -> str:
    return f"{recipe.replace('.', '_')}_{time.strftime('%Y%m%d_%H%M%S')}"


def checkpoint_name(run: str, epoch: int, agent_step: int) -> str:
    return f"{run}__e{epoch}__s{agent_step}.safetensors"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, int, Path]]:
    """(epoch, agent_step, path) of every complete checkpoint, oldest first."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m["epoch"]), int(m["step"]), p))
    return sorted(found)


def run_finished(run_dir: str | Path, total_steps: int) -> bool:
    """Whether a run's newest checkpoint reached ``total_steps`` (then training it again does nothing)."""
    ckpts = list_checkpoints(run_dir)
    return bool(ckpts) and ckpts[-1][1] >= total_steps


def start_over(run_dir: Path) -> None:
    """Remove what an earlier attempt of this run left (``resume=false``)."""
    for name in ("checkpoints", "tensorboard", "wandb"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "learning_curve.png"):
        (run_dir / name).unlink(missing_ok=True)


def truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Keep only metrics rows up to ``epoch`` (the checkpoint a resume starts from)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epoch:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def make_run_dir(run_dir: Path, train_dir: str | Path) -> list[Path]:
    """Create ``run_dir`` (and the missing folders above it) before any work starts; return the
    folders this call created, deepest last, so :func:`remove_made_dirs` can take them back.

    A ``train_dir`` that cannot hold runs (a file, a folder one may not write, a path under
    ``/proc``) is a :class:`~fiberlab.errors.BadInput` naming it; nothing is created then.
    """
    run_dir = Path(run_dir)
    missing = []
    p = run_dir
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_made_dirs(list(reversed(missing)))
        reason = e.strerror or str(e)
        where = f" ({e.filename})" if e.filename and Path(e.filename) not in (Path(train_dir), run_dir) else ""
        raise BadInput(f"bad value {str(train_dir)!r} for train_dir: cannot create {run_dir}{where}: {reason}; a folder you can write is allowed") from e
    return list(reversed(missing))


def remove_made_dirs(made: list[Path]) -> None:
    """Remove the folders :func:`make_run_dir` created, deepest first, if they are still empty."""
    for p in reversed(made):
        try:
            p.rmdir()
        except OSError:
            break


def save_config(run_dir: Path, cfg: TrainConfig) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    write_json_atomic(path, cfg.model_dump())
    return path
