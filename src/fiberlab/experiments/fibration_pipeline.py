"""``fiberlab pipeline fibration RECIPE``: baseline -> original continued -> collapse -> random
ablation -> scratch -> comparison plot, for one or more seeds, resumable.

Every stage is an ordinary run folder; a stage whose run already reached its step budget is
skipped, and an interrupted stage resumes from its newest checkpoint (the trainer's resume), so
rerunning the same command finishes the job without redoing finished work.

With a target size (``--target-fraction`` / ``--target-params``) each seed's thresholds are
searched on that seed's own final checkpoint (so they may differ between seeds) before its runs
are named; the search is deterministic, so a rerun finds the same names and skips what is done.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fiberlab.config import TrainConfig, apply_overrides
from fiberlab.experiments.fibration_runs import (
    ablate_run,
    collapse_run,
    continue_run,
    continued_name,
    find_target,
    run_names,
    scratch_run,
    train_run,
)
from fiberlab.fibration.fibers import Thresholds
from fiberlab.fibration.target import Target, TargetResult
from fiberlab.rl.run_dir import list_checkpoints, run_finished
from fiberlab.runtime import available_cores

STAGES = ("baseline", "continued", "collapsed", "ablation", "scratch")


@dataclass
class PipelineResult:
    runs: dict[str, list[str]] = field(default_factory=dict)  # stage -> run names
    skipped: list[str] = field(default_factory=list)
    figure: Path | None = None


def _run_stages(jobs: list[tuple[str, Callable[..., Any], tuple]]) -> None:
    """One pipeline job: stages that must run in order (a collapse, then its scratch twin)."""
    for _, fn, args in jobs:
        fn(*args)


def _execute(jobs: list[list[tuple[str, Callable[..., Any], tuple]]], workers: int, log: Callable[[str], Any]) -> None:
    """Run independent jobs, ``workers`` at a time in fresh processes (inline when 1).

    Why processes: a training run keeps one core busy (env steps and a single-thread torch), so
    on 2 cores two independent runs finish in the time of one. ``spawn`` rather than fork: the
    parent has already used torch, whose thread pools do not survive a fork.
    """
    for job in jobs:
        log("[pipeline] " + " -> ".join(label for label, _, _ in job))
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _run_stages(job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(_run_stages, job) for job in jobs]:
            future.result()  # re-raises a stage's error here


def _seed_thresholds(train_dir: str, run: str, epoch: int, thresholds: Thresholds, target: Target | None,
                     log: Callable[[str], Any]) -> tuple[Thresholds, TargetResult | None]:
    """One seed's thresholds: ``thresholds`` as given, or (with ``target``) searched with their
    ratios on the seed's checkpoint ``epoch``, the result logged in one line."""
    if target is None:
        return thresholds, None
    found = find_target(train_dir, run, target, thresholds, epoch)
    log(f"[pipeline] {run} epoch {epoch}: {found.describe()}")
    return found.thresholds, found


def run_pipeline(
    recipe: str,
    overrides: list[str],
    thresholds: Thresholds,
    seeds: int = 1,
    retrain_fraction: float = 0.5,
    eval_episodes: int = 32,
    log: Callable[[str], Any] = print,
    workers: int = 1,
    target: Target | None = None,
) -> PipelineResult:
    """Run (or finish) the whole fibration experiment; return the run names and the figure.

    Two phases: the baselines (one per seed), then every seed's continued, collapsed (followed by
    its scratch twin, which needs the collapsed run's widths) and ablation runs. Within a phase the
    jobs are independent and run ``workers`` at a time. ``target``: collapse each seed to that
    size instead (thresholds searched per seed with the ratios of ``thresholds``).
    """
    from fiberlab.experiments.compare import compare_runs
    from fiberlab.recipes import get_recipe

    base = apply_overrides(get_recipe(recipe), overrides)
    name = base.run or f"{recipe.replace('.', '_')}_fibration"
    train_dir = base.train_dir
    retrain = max(1, int(base.trainer.total_timesteps * retrain_fraction))
    result = PipelineResult(runs={stage: [] for stage in STAGES})
    progress = base.progress if workers <= 1 else "plain"  # parallel runs: no live bars over each other
    # parallel runs split the cores for their updates (a run cannot see the others; auto would take them all)
    share = max(1, available_cores() // workers)
    side_by_side = [f"trainer.{key}={share}" for key in ("torch_threads", "update_threads")
                    if workers > 1 and getattr(base.trainer, key) is None]
    stage_over = [f"trainer.total_timesteps={retrain}", f"progress={progress}", *side_by_side]
    runs = [f"{name}_seed{base.seed + s}" if seeds > 1 else name for s in range(seeds)]

    baselines = []
    for s, run in enumerate(runs):
        cfg: TrainConfig = apply_overrides(base, [f"run={run}", f"seed={base.seed + s}", "resume=true", f"progress={progress}", *side_by_side])
        result.runs["baseline"].append(run)
        if run_finished(Path(train_dir) / run, cfg.trainer.total_timesteps):
            result.skipped.append(run)
        else:
            baselines.append([(f"baseline {run}", train_run, (cfg,))])
    _execute(baselines, workers, log)

    jobs = []
    for run in runs:
        epoch, step, _ = list_checkpoints(Path(train_dir) / run)[-1]
        thr, found = _seed_thresholds(train_dir, run, epoch, thresholds, target, log)
        collapsed, ablation = run_names(run, epoch, thr)
        scratch = f"{collapsed}_scratch"
        todo = {
            "continued": (continued_name(run, epoch), step + retrain, continue_run, (train_dir, run, epoch, stage_over, eval_episodes)),
            "collapsed": (collapsed, step + retrain, collapse_run, (train_dir, run, thr, epoch, stage_over, eval_episodes, True, found)),
            "scratch": (scratch, retrain, scratch_run, (train_dir, collapsed, [f"progress={progress}", *side_by_side])),
            "ablation": (ablation, step + retrain, ablate_run, (train_dir, run, thr, epoch, stage_over, 1, eval_episodes, True, found)),
        }
        pending = {}
        for stage, (stage_run, steps, fn, args) in todo.items():
            result.runs[stage].append(stage_run)
            if run_finished(Path(train_dir) / stage_run, steps):
                result.skipped.append(stage_run)
            else:
                pending[stage] = (f"{stage} {stage_run}", fn, args)
        chain = [pending[s] for s in ("collapsed", "scratch") if s in pending]  # scratch reads the collapsed run
        jobs += [job for job in ([pending["continued"]] if "continued" in pending else [], chain,
                                 [pending["ablation"]] if "ablation" in pending else []) if job]
    _execute(jobs, workers, log)

    all_runs = [Path(train_dir) / r for stage in STAGES for r in result.runs[stage]]
    png, *_ = compare_runs(all_runs, Path(train_dir) / f"{name}_compare.png", random_episodes=eval_episodes)
    result.figure = Path(png)
    return result
