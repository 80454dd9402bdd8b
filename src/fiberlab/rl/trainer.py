"""The training loop: rollout -> GAE -> PPO update -> log -> checkpoint, with resume and DDP.

Read top to bottom like CleanRL: :meth:`Trainer.train` is the whole algorithm; the phases live in
``rollout.py``, ``advantages.py`` and ``ppo.py``; everything else a run produces (metrics file,
TensorBoard/W&B, progress display, periodic checkpoints) hangs on the callback hooks of
``callbacks.py``, which is also where users hook in.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fiberlab.checkpoint import CheckpointError, load, save
from fiberlab.config import TrainConfig
from fiberlab.cortex.cells.axon import set_eligibility_traces
from fiberlab.devices import resolve_device
from fiberlab.envs import make_vecenv
from fiberlab.envs.base import EnvSpec, EpisodeStats
from fiberlab.errors import BadInput, first_line
from fiberlab.policies import RecurrentPolicy, build_policy
from fiberlab.rl import distributed as dist_utils
from fiberlab.rl.advantages import compute_gae
from fiberlab.rl.callbacks import Callback, CallbackList, PeriodicCheckpoint
from fiberlab.rl.logging import MetricsLogger, ProgressDisplay
from fiberlab.rl.ppo import TrainingDiverged, ppo_update
from fiberlab.rl.rollout import RolloutCollector
from fiberlab.rl.run_dir import (
    checkpoint_name,
    default_run_name,
    list_checkpoints,
    make_run_dir,
    remove_made_dirs,
    save_config,
    start_over,
    truncate_metrics,
)
from fiberlab.runtime import keep_freed_memory, trainer_threads


@dataclass
class TrainResult:
    """What a finished run leaves: the trained policy (on the training device), where it lives,
    and the last epoch's metrics row (``None`` when the budget was already reached on resume)."""

    run_dir: Path
    last_checkpoint: Path | None
    epoch: int
    agent_step: int
    policy: RecurrentPolicy | None = None
    metrics: dict[str, Any] | None = None
    config: TrainConfig | None = None
    is_main: bool = True  # False on DDP ranks other than 0, which write nothing


@dataclass
class StartPoint:
    """Where the loop starts: a resumed checkpoint's counters, or the beginning."""

    epoch: int
    agent_step: int
    wall_time: float
    checkpoint: Path | None


class Trainer:
    """Trains ``cfg`` in ``train_dir/<run>``; resumes that run if it already has checkpoints.

    ``initial_policy`` starts training from a given policy (a collapsed or ablated network, say)
    instead of a fresh one; ``initial_agent_step`` continues another run's step counter;
    ``callbacks`` (:class:`~fiberlab.rl.callbacks.Callback`) observe and extend the loop.
    """

    def __init__(self, cfg: TrainConfig, initial_policy: RecurrentPolicy | None = None, initial_agent_step: int = 0, callbacks: Sequence[Callback] = ()) -> None:
        self.device = resolve_device(cfg.device)
        keep_freed_memory()  # the update's activations are freed and allocated again every epoch
        self.dist = dist_utils.init_distributed(self.device)
        # acting (between env steps) and the update (nothing else running) each get their thread count
        self.acting_threads, self.update_threads = trainer_threads(cfg.trainer.torch_threads, cfg.trainer.update_threads, self.dist.local_world_size)
        torch.set_num_threads(self.acting_threads)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if cfg.run is None:
            cfg = cfg.model_copy(update={"run": dist_utils.broadcast_object(default_run_name(cfg.recipe), self.dist)})
        self.cfg = cfg
        self.run_dir = Path(cfg.train_dir) / cfg.run
        self.env_seed = cfg.seed + 10_007 * self.dist.rank
        self.initial_policy = initial_policy
        self.initial_agent_step = initial_agent_step
        self.user_callbacks = CallbackList(callbacks)
        # the loop's state, read by callbacks and written into checkpoints
        self.env = self.policy = self.optimizer = None
        self.epoch, self.agent_step = 0, initial_agent_step
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, Any] | None = None
        self._saved_epoch = -1
        self._wall_before, self._t_start = 0.0, time.time()
        self._hooks = CallbackList([])

    # ------------------------------------------------------------------ the algorithm
    def train(self) -> TrainResult:
        """Run PPO until ``trainer.total_timesteps`` agent steps; return the trained policy and where it lives."""
        cfg, tc, is_main = self.cfg, self.cfg.trainer, self.dist.is_main
        made = self._prepare_run_dir()
        try:
            self.env = env = make_vecenv(cfg.env, self.env_seed)
            self.policy = policy = self._make_policy(env.spec)
        except BaseException:
            if self.env is not None:
                self.env.close()
            remove_made_dirs(made)  # a failed start leaves no empty run folder behind
            raise
        self.cfg = cfg = cfg.model_copy(update={"policy": policy.config})  # the resolved widths are the run's config
        # fused Adam: one kernel for all parameters instead of ~10 small ops per tensor (CPU and CUDA)
        self.optimizer = optimizer = torch.optim.Adam(policy.parameters(), lr=tc.learning_rate, eps=tc.adam_eps, fused=True)
        start = self._resume() if cfg.resume else StartPoint(0, self.initial_agent_step, 0.0, None)
        self.epoch, self.agent_step, self.last_checkpoint = start.epoch, start.agent_step, start.checkpoint
        self._saved_epoch = start.epoch if start.checkpoint is not None else -1
        self._wall_before, self._t_start = start.wall_time, time.time()
        if is_main:
            save_config(self.run_dir, cfg)
            truncate_metrics(self.run_dir, self.epoch)
        model = policy
        if self.dist.enabled:
            model = dist_utils.DistributedPolicy(policy, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.policy = policy = model.module  # SyncBatchNorm conversion may have replaced modules

        collector = RolloutCollector(env, policy, tc.bptt_horizon, self.device, seed=self.env_seed + 7_919 * self.epoch, precision=tc.precision)
        gen = torch.Generator().manual_seed(cfg.seed + 31 * self.dist.rank + 1_000_003 * self.epoch)
        self._hooks = hooks = CallbackList([*self._default_callbacks(), *self.user_callbacks.callbacks])
        try:
            hooks.on_train_start(self)
            while self.agent_step < tc.total_timesteps:
                t0 = time.time()
                if tc.anneal_lr:
                    self._anneal_lr()
                # 1. rollout: bptt_horizon steps of every env with the current policy
                policy.eval()
                rollout, next_value, episodes, steps = collector.collect()
                t_rollout = time.time() - t0
                hooks.on_rollout_end(rollout)
                # 2. advantages: GAE(gamma, lambda), bootstrapped from V(s_T)
                advantages, returns = compute_gae(rollout.rewards, rollout.values, rollout.dones, next_value, tc.gamma, tc.gae_lambda)
                # 3. PPO: update_epochs passes of clipped-ratio minibatch updates over whole segments
                policy.train()
                torch.set_num_threads(self.update_threads)
                try:
                    stats = ppo_update(model, optimizer, rollout, advantages, returns, tc, gen, self.epoch)
                except TrainingDiverged as e:
                    raise TrainingDiverged(f"{first_line(e)}; last good checkpoint: {self._last_good_checkpoint()}") from e
                finally:
                    torch.set_num_threads(self.acting_threads)
                self.epoch += 1
                self.agent_step += steps * self.dist.world_size
                # 4. log: one metrics row per epoch, by name (metrics.jsonl, display, checkpoints hook here)
                elapsed = time.time() - t0
                self.last_metrics = row = {
                    "agent_step": self.agent_step,
                    "epoch": self.epoch,
                    "wall_time": round(self.wall_time(), 3),
                    "sps": round(steps * self.dist.world_size / elapsed, 1),
                    "rollout_sps": round(steps * self.dist.world_size / max(t_rollout, 1e-9), 1),
                    **_episode_summary(episodes, self.dist),
                    **asdict(stats),
                    "learning_rate": optimizer.param_groups[0]["lr"],
                }
                hooks.on_epoch_end(row)
            if is_main and self._saved_epoch != self.epoch and self.epoch > 0:
                self.save_checkpoint()  # a run always ends with a checkpoint of its last epoch
            # all ranks leave together: a rank that destroys the process group while rank 0 is
            # still writing its last checkpoint was seen to abort ("terminate called without an
            # active exception") in tests/test_ddp.py
            dist_utils.barrier(self.dist)
            result = TrainResult(self.run_dir, self.last_checkpoint, self.epoch, self.agent_step, policy, self.last_metrics, cfg, is_main)
            hooks.on_train_end(result)
        finally:
            try:
                hooks.close()
            finally:
                env.close()
                if self.dist.enabled:
                    dist_utils.shutdown(self.dist)
        return result

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write the current policy, optimizer and RNG state as ``checkpoints/<run>__e<epoch>__s<step>``."""
        cfg = self.cfg
        path = self.run_dir / "checkpoints" / checkpoint_name(cfg.run, self.epoch, self.agent_step)
        save(
            path, self.policy, env_spec=self.env.spec.to_dict(), run=cfg.run, seed=cfg.seed, config=cfg.model_dump(),
            progress={"epoch": self.epoch, "agent_step": self.agent_step, "wall_time": self.wall_time()},
            optimizer=self.optimizer, rng={"numpy": _jsonable(np.random.get_state())}, torch_rng=torch.get_rng_state(),
        )
        self._saved_epoch, self.last_checkpoint = self.epoch, path
        self._hooks.on_checkpoint(path)
        return path

    def wall_time(self) -> float:
        """Seconds of training in this run, over all its resumed sessions."""
        return self._wall_before + time.time() - self._t_start

    # ------------------------------------------------------------------ set-up
    def _prepare_run_dir(self) -> list[Path]:
        """``resume=false`` clears the run; the folder is made now, so a ``train_dir`` that cannot
        hold it is reported before any work. Returns the folders made (removed on a failed start)."""
        if self.dist.is_main and not self.cfg.resume and self.run_dir.exists():
            start_over(self.run_dir)
        made = make_run_dir(self.run_dir, self.cfg.train_dir) if self.dist.is_main else []
        dist_utils.barrier(self.dist)  # no rank may read checkpoints rank 0 is deleting
        return made

    def _make_policy(self, spec: EnvSpec) -> RecurrentPolicy:
        """The given initial policy (checked against the env) or a fresh one of ``cfg.policy``."""
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        np.random.seed(self.cfg.seed % 2**32)
        if self.initial_policy is not None:
            policy = self.initial_policy
            if list(policy.config.obs_shape) != list(spec.obs_shape) or policy.config.num_actions != spec.num_actions:
                raise BadInput(f"initial policy expects obs {policy.config.obs_shape} / {policy.config.num_actions} actions, env gives {list(spec.obs_shape)} / {spec.num_actions}")
        else:
            pcfg = self.cfg.policy.model_copy(update={"obs_shape": list(spec.obs_shape), "num_actions": spec.num_actions, "obs_scale": list(spec.obs_scale)})
            policy = build_policy(pcfg)
        # before any state is made: with traces, the RTUs' states carry their eligibility traces
        rtus = set_eligibility_traces(policy, self.cfg.trainer.axon_traces)
        if self.cfg.trainer.axon_traces and rtus == 0 and self.dist.is_main:
            print("note: trainer.axon_traces=true has no effect: the policy has no Axon units (pattern with A or ^)")
        return policy.to(self.device)

    def _resume(self) -> StartPoint:
        """Load the newest checkpoint that loads whole (policy, optimizer, RNG); a damaged one is
        skipped with a line saying why, and nothing of it stays."""
        policy, optimizer = self.policy, self.optimizer
        fresh = copy.deepcopy(policy.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state()
        for _, _, path in reversed(list_checkpoints(self.run_dir)):
            try:
                ck = load(path, self.device)
                if ck.policy.config != policy.config:
                    raise BadInput(f"run {self.cfg.run!r} exists with a different policy config; use resume=false to start over or another run name")
                policy.load_state_dict(ck.policy.state_dict())
                if ck.manifest.optimizer is not None:
                    ck.load_optimizer(optimizer)
                if ck.torch_rng is not None:
                    try:
                        torch.set_rng_state(ck.torch_rng.cpu())
                    except RuntimeError as e:
                        raise CheckpointError(f"{path}: its torch RNG state does not fit this torch ({first_line(e)})") from None
            except CheckpointError as e:
                policy.load_state_dict(fresh[0])
                optimizer.load_state_dict(copy.deepcopy(fresh[1]))
                torch.set_rng_state(fresh[2])
                if self.dist.is_main:
                    print(f"skipping unreadable checkpoint: {e}")
                continue
            prog = ck.manifest.progress
            return StartPoint(prog.epoch, prog.agent_step, float(prog.wall_time), path)
        return StartPoint(0, self.initial_agent_step, 0.0, None)

    def _default_callbacks(self) -> list[Callback]:
        """What every run writes, on rank 0: metrics.jsonl (+ TensorBoard/W&B), the progress display
        and periodic checkpoints."""
        if not self.dist.is_main:
            return []
        cfg = self.cfg
        return [MetricsLogger(self.run_dir, cfg), ProgressDisplay(cfg.progress, cfg.trainer.total_timesteps, cfg.run),
                PeriodicCheckpoint(cfg.trainer.checkpoint_interval)]

    def _anneal_lr(self) -> None:
        """Linear decay to 0 over this session's steps: lr = (1 - done) * learning_rate."""
        tc = self.cfg.trainer
        done = min(1.0, (self.agent_step - self.initial_agent_step) / max(1, tc.total_timesteps - self.initial_agent_step))
        for group in self.optimizer.param_groups:
            group["lr"] = (1.0 - done) * tc.learning_rate

    def _last_good_checkpoint(self) -> str:
        ckpts = list_checkpoints(self.run_dir)
        return str(ckpts[-1][2]) if ckpts else "none"


def _episode_summary(episodes: list[EpisodeStats], info: dist_utils.DistInfo) -> dict:
    """Mean return/length (and env extras) of the episodes finished this epoch, over all ranks."""
    n = len(episodes)
    ret = sum(e.episode_return for e in episodes)
    length = sum(e.length for e in episodes)
    extras: dict[str, float] = {}
    for e in episodes:
        for k, v in e.extras.items():
            extras[k] = extras.get(k, 0.0) + v
    if info.enabled:
        n, ret, length = (x * info.world_size for x in dist_utils.all_reduce_mean([n, ret, length], info))
    if n == 0:
        return {"episodes": 0, "episode_return": None, "episode_length": None}
    out = {"episodes": int(round(n)), "episode_return": ret / n, "episode_length": length / n}
    out.update({f"env/{k}": v / len(episodes) for k, v in extras.items()} if episodes else {})
    return out


def _jsonable(state: tuple) -> list:
    return [s.tolist() if isinstance(s, np.ndarray) else s for s in state]
