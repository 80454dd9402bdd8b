"""Run-level fibration workflows: collapse a run's checkpoint, ablate it at random, train the
original on, train the small model from scratch. Each starts a new run folder that trains like any
other and holds ``collapse_report.json`` (:mod:`fiberlab.experiments.collapse_report`) and, for a
collapse, ``fibers.json`` (plain JSON, :func:`save_fibers`).

Run names follow the Metta guide: ``<EXP>_epoch_<E>_base_<lin>_<cnn>_<lstm>_<crit>`` (collapsed),
``<EXP>_epoch_<E>_ablationsrandom<lin>_<cnn>_<lstm>_<crit>`` (ablation, ``_draw<k>`` for k > 0),
``<RUN>_scratch`` (scratch), ``<EXP>_epoch_<E>_continued`` (the original itself, trained on from the
same checkpoint: the control every other curve is measured against). Collapsed, ablation and
continued runs continue the source's step counter and train ``trainer.total_timesteps`` more steps,
each with a fresh optimizer (so the only difference between them is the network); scratch runs
start at 0.

Collapse to a target size: :func:`find_target` searches the thresholds on the source checkpoint
(:mod:`fiberlab.fibration.target`); its result, passed to :func:`collapse_run` or :func:`ablate_run`
as ``target``, sets the thresholds and is recorded under ``target`` in the report. The search is
deterministic, so the same command finds the same thresholds (and run names) again.

Bad input (an unknown run, no checkpoints, a file without a run config, a run that is not a
collapsed run) is a :class:`~fiberlab.errors.BadInput` with a one-line message.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fiberlab.atomic import write_json_atomic
from fiberlab.checkpoint import load
from fiberlab.config import TrainConfig, apply_overrides
from fiberlab.errors import BadInput, first_line
from fiberlab.experiments.collapse_report import FILE as REPORT_FILE
from fiberlab.experiments.collapse_report import (
    CollapseReport,
    read_report,
    write_report,
)
from fiberlab.fibration.collapse import collapse
from fiberlab.fibration.controls import ablate, fiber_widths, node_count, param_count
from fiberlab.fibration.fibers import Fibers, Thresholds, find_fibers
from fiberlab.fibration.target import Target, TargetResult, search_thresholds
from fiberlab.rl.evaluate import evaluate_in
from fiberlab.rl.run_dir import list_checkpoints, make_run_dir


@dataclass
class Source:
    run_dir: Path
    epoch: int
    agent_step: int
    path: Path


def resolve_source(train_dir: str | Path, run: str, epoch: int | None = None) -> Source:
    """Checkpoint ``epoch`` of ``run``, or the closest one (ties: the earlier); latest if None."""
    run_dir = Path(train_dir) / run
    if not run_dir.is_dir():
        raise BadInput(f"unknown run {run!r}: no folder {run_dir}")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise BadInput(f"run {run!r} has no checkpoints in {run_dir / 'checkpoints'}")
    if epoch is None:
        e, s, p = ckpts[-1]
    else:
        e, s, p = min(ckpts, key=lambda c: (abs(c[0] - epoch), c[0]))
    return Source(run_dir, e, s, p)


def _fmt(t: float) -> str:
    return f"{t:g}"


THRESHOLD_KEYS = ("linear", "cnn", "lstm", "critic")


def threshold_tail(thr: Thresholds | dict[str, float]) -> str:
    """``<lin>_<cnn>_<lstm>_<crit>``: the thresholds as run names carry them (from the dataclass or
    from a report's ``thresholds`` dict)."""
    get = thr.get if isinstance(thr, dict) else lambda k: getattr(thr, k)
    return "_".join(_fmt(float(get(k))) for k in THRESHOLD_KEYS)


def run_names(exp: str, epoch: int, thr: Thresholds) -> tuple[str, str]:
    """(collapsed, ablation) run names for checkpoint ``epoch`` of ``exp`` at ``thr``."""
    tail = threshold_tail(thr)
    return f"{exp}_epoch_{epoch}_base_{tail}", f"{exp}_epoch_{epoch}_ablationsrandom{tail}"


def continued_name(exp: str, epoch: int) -> str:
    return f"{exp}_epoch_{epoch}_continued"


def _open_source(train_dir: str, run: str, epoch: int | None) -> tuple[Source, torch.nn.Module, TrainConfig]:
    """The source checkpoint, loaded once: where it is, its policy, and its run config (its
    ``train_dir`` set to ``train_dir``)."""
    src = resolve_source(train_dir, run, epoch)
    ck = load(src.path)
    cfg = ck.manifest.run_config(str(src.path))
    if cfg is None:
        raise BadInput(f"{src.path}: records no run config (a migrated file?): collapse needs a run trained by fiberlab")
    return src, ck.policy, apply_overrides(cfg, [f"train_dir={train_dir}"])


def _source_report(kind: str, run: str, src: Source, **fields: Any) -> CollapseReport:
    return CollapseReport(kind, source_run=run, source_checkpoint=str(src.path), source_epoch=src.epoch, source_agent_step=src.agent_step, **fields)


def _zero_shot(policy: torch.nn.Module, cfg: TrainConfig, episodes: int) -> float | None:
    """Mean return of ``policy`` on a fresh env of ``cfg`` (on ``cfg.device``) before any
    retraining; None when ``episodes`` is 0."""
    return float(evaluate_in(policy, cfg, episodes)["mean_return"]) if episodes else None


def _layers(before: dict[str, tuple[int, int]], after: dict[str, int]) -> dict[str, dict[str, int]]:
    return {name: {"before": n, "after": after[name]} for name, (n, _) in before.items()}


def _sizes(policy: torch.nn.Module, small: torch.nn.Module) -> dict[str, Any]:
    nodes, params = (node_count(policy), node_count(small)), (param_count(policy), param_count(small))
    return {"nodes_before": nodes[0], "nodes_after": nodes[1], "params_before": params[0], "params_after": params[1],
            "node_fraction": nodes[1] / nodes[0], "param_fraction": params[1] / params[0]}


def save_fibers(fibers: Fibers, path: str | Path) -> Path:
    """``fibers.json``: plain JSON (:meth:`Fibers.to_dict`), readable without fiberlab, written atomically."""
    path = Path(path)
    write_json_atomic(path, fibers.to_dict())
    return path


def train_run(cfg: TrainConfig, policy: torch.nn.Module | None = None, start_step: int = 0) -> Any:
    """Train run ``cfg`` (from ``policy`` at agent step ``start_step`` when given); the trainer's result.

    The trainer reports what the user asked for and cannot be done (a run name taken by a run with
    another policy config, an env that does not fit the source policy) as BadInput itself.
    """
    from fiberlab.rl.trainer import Trainer

    return Trainer(cfg, initial_policy=policy, initial_agent_step=start_step).train()


def _start(cfg: TrainConfig, policy: torch.nn.Module, start_step: int, report: CollapseReport, fibers: Fibers | None, train: bool) -> dict[str, Any]:
    """Write the new run's ``fibers.json`` (when given) and report and train it; with ``train``
    False, only a collapse (``fibers`` given) writes its files, the others write nothing."""
    if train or fibers is not None:
        run_dir = Path(cfg.train_dir) / cfg.run
        make_run_dir(run_dir, cfg.train_dir)
        if fibers is not None:
            save_fibers(fibers, run_dir / "fibers.json")
        write_report(run_dir, report)
    if train:
        train_run(cfg, policy, start_step)
    return {"run": cfg.run, **report.to_dict()}


def _budget(cfg: TrainConfig, overrides: list[str], start_step: int, run: str) -> TrainConfig:
    cfg = apply_overrides(cfg, [f"run={run}", "resume=true", *overrides])
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"total_timesteps": start_step + cfg.trainer.total_timesteps})})


def find_target(train_dir: str, run: str, target: Target, thr: Thresholds | None = None, epoch: int | None = None) -> TargetResult:
    """The thresholds (``thr``'s ratios; default: the defaults') whose collapse of ``run``'s
    checkpoint ``epoch`` keeps the fraction closest to ``target``; writes nothing. Pass the result
    as ``target`` to :func:`collapse_run` / :func:`ablate_run`."""
    _, policy, _ = _open_source(train_dir, run, epoch)
    return search_thresholds(policy, target, thr)


def _target_fields(thr: Thresholds, target: TargetResult | None) -> tuple[Thresholds, dict[str, Any] | None]:
    """The thresholds to collapse at (the search's, when there was one) and the report's ``target``."""
    return (thr, None) if target is None else (target.thresholds, target.to_dict())


def collapse_run(train_dir: str, run: str, thr: Thresholds, epoch: int | None = None, overrides: list[str] = (), eval_episodes: int = 32,
                 train: bool = True, target: TargetResult | None = None) -> dict[str, Any]:
    """Collapse ``run``'s checkpoint and train the collapsed policy in a new run; with ``target``
    (:func:`find_target` on the same checkpoint) its thresholds replace ``thr``."""
    src, policy, base_cfg = _open_source(train_dir, run, epoch)
    thr, searched = _target_fields(thr, target)
    fibers = find_fibers(policy, thr)
    small = collapse(policy, fibers)
    name, _ = run_names(run, src.epoch, thr)
    report = _source_report(
        "collapsed", run, src, thresholds=thr.model_dump(), **fibers.lstm_report(),
        layers=_layers(fibers.widths(), fiber_widths(fibers)), **_sizes(policy, small),
        return_original=_zero_shot(policy, base_cfg, eval_episodes), return_collapsed=_zero_shot(small, base_cfg, eval_episodes),
        target=searched,
    )
    cfg = _budget(base_cfg, list(overrides), src.agent_step, name)
    return _start(cfg, small, src.agent_step, report, fibers, train)


def ablate_run(train_dir: str, run: str, thr: Thresholds, epoch: int | None = None, overrides: list[str] = (), draws: int = 1, eval_episodes: int = 32,
               train: bool = True, target: TargetResult | None = None) -> list[dict[str, Any]]:
    """Random ablation to the collapsed per-layer widths, ``draws`` times, each trained in a run;
    with ``target`` the widths are those of the collapse at the thresholds it found.

    The original's zero-shot return is recorded too (the same evaluation as the collapsed run's),
    so ``compare`` can set each ablation against its own original."""
    src, policy, base_cfg = _open_source(train_dir, run, epoch)
    thr, searched = _target_fields(thr, target)
    fibers = find_fibers(policy, thr)
    widths = fiber_widths(fibers)
    _, name = run_names(run, src.epoch, thr)
    original = _zero_shot(policy, base_cfg, eval_episodes)
    out = []
    for k in range(draws):
        small, kept = ablate(policy, widths, seed=base_cfg.seed * 1000 + k)
        sizes = _sizes(policy, small)
        report = _source_report(
            "ablation", run, src, thresholds=thr.model_dump(), **fibers.lstm_report(),
            layers=_layers(fibers.widths(), widths), kept=kept,
            node_fraction=sizes["node_fraction"], param_fraction=sizes["param_fraction"],
            return_original=original, return_collapsed=_zero_shot(small, base_cfg, eval_episodes), draw=k, target=searched,
        )
        cfg = _budget(base_cfg, list(overrides), src.agent_step, name if k == 0 else f"{name}_draw{k}")
        out.append(_start(cfg, small, src.agent_step, report, None, train))
    return out


def continue_run(train_dir: str, run: str, epoch: int | None = None, overrides: list[str] = (), eval_episodes: int = 32, train: bool = True) -> dict[str, Any]:
    """Train the original policy on from checkpoint ``epoch`` in a new run (the "original continued" curve).

    Why a new run rather than resuming ``run``: the collapsed and ablation runs start from the same
    checkpoint with a fresh optimizer and the same budget, so this control differs from them only
    in the network, and the source run stays untouched.
    """
    src, policy, base_cfg = _open_source(train_dir, run, epoch)
    report = _source_report("continued", run, src, **_sizes(policy, policy), return_original=_zero_shot(policy, base_cfg, eval_episodes))
    cfg = _budget(base_cfg, list(overrides), src.agent_step, continued_name(run, src.epoch))
    return _start(cfg, policy, src.agent_step, report, None, train)


def scratch_run(train_dir: str, like: str, overrides: list[str] = (), train: bool = True) -> dict[str, Any]:
    """A freshly initialised policy with the widths of the collapsed run ``like``, trained from 0."""
    from fiberlab.policies import build_policy

    like_dir = Path(train_dir) / like
    if not (like_dir / "config.json").is_file() or not (like_dir / REPORT_FILE).is_file():
        raise BadInput(f"run {like!r} is not a collapsed run (no config.json and {REPORT_FILE} in {like_dir})")
    try:
        like_cfg = TrainConfig.model_validate_json((like_dir / "config.json").read_text())
    except (OSError, ValueError) as e:  # ValueError: pydantic's, bad UTF-8
        raise BadInput(f"unreadable {like_dir / 'config.json'}: {first_line(e)}") from None
    like_report = CollapseReport.from_dict(read_report(like_dir))
    if like_report.source_agent_step is None:
        raise BadInput(f"{like_dir / REPORT_FILE} records no source_agent_step: scratch needs a collapsed run")
    budget = max(1, like_cfg.trainer.total_timesteps - like_report.source_agent_step)  # the collapsed run's
    cfg = apply_overrides(like_cfg, [f"train_dir={train_dir}", f"run={like}_scratch", "resume=true", f"trainer.total_timesteps={budget}", *overrides])
    torch.manual_seed(cfg.seed)
    policy = build_policy(like_cfg.policy)
    report = replace(like_report, kind="scratch", like=like, return_original=None, return_collapsed=None, draw=None)
    return _start(cfg, policy, 0, report, None, train)
