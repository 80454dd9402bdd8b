"""Run-level workflows: collapse a run's checkpoint, ablate it at random, train the small model
from scratch. Each starts a new run folder that trains like any other and holds
``fibers.json`` (plain JSON) and ``collapse_report.json``.

Run names follow the Metta guide: ``<EXP>_epoch_<E>_base_<lin>_<cnn>_<lstm>_<crit>`` (collapsed),
``<EXP>_epoch_<E>_ablationsrandom<lin>_<cnn>_<lstm>_<crit>`` (ablation, ``_draw<k>`` for k > 0),
``<RUN>_scratch`` (scratch), ``<EXP>_epoch_<E>_continued`` (the original itself, trained on from the
same checkpoint: the control every other curve is measured against). Collapsed, ablation and
continued runs continue the source's step counter and train ``trainer.total_timesteps`` more steps,
each with a fresh optimizer (so the only difference between them is the network); scratch runs
start at 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fiberlab.atomic import write_json_atomic
from fiberlab.checkpoint import load
from fiberlab.config import TrainConfig, apply_overrides
from fiberlab.fibration.collapse import collapse
from fiberlab.fibration.controls import ablate, fiber_widths, node_count, param_count
from fiberlab.fibration.fibers import Thresholds, find_fibers
from fiberlab.rl.run_dir import list_checkpoints


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
        raise ValueError(f"unknown run {run!r}: no folder {run_dir}")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise ValueError(f"run {run!r} has no checkpoints in {run_dir / 'checkpoints'}")
    if epoch is None:
        e, s, p = ckpts[-1]
    else:
        e, s, p = min(ckpts, key=lambda c: (abs(c[0] - epoch), c[0]))
    return Source(run_dir, e, s, p)


def _fmt(t: float) -> str:
    return f"{t:g}"


def run_names(exp: str, epoch: int, thr: Thresholds) -> tuple[str, str]:
    tail = "_".join(_fmt(getattr(thr, k)) for k in ("linear", "cnn", "lstm", "critic"))
    return f"{exp}_epoch_{epoch}_base_{tail}", f"{exp}_epoch_{epoch}_ablationsrandom{tail}"


def continued_name(exp: str, epoch: int) -> str:
    return f"{exp}_epoch_{epoch}_continued"


def _source_config(src: Source) -> TrainConfig:
    cfg = load(src.path).manifest.run_config(str(src.path))
    if cfg is None:
        raise ValueError(f"{src.path}: records no run config (a migrated file?): collapse needs a run trained by fiberlab")
    return cfg


def zero_shot_return(policy: torch.nn.Module, cfg: TrainConfig, episodes: int) -> float:
    """Mean return of ``policy`` on a fresh env of ``cfg``, before any retraining."""
    from fiberlab.rl.evaluate import evaluate_in

    return float(evaluate_in(policy, cfg, episodes)["mean_return"])


def _layers_report(before: dict[str, tuple[int, int]], after: dict[str, int]) -> dict[str, dict[str, int]]:
    return {name: {"before": n, "after": after[name]} for name, (n, _) in before.items()}


def _start(cfg: TrainConfig, policy: torch.nn.Module, start_step: int, report: dict[str, Any], fibers_json: dict | None):
    from fiberlab.rl.trainer import Trainer

    run_dir = Path(cfg.train_dir) / cfg.run
    run_dir.mkdir(parents=True, exist_ok=True)
    if fibers_json is not None:
        write_json_atomic(run_dir / "fibers.json", fibers_json)
    write_json_atomic(run_dir / "collapse_report.json", report)
    return Trainer(cfg, initial_policy=policy, initial_agent_step=start_step).train()


def _budget(cfg: TrainConfig, overrides: list[str], start_step: int, run: str) -> TrainConfig:
    cfg = apply_overrides(cfg, [f"run={run}", "resume=true", *overrides])
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"total_timesteps": start_step + cfg.trainer.total_timesteps})})


def collapse_run(train_dir: str, run: str, thr: Thresholds, epoch: int | None = None, overrides: list[str] = (), eval_episodes: int = 32, train: bool = True) -> dict[str, Any]:
    """Collapse ``run``'s checkpoint and train the collapsed policy in a new run."""
    src = resolve_source(train_dir, run, epoch)
    base_cfg = apply_overrides(_source_config(src), [f"train_dir={train_dir}"])
    policy = load(src.path).policy
    fibers = find_fibers(policy, thr)
    small = collapse(policy, fibers)
    name, _ = run_names(run, src.epoch, thr)
    report = {
        "kind": "collapsed", "source_run": run, "source_checkpoint": str(src.path), "source_epoch": src.epoch,
        "source_agent_step": src.agent_step, "thresholds": thr.model_dump(), **fibers.lstm_report(),
        "layers": _layers_report(fibers.widths(), fiber_widths(fibers)),
        "nodes_before": node_count(policy), "nodes_after": node_count(small),
        "node_fraction": node_count(small) / node_count(policy), "param_fraction": param_count(small) / param_count(policy),
        "params_before": param_count(policy), "params_after": param_count(small),
        "return_original": zero_shot_return(policy, base_cfg, eval_episodes) if eval_episodes else None,
        "return_collapsed": zero_shot_return(small, base_cfg, eval_episodes) if eval_episodes else None,
        "draw": None,
    }
    cfg = _budget(base_cfg, list(overrides), src.agent_step, name)
    if train:
        _start(cfg, small, src.agent_step, report, fibers.to_dict())
    else:
        run_dir = Path(cfg.train_dir) / cfg.run
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "fibers.json", fibers.to_dict())
        write_json_atomic(run_dir / "collapse_report.json", report)
    return {"run": cfg.run, **report}


def ablate_run(train_dir: str, run: str, thr: Thresholds, epoch: int | None = None, overrides: list[str] = (), draws: int = 1, eval_episodes: int = 32, train: bool = True) -> list[dict[str, Any]]:
    """Random ablation to the collapsed per-layer widths, ``draws`` times, each trained in a run."""
    src = resolve_source(train_dir, run, epoch)
    base_cfg = apply_overrides(_source_config(src), [f"train_dir={train_dir}"])
    policy = load(src.path).policy
    fibers = find_fibers(policy, thr)
    widths = fiber_widths(fibers)
    _, name = run_names(run, src.epoch, thr)
    out = []
    for k in range(draws):
        small, kept = ablate(policy, widths, seed=base_cfg.seed * 1000 + k)
        report = {
            "kind": "ablation", "source_run": run, "source_checkpoint": str(src.path), "source_epoch": src.epoch,
            "source_agent_step": src.agent_step, "thresholds": thr.model_dump(), **fibers.lstm_report(),
            "layers": _layers_report(fibers.widths(), widths), "kept": kept,
            "node_fraction": node_count(small) / node_count(policy), "param_fraction": param_count(small) / param_count(policy),
            "return_original": None,
            "return_collapsed": zero_shot_return(small, base_cfg, eval_episodes) if eval_episodes else None,
            "draw": k,
        }
        cfg = _budget(base_cfg, list(overrides), src.agent_step, name if k == 0 else f"{name}_draw{k}")
        if train:
            _start(cfg, small, src.agent_step, report, None)
        out.append({"run": cfg.run, **report})
    return out


def continue_run(train_dir: str, run: str, epoch: int | None = None, overrides: list[str] = (), eval_episodes: int = 32, train: bool = True) -> dict[str, Any]:
    """Train the original policy on from checkpoint ``epoch`` in a new run (the "original continued" curve).

    Why a new run rather than resuming ``run``: the collapsed and ablation runs start from the same
    checkpoint with a fresh optimizer and the same budget, so this control differs from them only
    in the network, and the source run stays untouched.
    """
    src = resolve_source(train_dir, run, epoch)
    base_cfg = apply_overrides(_source_config(src), [f"train_dir={train_dir}"])
    policy = load(src.path).policy
    nodes, params = node_count(policy), param_count(policy)
    report = {
        "kind": "continued", "source_run": run, "source_checkpoint": str(src.path), "source_epoch": src.epoch,
        "source_agent_step": src.agent_step, "thresholds": None, "layers": None,
        "nodes_before": nodes, "nodes_after": nodes, "node_fraction": 1.0, "param_fraction": 1.0,
        "params_before": params, "params_after": params,
        "return_original": zero_shot_return(policy, base_cfg, eval_episodes) if eval_episodes else None,
        "return_collapsed": None, "draw": None,
    }
    cfg = _budget(base_cfg, list(overrides), src.agent_step, continued_name(run, src.epoch))
    if train:
        _start(cfg, policy, src.agent_step, report, None)
    return {"run": cfg.run, **report}


def scratch_run(train_dir: str, like: str, overrides: list[str] = (), train: bool = True) -> dict[str, Any]:
    """A freshly initialised policy with the widths of the collapsed run ``like``, trained from 0."""
    from fiberlab.policies import build_policy

    like_dir = Path(train_dir) / like
    report_path = like_dir / "collapse_report.json"
    if not (like_dir / "config.json").is_file() or not report_path.is_file():
        raise ValueError(f"run {like!r} is not a collapsed run (no config.json and collapse_report.json in {like_dir})")
    import json

    like_cfg = TrainConfig.model_validate_json((like_dir / "config.json").read_text())
    like_report = json.loads(report_path.read_text())
    budget = max(1, like_cfg.trainer.total_timesteps - like_report["source_agent_step"])  # the collapsed run's
    cfg = apply_overrides(like_cfg, [f"train_dir={train_dir}", f"run={like}_scratch", "resume=true", f"trainer.total_timesteps={budget}", *overrides])
    torch.manual_seed(cfg.seed)
    policy = build_policy(like_cfg.policy)
    report = {k: like_report.get(k) for k in ("source_run", "source_checkpoint", "source_epoch", "source_agent_step", "thresholds", "layers", "node_fraction", "param_fraction")}
    report.update({"kind": "scratch", "like": like, "return_original": None, "return_collapsed": None, "draw": None})
    if train:
        _start(cfg, policy, 0, report, None)
    return {"run": cfg.run, **report}


def parse_thresholds(threshold: float | None, linear: float | None, cnn: float | None, lstm: float | None, critic: float | None) -> Thresholds:
    """``--threshold T`` sets all four; per-type flags override; defaults otherwise."""
    for name, v in (("threshold", threshold), ("linear-thr", linear), ("cnn-thr", cnn), ("lstm-thr", lstm), ("critic-thr", critic)):
        if v is not None and not 0.0 <= v <= 2.0:  # also refuses NaN
            raise ValueError(f"bad value {v} for --{name}: thresholds are in [0, 2]")
    base = Thresholds() if threshold is None else Thresholds(linear=threshold, cnn=threshold, lstm=threshold, critic=threshold)
    update = {k: v for k, v in (("linear", linear), ("cnn", cnn), ("lstm", lstm), ("critic", critic)) if v is not None}
    return base.model_copy(update=update)
