"""``fiberlab pipeline ad ENV``: collect -> train (AD, CompressedAD, random markers) x seeds ->
in-context evaluation -> comparison, resumable at every stage.

Every stage leaves a file, and a stage whose file is there is skipped, so rerunning the same
command after an interruption finishes the job without redoing finished work:

- collect: ``<out_dir>/history_<env>_PPO_alg-seed<k>_compressed.hdf5`` (written complete or not
  at all; the collector itself resumes per goal batch);
- train: one run folder per (model, seed), ``<train_dir>/<env>_<model>_seed<s>/`` (never shared
  between models); a run that reached ``train_steps`` is skipped, an interrupted one resumes
  from its last checkpoint;
- evaluate: ``<run>/in_context_test_<markers>_T<steps>.json`` per marker mode (AD: none;
  CompressedAD: causal online and none, the guide's setting; random markers: random), made
  again when the best checkpoint changed since (the run trained on);
- compare: ``ad_compare.{md,csv,png,pdf,json}`` under ``out`` (default ``<train_dir>/<env>_compare``),
  always rebuilt (seconds).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fiberlab.atomic import write_json_atomic
from fiberlab.config import apply_overrides
from fiberlab.distill.compare import (
    MODELS,
    CompareResult,
    compare_ad_runs,
    eval_file_name,
    find_runs,
)
from fiberlab.distill.config import ADConfig, CollectConfig
from fiberlab.errors import BadInput

# the marker modes each model is evaluated with in context
EVALUATIONS: dict[str, tuple[str, ...]] = {"ad": ("none",), "compressed": ("causal", "none"), "random_markers": ("random",)}


@dataclass
class ADPipelineResult:
    dataset: Path
    runs: dict[str, list[Path]] = field(default_factory=dict)  # model -> run folders, one per seed
    evaluations: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stages found finished
    compare: CompareResult | None = None

    @property
    def table_md(self) -> Path | None:
        return self.compare.table_md if self.compare else None

    @property
    def table_csv(self) -> Path | None:
        return self.compare.table_csv if self.compare else None

    @property
    def figure_png(self) -> Path | None:
        return self.compare.figure_png if self.compare else None


def best_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "best.safetensors"


def train_finished(run_dir: Path, cfg: ADConfig) -> bool:
    """The run reached ``cfg.train_steps`` (its last checkpoint says so) and has a best checkpoint."""
    from fiberlab.distill.train import run_finished

    return run_finished(run_dir, cfg)


def evaluate_runs(
    runs: Sequence[str | Path],
    eval_timesteps: int = 1000,
    evaluations: dict[str, tuple[str, ...]] | None = None,
    seed: int = 0,
    log: Callable[[str], Any] = print,
) -> tuple[list[Path], list[str]]:
    """Evaluate each run's best checkpoint in context on the test goals, once per marker mode of
    its model (``EVALUATIONS``); a result already on disk is kept. Returns (files, skipped)."""
    from fiberlab.distill.in_context import evaluate_checkpoint

    evaluations = EVALUATIONS if evaluations is None else evaluations
    written, skipped = [], []
    for run_dir in find_runs(runs):
        model = _run_model(run_dir)
        for markers in evaluations.get(model, ("none",)):
            path = run_dir / eval_file_name("test", markers, eval_timesteps)
            ckpt = best_checkpoint(run_dir)
            if path.is_file() and _evaluated_step(path) == _checkpoint_step(ckpt):
                skipped.append(f"evaluate {run_dir.name} ({markers})")
                written.append(path)
                continue
            if not ckpt.is_file():
                raise BadInput(f"{run_dir}: no checkpoints/best.safetensors to evaluate (train the run first)")
            log(f"[pipeline] evaluate {run_dir.name}: {eval_timesteps} in-context steps on the test goals, markers {markers}")
            res = evaluate_checkpoint(ckpt, goals="test", eval_timesteps=eval_timesteps, markers=markers, seed=seed,
                                      dataset=_run_dataset(run_dir))
            write_json_atomic(path, res)
            written.append(path)
    return written, skipped


def _checkpoint_step(ckpt: Path) -> int | None:
    """The training step a checkpoint's weights are from (its header only; None if unreadable)."""
    from fiberlab.checkpoint.format import read_header

    try:
        return read_header(ckpt).get("meta", {}).get("step")
    except (BadInput, OSError):
        return None


def _evaluated_step(path: Path) -> int | None:
    """The checkpoint step an evaluation file was made from: a different one now means the run
    trained on after it was evaluated (the file is stale and is made again)."""
    try:
        return json.loads(path.read_text()).get("checkpoint_step")
    except (OSError, json.JSONDecodeError):
        return None


def _run_config(run_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{run_dir / 'config.json'}: not a readable run config ({e.__class__.__name__})") from None
    return cfg


def _run_model(run_dir: Path) -> str:
    cfg = _run_config(run_dir)
    inner = cfg.get("config", cfg) if isinstance(cfg.get("config"), dict) else cfg
    return str(inner.get("model", "ad"))


def _run_dataset(run_dir: Path) -> str | None:
    cfg = _run_config(run_dir)
    inner = cfg.get("config", cfg) if isinstance(cfg.get("config"), dict) else cfg
    return cfg.get("dataset") or inner.get("dataset")


def run_ad_pipeline(
    env: str = "darkroom",
    seeds: int = 3,
    collect_overrides: Sequence[str] = (),
    train_overrides: Sequence[str] = (),
    eval_timesteps: int = 1000,
    out: str | Path | None = None,
    models: Sequence[str] = MODELS,
    evaluations: dict[str, tuple[str, ...]] | None = None,
    log: Callable[[str], Any] = print,
) -> ADPipelineResult:
    """Run (or finish) the whole experiment; every input is validated before any work starts."""
    from fiberlab.distill.histories import history_path
    from fiberlab.envs.darkroom import check_env

    env = check_env(env)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise BadInput(f"bad value {seeds!r} for seeds: a positive integer is allowed")
    if isinstance(eval_timesteps, bool) or not isinstance(eval_timesteps, int) or eval_timesteps < 1:
        raise BadInput(f"bad value {eval_timesteps!r} for eval_timesteps: a positive integer is allowed")
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise BadInput(f"bad model {bad[0] if bad else 'list (empty)'!r}: allowed are {', '.join(MODELS)}")
    ccfg = apply_overrides(CollectConfig(env=env), list(collect_overrides))
    if ccfg.env != env:
        raise BadInput(f"env={ccfg.env} in the collection overrides but the pipeline is for {env}: give the env once")
    tcfg = apply_overrides(ADConfig(), list(train_overrides))
    for key in ("model", "seed", "run"):
        if any(o.split("=", 1)[0] == key for o in train_overrides):
            raise BadInput(f"{key!r}: the pipeline sets model, seed and run itself (use seeds=N)")
    dataset = history_path(ccfg.out_dir, env, ccfg.alg_seed)
    result = ADPipelineResult(dataset=dataset)

    # 1. collect (collect_histories leaves a complete file with the same settings alone, and
    #    refuses one made with other settings rather than train on it silently)
    from fiberlab.distill.collect import collect_histories

    if not dataset.is_file():
        log(f"[pipeline] collect: {env}, {ccfg.n_stream} streams x {ccfg.steps_per_goal:,} steps a goal -> {dataset}")
    res = collect_histories(ccfg)
    result.dataset = dataset = Path(res.path)
    if res.skipped:
        result.skipped.append(f"collect ({dataset})")
        log(f"[pipeline] collect: {dataset} exists with these settings, skipped")

    # 2. train every model x seed, each in its own run folder
    run_dirs: list[Path] = []
    for model in models:
        for seed in range(seeds):
            cfg = tcfg.model_copy(update={"model": model, "seed": seed, "run": None})
            run_dir = Path(cfg.train_dir) / cfg.run_name(env)
            result.runs.setdefault(model, []).append(run_dir)
            run_dirs.append(run_dir)
            if train_finished(run_dir, cfg):
                result.skipped.append(f"train {run_dir.name}")
                log(f"[pipeline] train {run_dir.name}: finished, skipped")
                continue
            from fiberlab.distill.train import train_ad

            log(f"[pipeline] train {run_dir.name}: {cfg.train_steps:,} steps -> {run_dir}")
            train_ad(cfg, dataset)

    # 3. in-context evaluation of every run's best checkpoint
    files, skipped = evaluate_runs(run_dirs, eval_timesteps, evaluations, log=log)
    result.evaluations, result.skipped = files, result.skipped + skipped

    # 4. the comparison (cheap: always rebuilt from what is on disk)
    out = Path(out) if out is not None else Path(tcfg.train_dir) / f"{env}_compare"
    result.compare = compare_ad_runs(run_dirs, out, history=dataset, timesteps=eval_timesteps)
    log(f"[pipeline] table:  {result.compare.table_md}")
    log(f"[pipeline] figure: {result.compare.figure_png} (+ .pdf)")
    return result
