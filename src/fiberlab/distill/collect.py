"""``fiberlab ad collect``: PPO learning histories of every goal, batched, resumable, all or nothing.

Why it is built this way:

- Speed: DICP trains one SB3 PPO per goal (about 3 minutes a goal, 4 hours for Darkroom). Here
  ``goals_per_batch`` goals learn at once in :class:`~fiberlab.distill.batched_ppo.BatchedPPO`
  (stacked weights, one forward, one backward, one Adam step for all of them), each still its own
  learner with its own seed (``alg_seed + goal``), so the history of a goal does not depend on
  which goals it was batched with (up to float round-off).
- Resume per goal: every finished chunk of goals is written at once, one file per goal, to
  ``<file>.parts/goal_<g>.npz`` (each written to a temporary name and renamed). A rerun skips the
  goals found there (and says so) and learns only the rest. The folder records the learning
  settings; parts made with other settings are refused rather than mixed in.
- Complete or absent: when every goal is done the HDF5 file is written to a temporary name and
  renamed, then the parts are removed. A reader never sees a half-written history file.
- The stored ``compression_mask`` is :func:`fiberlab.distill.segments.segment_mask` of the stored
  action probabilities with the config's threshold, window and rule; trainers recompute it at load
  time, so the mask settings can be swept without collecting again.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fiberlab.distill.batched_ppo import BatchedPPO, LearnResult, num_updates
from fiberlab.distill.config import CollectConfig
from fiberlab.distill.histories import (
    GoalHistory,
    goal_ranges,
    history_path,
    open_history,
    write_history,
)
from fiberlab.envs.darkroom import check_tasks, horizon, num_tasks
from fiberlab.errors import BadInput
from fiberlab.rl.logging import LiveProgress

COLLECTOR = "fiberlab.distill.batched_ppo/1"  # bump when the learner's results change for the same settings
# the settings a goal's history depends on (goals_per_batch, threads and device change only round-off)
LEARNING_KEYS = ("env", "alg_seed", "n_stream", "steps_per_goal", "hidden", "learning_rate", "n_steps", "batch_size",
                 "n_epochs", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef", "max_grad_norm", "adam_eps")
MASK_KEYS = ("on_policy_threshold", "compression_window", "mask_rule")


@dataclass
class CollectResult:
    """What one ``collect_histories`` call did."""

    path: Path
    seconds: float  # wall time of this call
    final_return: dict[int, float]  # per goal: mean over streams of the last episode's return
    compression_ratio: float  # marked steps / all steps, over every goal
    learned: list[int] = field(default_factory=list)  # goals learned by this call
    resumed: list[int] = field(default_factory=list)  # goals taken from an interrupted run's parts
    steps_per_second: float = 0.0  # agent steps of the goals learned here / learning seconds
    skipped: bool = False  # the complete file was already there with the same settings


def learning_settings(cfg: CollectConfig) -> dict[str, Any]:
    """The settings a goal's history depends on, as plain JSON values (the resume fingerprint)."""
    d = cfg.model_dump()
    return {"collector": COLLECTOR, **{k: d[k] for k in LEARNING_KEYS}}


def goals_of(cfg: CollectConfig) -> list[int]:
    """``cfg.goals`` checked (valid, no repeats), or every goal of the env."""
    if cfg.goals is None:
        return list(range(num_tasks(cfg.env)))
    goals = check_tasks(cfg.env, cfg.goals)
    repeated = sorted({g for g in goals if goals.count(g) > 1})
    if repeated:
        raise BadInput(f"goal {repeated[0]} is listed twice in goals: each goal is collected once")
    return goals


def parts_dir(path: Path) -> Path:
    """Where an unfinished collection keeps its finished goals: ``<file>.parts/``."""
    return path.with_name(path.name + ".parts")


# =============================================================================== progress
PROGRESS_KEYS = ("goals done", "batch", "update", "steps/s", "mean return", "eta")


def _plain_line(title: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: (f"[{title}] goals {r['goals done']} batch {r['batch']} update {r['update']} "
                      f"steps/s {r['steps/s']} return {r['mean return']} eta {r['eta']}")


# =============================================================================== parts (resume)
def _save_part(folder: Path, goal: int, rec: LearnResult, i: int) -> None:
    """Goal ``rec.goals[i]``'s history as ``goal_<g>.npz``, written to a temporary name and renamed."""
    final = folder / f"goal_{goal}.npz"
    tmp = folder / f"goal_{goal}.npz.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, states=rec.states[i].numpy(), actions=rec.actions[i].numpy(), rewards=rec.rewards[i].numpy(),
                     next_states=rec.next_states[i].numpy(), dones=rec.dones[i].numpy(),
                     action_probs=rec.action_probs[i].numpy())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _load_part(folder: Path, goal: int, steps: int, n_stream: int) -> GoalHistory:
    path = folder / f"goal_{goal}.npz"
    try:
        with np.load(path) as z:
            h = GoalHistory(states=z["states"].astype(np.int32), actions=z["actions"].astype(np.int32),
                            rewards=z["rewards"].astype(np.float32), next_states=z["next_states"].astype(np.int32),
                            dones=z["dones"].astype(bool), action_probs=z["action_probs"].astype(np.float32))
    except (OSError, KeyError, ValueError) as e:
        raise BadInput(f"{path}: unreadable part of an interrupted collection ({e}); delete it to learn goal {goal} again") from None
    if h.actions.shape != (steps, n_stream):
        raise BadInput(f"{path}: holds {h.actions.shape} steps x streams, ({steps}, {n_stream}) expected; delete it")
    return h


def _open_parts(folder: Path, settings: dict[str, Any], discard_other: bool = False) -> None:
    """Create the parts folder, or check that an existing one was made with the same settings
    (``discard_other``: delete one made with other settings instead of refusing it)."""
    marker = folder / "settings.json"
    if marker.exists() and discard_other:
        try:
            same = json.loads(marker.read_text()) == settings
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            shutil.rmtree(folder)
    if marker.exists():
        try:
            old = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings:
            diff = [k for k in settings if not isinstance(old, dict) or old.get(k) != settings[k]]
            what = ", ".join(f"{k}: {old.get(k) if isinstance(old, dict) else '?'} -> {settings[k]}" for k in diff[:3])
            raise BadInput(f"{folder} holds goals collected with other settings ({what}): delete the folder "
                           "or collect with the same settings")
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, marker)


# =============================================================================== the collection
def collect_histories(cfg: CollectConfig, progress: bool = True, *, overwrite: bool = False,
                      on_chunk: Callable[[list[int]], None] | None = None) -> CollectResult:
    """Learn every goal of ``cfg`` with PPO, ``goals_per_batch`` at a time, and write the history file.

    Returns where the file is, how long it took, each goal's final mean return and the file's
    compression ratio. An existing complete file with the same settings and goals is left alone
    (``skipped``); one with other settings is an error unless ``overwrite`` (which also discards
    the parts of an interrupted run made with other settings). ``on_chunk(goals)`` is
    called after each chunk's goals are saved (a hook for progress reports, and for tests that
    interrupt a collection).
    """
    t_start = time.perf_counter()
    goals = goals_of(cfg)
    path = history_path(cfg.out_dir, cfg.env, cfg.alg_seed)
    settings = learning_settings(cfg)
    mask_settings = {k: getattr(cfg, k) for k in MASK_KEYS}
    if path.exists() and not overwrite:
        done = _existing(path, settings, mask_settings, goals)
        if done is not None:
            done.seconds = time.perf_counter() - t_start
            return done
    n_upd = num_updates(cfg)
    steps = n_upd * cfg.n_steps  # per stream
    folder = parts_dir(path)
    _open_parts(folder, settings, discard_other=overwrite)
    resumed = [g for g in goals if (folder / f"goal_{g}.npz").exists()]
    todo = [g for g in goals if g not in set(resumed)]
    mode = cfg.progress if progress else "none"
    title = f"fiberlab ad collect: {cfg.env}, alg_seed {cfg.alg_seed}"
    display = LiveProgress(mode, title, PROGRESS_KEYS, _plain_line(title))
    if resumed:
        display.say(f"resuming {folder}: {len(resumed)} of {len(goals)} goals already collected, skipped ({goal_ranges(resumed)})")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    learn_seconds, learned = 0.0, []
    try:
        chunks = [todo[i:i + cfg.goals_per_batch] for i in range(0, len(todo), cfg.goals_per_batch)]
        for c, chunk in enumerate(chunks):
            t0 = time.perf_counter()
            learner = BatchedPPO(cfg, chunk)
            per_update = len(chunk) * cfg.n_stream * cfg.n_steps

            def report(k: int, returns: torch.Tensor, c: int = c, t0: float = t0, chunk: list[int] = chunk,
                       per_update: int = per_update, done: int = len(resumed) + len(learned)) -> None:
                dt = time.perf_counter() - t0
                sps = k * per_update / dt if dt > 0 else 0.0
                left = (n_upd - k) * per_update + sum(len(x) for x in chunks[c + 1:]) * n_upd * cfg.n_stream * cfg.n_steps
                display.update({"goals done": f"{done}/{len(goals)}", "batch": f"{c + 1}/{len(chunks)} ({len(chunk)} goals)",
                                "update": f"{k}/{n_upd}", "steps/s": f"{sps:,.0f}",
                                "mean return": f"{float(returns.nanmean()):.2f}" if not bool(returns.isnan().all()) else "-",
                                "eta": f"{left / sps:.0f}s" if sps else "-"}, force=(k == n_upd))

            rec = learner.learn(n_upd, on_update=report)
            for i, g in enumerate(chunk):
                _save_part(folder, g, rec, i)
            learn_seconds += time.perf_counter() - t0
            learned += chunk
            if on_chunk is not None:
                on_chunk(list(chunk))
        display.say(f"writing {path} ({len(goals)} goals)")
        result = _assemble(cfg, path, folder, goals, steps)
    finally:
        torch.set_num_threads(threads)
        display.close()
    shutil.rmtree(folder, ignore_errors=True)
    result.learned, result.resumed = learned, resumed
    result.steps_per_second = len(learned) * cfg.n_stream * steps / learn_seconds if learn_seconds else 0.0
    result.seconds = time.perf_counter() - t_start
    return result


def _assemble(cfg: CollectConfig, path: Path, folder: Path, goals: Sequence[int], steps: int) -> CollectResult:
    """Every goal's part, with its segment mask, into the final HDF5 file (temporary name, then renamed)."""
    from fiberlab.distill.segments import segment_mask

    totals = {"marked": 0, "steps": 0}
    final: dict[int, float] = {}

    def goal_histories() -> Iterator[tuple[int, GoalHistory]]:
        for g in sorted(goals):
            h = _load_part(folder, g, steps, cfg.n_stream)
            h.compression_mask = np.asarray(segment_mask(h.action_probs, cfg.on_policy_threshold, cfg.compression_window,
                                                         cfg.mask_rule), dtype=np.uint8)
            totals["marked"] += int(h.compression_mask.sum())
            totals["steps"] += h.compression_mask.size
            ep = h.episode_returns()
            final[g] = float(ep[-1].mean()) if len(ep) else float("nan")
            yield g, h

    attrs: dict[str, Any] = {
        "env": cfg.env, "alg": "PPO", "alg_seed": cfg.alg_seed, "n_stream": cfg.n_stream, "horizon": horizon(cfg.env),
        "on_policy_threshold": cfg.on_policy_threshold, "compression_window": cfg.compression_window,
        "mask_rule": cfg.mask_rule, "collect_settings": learning_settings(cfg),
    }

    def finish() -> dict[str, Any]:  # read by write_history after the last goal: the totals are known then
        ratio = totals["marked"] / totals["steps"] if totals["steps"] else 0.0
        return {**attrs, "total_steps": totals["steps"], "compressed_steps": totals["marked"], "compression_ratio": ratio}

    write_history(path, goal_histories(), finish)
    ratio = totals["marked"] / totals["steps"] if totals["steps"] else 0.0
    return CollectResult(path=path, seconds=0.0, final_return=final, compression_ratio=ratio)


def _existing(path: Path, settings: dict[str, Any], mask_settings: dict[str, Any], goals: list[int]) -> CollectResult | None:
    """The result of a complete file that matches these settings and goals; BadInput when it does not."""
    with open_history(path) as h:
        stored = h.attrs.get("collect_settings")
        stored = json.loads(stored) if isinstance(stored, str) else stored
        diff = [k for k in settings if not isinstance(stored, dict) or stored.get(k) != settings[k]]
        diff += [k for k in mask_settings if h.attrs.get(k) != mask_settings[k]]
        if sorted(h.goals) != sorted(goals):
            diff.append(f"goals ({len(h.goals)} in the file, {len(goals)} asked)")
        if diff:
            raise BadInput(f"{path} exists with other settings ({', '.join(diff[:4])}): delete it, pass overwrite, "
                           "or pick another out_dir")
        final = {}
        for g in h.goals:
            ep = h.goal(g).episode_returns()
            final[g] = float(ep[-1].mean()) if len(ep) else float("nan")
        return CollectResult(path=path, seconds=0.0, final_return=final, compression_ratio=float(h.attrs["compression_ratio"]),
                             skipped=True)


