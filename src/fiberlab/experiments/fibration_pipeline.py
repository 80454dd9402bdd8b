"""``fiberlab pipeline fibration RECIPE``: baseline -> original continued -> collapse -> random
ablation -> scratch -> comparison plot, for one or more seeds, resumable.

Every stage is an ordinary run folder; a stage whose run already reached its step budget is
skipped, and an interrupted stage resumes from its newest checkpoint (the trainer's resume), so
rerunning the same command finishes the job without redoing finished work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fiberlab.config import TrainConfig, apply_overrides
from fiberlab.fibration.fibers import Thresholds
from fiberlab.fibration.workflow import ablate_run, collapse_run, continue_run, continued_name, run_names, scratch_run
from fiberlab.rl.run_dir import list_checkpoints


STAGES = ("baseline", "continued", "collapsed", "ablation", "scratch")


@dataclass
class PipelineResult:
    runs: dict[str, list[str]] = field(default_factory=dict)  # stage -> run names
    skipped: list[str] = field(default_factory=list)
    figure: Path | None = None


def _done(run_dir: Path, steps: int) -> bool:
    ckpts = list_checkpoints(run_dir)
    return bool(ckpts) and ckpts[-1][1] >= steps


def run_pipeline(
    recipe: str,
    overrides: list[str],
    thresholds: Thresholds,
    seeds: int = 1,
    retrain_fraction: float = 0.5,
    eval_episodes: int = 32,
    log: Callable[[str], Any] = print,
) -> PipelineResult:
    """Run (or finish) the whole fibration experiment; return the run names and the figure."""
    from fiberlab.experiments.compare import compare_runs
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.trainer import Trainer

    base = apply_overrides(get_recipe(recipe), overrides)
    name = base.run or f"{recipe.replace('.', '_')}_fibration"
    train_dir = base.train_dir
    retrain = max(1, int(base.trainer.total_timesteps * retrain_fraction))
    result = PipelineResult(runs={stage: [] for stage in STAGES})
    stage_over = [f"trainer.total_timesteps={retrain}", f"progress={base.progress}"]
    for s in range(seeds):
        seed = base.seed + s
        run = f"{name}_seed{seed}" if seeds > 1 else name
        cfg: TrainConfig = apply_overrides(base, [f"run={run}", f"seed={seed}", "resume=true"])
        run_dir = Path(train_dir) / run
        result.runs["baseline"].append(run)
        if _done(run_dir, cfg.trainer.total_timesteps):
            result.skipped.append(run)
        else:
            log(f"[pipeline] baseline {run}")
            Trainer(cfg).train()
        epoch, step, _ = list_checkpoints(run_dir)[-1]
        collapsed, ablation = run_names(run, epoch, thresholds)
        stages = (("continued", continued_name(run, epoch)), ("collapsed", collapsed), ("ablation", ablation))
        for stage, target in stages:
            result.runs[stage].append(target)
            if _done(Path(train_dir) / target, step + retrain):
                result.skipped.append(target)
                continue
            log(f"[pipeline] {stage} {target}")
            if stage == "continued":
                continue_run(train_dir, run, epoch, stage_over, eval_episodes=eval_episodes)
            elif stage == "collapsed":
                collapse_run(train_dir, run, thresholds, epoch, stage_over, eval_episodes=eval_episodes)
            else:
                ablate_run(train_dir, run, thresholds, epoch, stage_over, eval_episodes=eval_episodes)
        scratch = f"{collapsed}_scratch"
        result.runs["scratch"].append(scratch)
        if _done(Path(train_dir) / scratch, retrain):
            result.skipped.append(scratch)
        else:
            log(f"[pipeline] scratch {scratch}")
            scratch_run(train_dir, collapsed, [f"progress={base.progress}"])
    runs = [Path(train_dir) / r for stage in STAGES for r in result.runs[stage]]
    png, _, _ = compare_runs(runs, Path(train_dir) / f"{name}_compare.png")
    result.figure = Path(png)
    return result
