"""The training loop: rollout -> GAE -> PPO update -> log -> checkpoint, with resume and DDP.

Read top to bottom like CleanRL: :meth:`Trainer.train` is the whole algorithm; the phases live in
``rollout.py``, ``advantages.py`` and ``ppo.py``.
"""
from __future__ import annotations

import copy

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fiberlab.checkpoint import CheckpointError, load, save
from fiberlab.config import TrainConfig
from fiberlab.devices import resolve_device
from fiberlab.errors import first_line
from fiberlab.envs import make_vecenv
from fiberlab.policies import RecurrentPolicy, build_policy
from fiberlab.rl import distributed as dist_utils
from fiberlab.rl.advantages import compute_gae
from fiberlab.rl.logging import MetricsLogger, Progress
from fiberlab.rl.ppo import ppo_update
from fiberlab.rl.rollout import RolloutCollector
from fiberlab.rl.run_dir import checkpoint_name, default_run_name, list_checkpoints, make_run_dir, remove_made_dirs, save_config, start_over, truncate_metrics


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    epoch: int
    agent_step: int


class Trainer:
    """Trains ``cfg`` in ``train_dir/<run>``; resumes that run if it already has checkpoints.

    ``initial_policy`` starts training from a given policy (a collapsed or ablated network, say)
    instead of a fresh one; ``initial_agent_step`` continues another run's step counter.
    """

    def __init__(self, cfg: TrainConfig, initial_policy: RecurrentPolicy | None = None, initial_agent_step: int = 0) -> None:
        self.device = resolve_device(cfg.device)
        torch.set_num_threads(cfg.trainer.torch_threads)
        self.dist = dist_utils.init_distributed(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if cfg.run is None:
            cfg = cfg.model_copy(update={"run": dist_utils.broadcast_object(default_run_name(cfg.recipe), self.dist)})
        self.cfg = cfg
        self.run_dir = Path(cfg.train_dir) / cfg.run
        self.initial_policy = initial_policy
        self.initial_agent_step = initial_agent_step

    # ------------------------------------------------------------------ setup
    def _seed(self, offset: int) -> None:
        torch.manual_seed(self.cfg.seed + offset)
        np.random.seed((self.cfg.seed + offset) % 2**32)

    def _build(self):
        cfg = self.cfg
        env_seed = cfg.seed + 10_007 * self.dist.rank
        env = make_vecenv(cfg.env, env_seed)
        spec = env.spec
        pcfg = cfg.policy.model_copy(update={"obs_shape": list(spec.obs_shape), "num_actions": spec.num_actions, "obs_scale": list(spec.obs_scale)})
        self._seed(0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        if self.initial_policy is not None:
            policy = self.initial_policy
            if list(policy.config.obs_shape) != list(spec.obs_shape) or policy.config.num_actions != spec.num_actions:
                raise ValueError(f"initial policy expects obs {policy.config.obs_shape} / {policy.config.num_actions} actions, env gives {list(spec.obs_shape)} / {spec.num_actions}")
        else:
            policy = build_policy(pcfg)
        policy = policy.to(self.device)
        self.cfg = cfg = cfg.model_copy(update={"policy": policy.config})
        # fused Adam: one kernel for all parameters instead of ~10 small ops per tensor (CPU and CUDA)
        optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.trainer.learning_rate, eps=cfg.trainer.adam_eps, fused=True)
        return env, env_seed, policy, optimizer

    def _resume(self, policy, optimizer) -> tuple[int, int, float, Path | None]:
        """Load the newest checkpoint that loads whole (policy, optimizer, RNG); a damaged one is
        skipped with a line saying why. Returns (epoch, agent_step, wall_time, path)."""
        fresh = copy.deepcopy(policy.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state()
        for epoch, step, path in reversed(list_checkpoints(self.run_dir)):
            try:
                ck = load(path, self.device)
                if ck.policy.config != policy.config:
                    raise ValueError(f"run {self.cfg.run!r} exists with a different policy config; use resume=false to start over or another run name")
                policy.load_state_dict(ck.policy.state_dict())
                if ck.manifest.optimizer is not None:
                    ck.load_optimizer(optimizer)
                if ck.torch_rng is not None:
                    try:
                        torch.set_rng_state(ck.torch_rng.cpu())
                    except RuntimeError as e:
                        raise CheckpointError(f"{path}: its torch RNG state does not fit this torch ({first_line(e)})") from None
            except CheckpointError as e:
                policy.load_state_dict(fresh[0])  # nothing of a half-restored checkpoint stays
                optimizer.load_state_dict(copy.deepcopy(fresh[1]))
                torch.set_rng_state(fresh[2])
                if self.dist.is_main:
                    print(f"skipping unreadable checkpoint: {e}")
                continue
            prog = ck.manifest.progress
            return prog.epoch, prog.agent_step, float(prog.wall_time), path
        return 0, self.initial_agent_step, 0.0, None

    # ------------------------------------------------------------------ loop
    def train(self) -> TrainResult:
        cfg, tc, is_main = self.cfg, self.cfg.trainer, self.dist.is_main
        if is_main and not cfg.resume and self.run_dir.exists():
            start_over(self.run_dir)
        # a train_dir that cannot hold the run is reported now, before any work, not at the first write
        made = make_run_dir(self.run_dir, cfg.train_dir) if is_main else []
        dist_utils.barrier(self.dist)  # no rank may read checkpoints rank 0 is deleting
        try:
            env, env_seed, policy, optimizer = self._build()
        except BaseException:
            remove_made_dirs(made)  # a failed start leaves no empty run folder behind
            raise
        cfg = self.cfg
        epoch, agent_step, wall_before, last_ckpt = self._resume(policy, optimizer) if cfg.resume else (0, self.initial_agent_step, 0.0, None)
        if is_main:
            save_config(self.run_dir, cfg)
            truncate_metrics(self.run_dir, epoch)
        model = policy
        if self.dist.enabled:
            model = dist_utils.DistributedPolicy(policy, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            policy = model.module  # SyncBatchNorm conversion may have replaced modules

        collector = RolloutCollector(env, policy, tc.bptt_horizon, self.device, seed=env_seed + 7_919 * epoch)
        logger = MetricsLogger(self.run_dir, cfg) if is_main else None
        progress = Progress(cfg.progress if is_main else "none", tc.total_timesteps, cfg.run) if is_main else None
        gen = torch.Generator().manual_seed(cfg.seed + 31 * self.dist.rank + 1_000_003 * epoch)
        t_start = time.time()
        saved_epoch = epoch if last_ckpt is not None else -1

        def checkpoint() -> Path:
            nonlocal saved_epoch
            path = self.run_dir / "checkpoints" / checkpoint_name(cfg.run, epoch, agent_step)
            save(
                path, policy, env_spec=env.spec.to_dict(), run=cfg.run, seed=cfg.seed, config=cfg.model_dump(),
                progress={"epoch": epoch, "agent_step": agent_step, "wall_time": wall_before + time.time() - t_start},
                optimizer=optimizer, rng={"numpy": _jsonable(np.random.get_state())}, torch_rng=torch.get_rng_state(),
            )
            saved_epoch = epoch
            return path

        try:
            while agent_step < tc.total_timesteps:
                t0 = time.time()
                if tc.anneal_lr:
                    done_frac = min(1.0, (agent_step - self.initial_agent_step) / max(1, tc.total_timesteps - self.initial_agent_step))
                    for g in optimizer.param_groups:
                        g["lr"] = (1.0 - done_frac) * tc.learning_rate
                policy.eval()
                rollout, next_value, episodes, steps = collector.collect()
                t_roll = time.time() - t0
                advantages, returns = compute_gae(rollout.rewards, rollout.values, rollout.dones, next_value, tc.gamma, tc.gae_lambda)
                policy.train()
                stats = ppo_update(model, optimizer, rollout, advantages, returns, tc, gen, epoch)
                epoch += 1
                agent_step += steps * self.dist.world_size
                dt = time.time() - t0
                ep = _episode_summary(episodes, self.dist)
                row = {
                    "agent_step": agent_step,
                    "epoch": epoch,
                    "wall_time": round(wall_before + time.time() - t_start, 3),
                    "sps": round(steps * self.dist.world_size / dt, 1),
                    "rollout_sps": round(steps * self.dist.world_size / max(t_roll, 1e-9), 1),
                    **ep,
                    "policy_loss": stats.policy_loss,
                    "value_loss": stats.value_loss,
                    "entropy": stats.entropy,
                    "approx_kl": stats.approx_kl,
                    "clipfrac": stats.clipfrac,
                    "explained_variance": stats.explained_variance,
                    "learning_rate": optimizer.param_groups[0]["lr"],
                }
                if is_main:
                    logger.log(row)
                    progress.update(row)
                    if epoch % tc.checkpoint_interval == 0:
                        last_ckpt = checkpoint()
            if is_main and saved_epoch != epoch and epoch > 0:
                last_ckpt = checkpoint()
            # all ranks leave together: a rank that destroys the process group while rank 0 is
            # still writing its last checkpoint was seen to abort ("terminate called without an
            # active exception") in tests/test_ddp.py
            dist_utils.barrier(self.dist)
        finally:
            if progress is not None:
                progress.close()
            if logger is not None:
                logger.close()
            env.close()
            if self.dist.enabled:
                dist_utils.shutdown(self.dist)
        return TrainResult(self.run_dir, last_ckpt, epoch, agent_step)


def _episode_summary(episodes, info) -> dict:
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
