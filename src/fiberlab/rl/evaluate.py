"""Evaluate a policy: run episodes in a fresh env and summarise their (unclipped) returns.

Three entry points, one loop:

- :func:`evaluate` runs a policy in an env you built;
- :func:`evaluate_in` builds the env a run config names (on the config's device) and runs it there;
- :func:`evaluate_checkpoint` loads a checkpoint (validated, verified, judged against that env) and
  evaluates it on its own recipe's env. ``fiberlab eval``, the fibration workflows' zero-shot
  returns and the sweeps all call this one, so the same checkpoint gives the same number everywhere.

The env seed is ``cfg.seed + EVAL_SEED_OFFSET``: evaluation never replays the training env's seeds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from fiberlab.config import EnvConfig, TrainConfig, apply_overrides
from fiberlab.envs.base import VecEnv
from fiberlab.errors import BadInput
from fiberlab.runtime import resolve_threads

EVAL_SEED_OFFSET = 12_345


@torch.no_grad()
def evaluate(policy: torch.nn.Module, env: VecEnv, episodes: int, device: torch.device | str = "cpu", seed: int = 0, greedy: bool = False, max_steps: int = 10_000_000) -> dict:
    """Run until ``episodes`` episodes finish across the batch; return mean/std return and length.

    All envs run in parallel and the first ``episodes`` to finish are counted, so with fewer envs
    than episodes long episodes are not under-represented by more than one batch's worth.
    ``ci95_return`` is the half-width of the 95 % normal interval of the mean, 1.96 * std / sqrt(n);
    ``extras``: the mean of each of the env's per-episode extras (empty for envs without any).
    """
    gen = torch.Generator().manual_seed(seed)
    obs = torch.as_tensor(env.reset(seed)).to(device)
    state = policy.init_state(env.num_agents, device)
    start = torch.ones(env.num_agents, dtype=torch.bool, device=device)
    finished, steps = [], 0
    while len(finished) < episodes and steps < max_steps:
        logits, _, state = policy.step(obs, state, resets=start)
        if greedy:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=gen).squeeze(1)
        o, _, done, eps = env.step(action.cpu().numpy())
        finished += eps
        steps += env.num_agents
        obs = torch.as_tensor(o).to(device)
        start = torch.as_tensor(done).to(device)
    finished = finished[:episodes]
    rets = np.array([e.episode_return for e in finished], dtype=np.float64)
    lens = np.array([e.length for e in finished], dtype=np.float64)
    n = len(rets)
    keys = sorted({k for e in finished for k in e.extras})
    return {
        "episodes": n,
        "mean_return": float(rets.mean()) if n else math.nan,
        "std_return": float(rets.std()) if n else math.nan,
        "ci95_return": float(1.96 * rets.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "mean_length": float(lens.mean()) if n else math.nan,
        "steps": steps,
        # the env's per-episode extras (mettagrid: hearts, resources gained, cells visited), averaged
        "extras": {k: float(np.mean([e.extras[k] for e in finished if k in e.extras])) for k in keys},
    }


def evaluation_env(cfg: TrainConfig) -> VecEnv:
    """A fresh env of ``cfg.env`` seeded ``cfg.seed + EVAL_SEED_OFFSET`` (use it as a context manager)."""
    from fiberlab.envs import make_vecenv

    return make_vecenv(cfg.env, cfg.seed + EVAL_SEED_OFFSET)


def evaluate_in(policy: torch.nn.Module, cfg: TrainConfig, episodes: int, greedy: bool = False) -> dict:
    """Evaluate ``policy`` on a fresh env of ``cfg.env`` on ``cfg.device`` (``auto``: CUDA if present)."""
    from fiberlab.devices import resolve_device

    device = resolve_device(cfg.device)
    with evaluation_env(cfg) as env:
        return evaluate(policy.to(device).eval(), env, episodes, device, seed=cfg.seed, greedy=greedy)


class UniformPolicy(torch.nn.Module):
    """Uniform random play over ``num_actions`` actions (zero logits), stateless: the floor a trained
    agent's return is read against. It has :meth:`init_state` and :meth:`step` so that
    :func:`evaluate` plays it exactly as it plays a policy (same episodes, seeds and sampling)."""

    def __init__(self, num_actions: int) -> None:
        super().__init__()
        self.num_actions = num_actions

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> None:
        return None

    def step(self, obs: torch.Tensor, state: None = None, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, None]:
        n = obs.shape[0]
        return torch.zeros(n, self.num_actions), torch.zeros(n), None


def random_play(cfg: TrainConfig, episodes: int) -> dict:
    """:func:`evaluate` of :class:`UniformPolicy` on ``cfg``'s evaluation env (seeded as for the
    zero-shot returns): mean return and ``ci95_return`` over ``episodes`` episodes."""
    with evaluation_env(cfg) as env:
        return evaluate(UniformPolicy(env.spec.num_actions), env, episodes, "cpu", seed=cfg.seed)


def checkpoint_run_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """The run config a checkpoint records, with ``overrides`` applied (header only, nothing loaded).

    A converted file (``ckpt migrate``) records no config: then ``env.name=...`` must be among the
    overrides, or :class:`~fiberlab.errors.BadInput` says so.
    """
    from fiberlab.checkpoint import examine

    overrides = list(overrides)
    manifest = examine(path).manifest  # a damaged header is reported before anything else
    cfg = manifest.run_config(str(path))
    if cfg is None:
        if not any(item.startswith("env.name=") for item in overrides):
            raise BadInput(f"{path}: records no run config (a migrated file?): name the env with env.name=FAMILY.NAME")
        cfg = TrainConfig(env=EnvConfig(name=manifest.env_spec.name or "unknown"))
    return apply_overrides(cfg, overrides)


def evaluate_checkpoint(path: str | Path, episodes: int = 10, overrides: Iterable[str] = (), greedy: bool = False, force: bool = False) -> dict:
    """Load ``path`` and evaluate it on the env its own run config names (``overrides`` change it).

    The checkpoint is validated, its checksum verified and its policy judged against the env built
    here (``force=True`` accepts what only loads with warnings). Returns :func:`evaluate`'s summary
    plus ``checkpoint`` and ``env``.
    """
    from fiberlab.checkpoint import load
    from fiberlab.devices import resolve_device

    cfg = checkpoint_run_config(path, overrides)
    device = resolve_device(cfg.device)
    torch.set_num_threads(resolve_threads(cfg.trainer.torch_threads))
    with evaluation_env(cfg) as env:
        policy = load(path, env_spec=env.spec, force=force).policy.to(device).eval()
        result = evaluate(policy, env, episodes, device, seed=cfg.seed, greedy=greedy)
    return {"checkpoint": str(path), "env": cfg.env.name, **result}
