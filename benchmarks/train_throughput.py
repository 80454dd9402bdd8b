#!/usr/bin/env python
"""Training throughput: fiberlab's trainer against stable-baselines3 and against the env alone.

Every row runs in its own subprocess (so rows cannot disturb each other and the peak RSS of each
is its own, read with ``os.wait4``) and reports agent steps per second over the run after a
warm-up epoch. Groups (``--only``):

- ``demo``: popgym RepeatPreviousEasy, the ``demo`` recipe's PPO settings, ``--num-envs`` envs:
  env alone with random actions (the ceiling), env + our policy's forward pass (rollout only),
  our trainer (``mlp_lstm``), SB3 PPO (feed-forward) and sb3-contrib RecurrentPPO (LSTM), all with
  the same rollout length, epochs, minibatch size and total steps.
- ``beam_rider``: ALE BeamRider, ``atari`` policy: env alone, env + forward, our trainer.
- ``arena``: mettagrid arena (24 agents per map), ``fast`` policy: env alone, env + forward, our
  trainer (skipped with a message when ``mettagrid`` is not installed).

Every group also has the **arithmetic-bound** row (``work_arith``: the same network's acting steps
and PPO update on tensors already in memory, no env, no trainer logic) and prints the trainer as a
fraction of the limit ``1 / (1/env_only + 1/arithmetic)``. ``--baseline TREE`` adds a trainer row
run on another source tree's code (a ``git worktree`` of an older commit), so a speed-up is a
ratio measured in one run.

Usage::

    .venv/bin/python benchmarks/train_throughput.py                 # all groups, ~1.5 min on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --quick --only demo
    .venv/bin/python benchmarks/train_throughput.py --repeats 3 --json bench.json
    git worktree add /tmp/base <commit> && .venv/bin/python benchmarks/train_throughput.py --baseline /tmp/base

See docs/benchmarks.md for what each row measures and the numbers measured so far.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import ROOT, SRC, machine, machine_line

WORKER_TAG = "BENCH_RESULT "

# Budgets in agent steps per row: (full, --quick). The first epoch (rollout + update) is a warm-up
# and is not counted in the SPS, so a budget is a few dozen epochs in full mode.
BUDGETS = {
    "demo": (40_960, 4_096),
    "small": (163_840, 16_384),
    "beam_rider": (4_096, 512),
    "arena": (30_720, 4_608),
}
GROUPS = tuple(BUDGETS)
# Targets of the ratios printed at the end: (group, ratio) first, then by ratio alone. Issue 16:
# the trainer at >= 60 % of the limit, and faster than the code before it by these factors.
TARGETS = {
    "ours / SB3 PPO": 3.0, "ours / RecurrentPPO": 3.0, "ours / env-only ceiling": 0.5, "ours / limit": 0.6,
    ("arena", "ours / baseline code"): 2.0, ("beam_rider", "ours / baseline code"): 1.5, ("demo", "ours / baseline code"): 1.3,
}
MIN_SECONDS = (3.0, 0.5)  # env-only / forward-only rows run at least this long (full, quick)


# =============================================================================== configuration
def group_config(group: str, num_envs: int, quick: bool, device: str, extra: list[str] | None = None):
    """The fiberlab TrainConfig a group's rows share (recipe defaults, our num_envs and budget).

    ``extra`` are ``--set key=value`` overrides, applied last; the SB3 rows read their PPO settings
    from the same config, so an override such as ``trainer.minibatch_size=512`` changes every row.
    """
    from fiberlab.config import apply_overrides
    from fiberlab.recipes import get_recipe

    recipe = {"demo": "demo", "small": "demo", "beam_rider": "beam_rider", "arena": "arena"}[group]
    steps = BUDGETS[group][1 if quick else 0]
    over = [f"trainer.total_timesteps={steps}", f"device={device}", "progress=none"]
    if group == "demo":
        over.append(f"env.num_envs={num_envs}")
    elif group == "small":
        # The framework-overhead case: a small network (16-unit layer, LSTM 16), 256 envs and one
        # update epoch (Metta's default), so the env and our loop, not matmuls, set the pace.
        over += ["env.num_envs=256", "policy.linear=[16]", "policy.core_hidden=16", "trainer.minibatch_size=4096", "trainer.update_epochs=1"]
    elif group == "beam_rider":
        over.append("env.num_envs=8")  # 8 ALE envs: 2 cores and a 3.9 M-parameter conv net
    return apply_overrides(get_recipe(recipe), over + list(extra or []))


def plan_rows(groups: list[str], have_sb3: bool, baseline: bool = False) -> list[dict]:
    rows = []
    for g in groups:
        rows.append({"group": g, "kind": "env", "name": "env only, random actions (ceiling)"})
        rows.append({"group": g, "kind": "forward", "name": "env + policy forward (rollout, no training)"})
        rows.append({"group": g, "kind": "arith", "name": "arithmetic only (acting + update, no env)"})
        if baseline:
            rows.append({"group": g, "kind": "baseline", "name": "fiberlab trainer, --baseline code"})
        rows.append({"group": g, "kind": "ours", "name": "fiberlab trainer"})
        if g in ("demo", "small") and have_sb3:
            rows.append({"group": g, "kind": "sb3_ppo", "name": "SB3 PPO (MlpPolicy, no LSTM)"})
            rows.append({"group": g, "kind": "sb3_rppo", "name": "sb3-contrib RecurrentPPO (MlpLstmPolicy)"})
    return rows


# =============================================================================== worker side
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _warmup_then_time(step_fn, steps_per_call: int, total: int, min_seconds: float) -> tuple[int, float]:
    """Call ``step_fn`` twice untimed, then until ``total`` steps and ``min_seconds`` have passed."""
    for _ in range(2):
        step_fn()
    n, t0 = 0, time.perf_counter()
    while n < total or time.perf_counter() - t0 < min_seconds:
        step_fn()
        n += steps_per_call
    return n, time.perf_counter() - t0


def work_env(cfg, spec: dict) -> dict:
    import numpy as np

    from fiberlab.envs import make_vecenv

    env = make_vecenv(cfg.env, cfg.seed)
    env.reset(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_act, n = env.spec.num_actions, env.num_agents

    def step():
        env.step(rng.integers(0, n_act, size=n))

    steps, secs = _warmup_then_time(step, n, cfg.trainer.total_timesteps, spec["min_seconds"])
    env.close()
    return {"steps": steps, "seconds": secs, "num_agents": n}


def work_forward(cfg, spec: dict) -> dict:
    import torch

    from fiberlab.envs import make_vecenv
    from fiberlab.policies import build_policy
    from fiberlab.rl.rollout import RolloutCollector

    device = torch.device(_device(spec["device"]))
    env = make_vecenv(cfg.env, cfg.seed)
    s = env.spec
    pcfg = cfg.policy.model_copy(update={"obs_shape": list(s.obs_shape), "num_actions": s.num_actions, "obs_scale": list(s.obs_scale)})
    torch.manual_seed(cfg.seed)
    policy = build_policy(pcfg).to(device).eval()
    collector = RolloutCollector(env, policy, cfg.trainer.bptt_horizon, device, seed=cfg.seed, precision=cfg.trainer.precision)
    per_call = env.num_agents * cfg.trainer.bptt_horizon
    steps, secs = _warmup_then_time(collector.collect, per_call, cfg.trainer.total_timesteps, spec["min_seconds"])
    env.close()
    return {"steps": steps, "seconds": secs, "num_agents": env.num_agents, "params": sum(p.numel() for p in policy.parameters())}


def work_arith(cfg, spec: dict) -> dict:
    """The arithmetic-bound row: one epoch's network work and nothing else.

    The same policy, the same shapes and the same PPO update as the trainer (``bptt_horizon``
    acting steps on all agents under inference mode, with action sampling, then ``ppo_update``
    with its epochs and minibatches), on tensors already in memory: observations of one real
    rollout recorded first, rewards and dones of that rollout. No env steps, no GAE, no logging,
    no checkpoints. Its SPS is what this machine's arithmetic allows, and with the env-only row it
    gives the limit ``1 / (1/env_only + 1/arithmetic)`` the trainer is measured against.
    """
    import torch

    from fiberlab.envs import make_vecenv
    from fiberlab.policies import build_policy
    from fiberlab.rl.advantages import compute_gae
    from fiberlab.rl.ppo import ppo_update
    from fiberlab.rl.precision import autocast
    from fiberlab.rl.rollout import RolloutCollector
    from fiberlab.runtime import keep_freed_memory, trainer_threads

    device = torch.device(_device(spec["device"]))
    env = make_vecenv(cfg.env, cfg.seed)
    s = env.spec
    pcfg = cfg.policy.model_copy(update={"obs_shape": list(s.obs_shape), "num_actions": s.num_actions, "obs_scale": list(s.obs_scale)})
    torch.manual_seed(cfg.seed)
    policy = build_policy(pcfg).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.trainer.learning_rate, eps=cfg.trainer.adam_eps, fused=True)
    collector = RolloutCollector(env, policy, cfg.trainer.bptt_horizon, device, seed=cfg.seed, precision=cfg.trainer.precision)
    rollout, next_value, _, _ = collector.collect()  # real observations, recorded once
    env.close()
    advantages, returns = compute_gae(rollout.rewards, rollout.values, rollout.dones, next_value, cfg.trainer.gamma, cfg.trainer.gae_lambda)
    n, horizon = rollout.actions.shape
    obs_by_step = [rollout.obs[:, t].clone() for t in range(horizon)]
    gen = torch.Generator().manual_seed(cfg.seed)
    tc = cfg.trainer
    keep_freed_memory()  # as the trainer does
    acting_threads, threads = trainer_threads(tc.torch_threads, tc.update_threads)

    def epoch() -> None:
        torch.set_num_threads(acting_threads)
        policy.eval()
        with torch.inference_mode(), autocast(collector.precision, device):  # acting's precision, as the trainer's
            state = policy.init_state(n, device)
            for t in range(horizon + 1):  # + the bootstrap value step, as the trainer takes
                logits, _, state = policy.step(obs_by_step[t % horizon], state, resets=rollout.starts[:, t % horizon])
                torch.multinomial(torch.softmax(logits, dim=-1), 1)
        policy.train()
        torch.set_num_threads(threads)  # the trainer's update phase: no env is stepping
        ppo_update(policy, optimizer, rollout, advantages, returns, tc, gen)
        torch.set_num_threads(acting_threads)

    steps, secs = _warmup_then_time(epoch, n * horizon, cfg.trainer.total_timesteps, spec["min_seconds"])
    return {"steps": steps, "seconds": secs, "num_agents": n}


def work_ours(cfg, spec: dict) -> dict:
    from fiberlab.rl.logging import read_metrics
    from fiberlab.rl.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="fiberlab_bench_") as tmp:
        run_cfg = cfg.model_copy(update={"train_dir": tmp, "run": "bench", "resume": False})
        Trainer(run_cfg).train()
        rows = read_metrics(Path(tmp) / "bench")
    if len(rows) < 2:
        raise RuntimeError(f"only {len(rows)} epoch(s) ran: raise the budget so there is one after the warm-up")
    # SPS after the first epoch: wall_time is cumulative at each epoch's end (rollout, GAE, update,
    # logging and any periodic checkpoint all included).
    steps = rows[-1]["agent_step"] - rows[0]["agent_step"]
    secs = rows[-1]["wall_time"] - rows[0]["wall_time"]
    return {"steps": steps, "seconds": secs, "epochs": len(rows), "mean_epoch_sps": statistics.fmean(r["sps"] for r in rows[1:]),
            "rollout_sps": statistics.fmean(r["rollout_sps"] for r in rows[1:])}


def _sb3_env_fns(cfg) -> list:
    """One gymnasium popgym env per slot, observations one-hot encoded exactly as fiberlab's popgym
    adapter does (its ``_Flattener``), wrapped in SB3's ``Monitor`` as ``make_vec_env`` would."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.monitor import Monitor

    from fiberlab.envs.popgym import _Flattener, _make_one

    class OneHot(gym.ObservationWrapper):
        def __init__(self, env):
            super().__init__(env)
            self.flat = _Flattener(env.observation_space)
            self.observation_space = gym.spaces.Box(0.0, 1.0, (self.flat.size,), np.float32)

        def observation(self, obs):
            out = np.zeros(self.flat.size, np.float32)
            self.flat.write(obs, out)
            return out

    name = cfg.env.name.split(".", 1)[1]
    return [lambda: Monitor(OneHot(_make_one(name))) for _ in range(cfg.env.num_envs)]


def work_sb3(cfg, spec: dict) -> dict:
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    class Hidden(BaseFeaturesExtractor):
        """One hidden layer + ReLU: the same encoder as fiberlab's ``mlp_lstm`` (linear=[128])."""

        def __init__(self, observation_space, hidden: int = 128):
            super().__init__(observation_space, hidden)
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(observation_space.shape[0]), hidden), torch.nn.ReLU())

        def forward(self, obs):
            return self.net(obs)

    class Timer(BaseCallback):
        """Marks time and step count at the start of the 2nd rollout (after a warm-up epoch)."""

        def __init__(self):
            super().__init__()
            self.rollouts, self.t0, self.s0 = 0, None, None

        def _on_rollout_start(self) -> None:
            self.rollouts += 1
            if self.rollouts == 2:
                self.t0, self.s0 = time.perf_counter(), self.model.num_timesteps

        def _on_step(self) -> bool:
            return True

    tc, pc = cfg.trainer, cfg.policy
    hidden = (pc.linear or [128])[-1]
    core = pc.core_hidden or 128
    venv = DummyVecEnv(_sb3_env_fns(cfg))
    common = dict(
        n_steps=tc.bptt_horizon, batch_size=tc.minibatch_size, n_epochs=tc.update_epochs, learning_rate=tc.learning_rate,
        gamma=tc.gamma, gae_lambda=tc.gae_lambda, clip_range=tc.clip_coef, ent_coef=tc.ent_coef, vf_coef=tc.vf_coef,
        max_grad_norm=tc.max_grad_norm, seed=cfg.seed, device=_device(spec["device"]), verbose=0,
    )
    if spec["kind"] == "sb3_ppo":
        from stable_baselines3 import PPO

        model = PPO("MlpPolicy", venv, policy_kwargs=dict(features_extractor_class=Hidden, features_extractor_kwargs=dict(hidden=hidden), net_arch=[]), **common)
    else:
        from sb3_contrib import RecurrentPPO

        # shared_lstm=True + enable_critic_lstm=False: one LSTM like ours (SB3 detaches it for the
        # critic); net_arch=[]: linear actor and critic heads straight on the LSTM output, like ours.
        model = RecurrentPPO(
            "MlpLstmPolicy", venv,
            policy_kwargs=dict(features_extractor_class=Hidden, features_extractor_kwargs=dict(hidden=hidden), net_arch=[],
                               lstm_hidden_size=core, n_lstm_layers=1, shared_lstm=True, enable_critic_lstm=False),
            **common,
        )
    timer = Timer()
    model.learn(total_timesteps=tc.total_timesteps, callback=timer)
    t_end = time.perf_counter()
    if timer.t0 is None:
        raise RuntimeError("only one rollout ran: raise the budget so there is one after the warm-up")
    venv.close()
    return {"steps": model.num_timesteps - timer.s0, "seconds": t_end - timer.t0, "params": sum(p.numel() for p in model.policy.parameters())}


WORKERS = {"env": work_env, "forward": work_forward, "arith": work_arith, "ours": work_ours, "baseline": work_ours, "sb3_ppo": work_sb3, "sb3_rppo": work_sb3}


def worker_main(spec: dict) -> None:
    import torch

    cfg = group_config(spec["group"], spec["num_envs"], spec["quick"], spec["device"], spec["set"])
    # the recipe's acting threads (all cores with auto), as the trainer would; every row alike
    try:
        from fiberlab.runtime import resolve_threads
    except ImportError:  # a --baseline tree from before auto threads: an int there
        def resolve_threads(n: int) -> int:
            return n
    torch.set_num_threads(resolve_threads(cfg.trainer.torch_threads))
    import fiberlab

    out = WORKERS[spec["kind"]](cfg, spec)
    out["fiberlab_from"] = str(Path(fiberlab.__file__).resolve().parent)
    out["sps"] = out["steps"] / out["seconds"]
    if torch.cuda.is_available() and _device(spec["device"]).startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(WORKER_TAG + json.dumps(out), flush=True)


# =============================================================================== parent side
def run_row(row: dict, args, log_dir: Path) -> dict:
    """Run one row in a fresh interpreter; return its result plus the child's own peak RSS."""
    spec = {**row, "num_envs": args.num_envs, "quick": args.quick, "device": args.device, "set": args.set,
            "min_seconds": MIN_SECONDS[1 if args.quick else 0]}
    src = Path(args.baseline) / "src" if row["kind"] == "baseline" else SRC  # the baseline row imports the other tree's fiberlab
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    log = log_dir / f"{row['group']}_{row['kind']}_{time.monotonic_ns()}.log"
    t0 = time.perf_counter()
    with open(log, "w+") as f:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        status, rusage = None, None
        while status is None:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, rusage = st, ru
            elif time.perf_counter() - t0 > args.timeout:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
            else:
                time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
        f.seek(0)
        text = f.read()
    wall = time.perf_counter() - t0
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    peak_mb = rusage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    result = None
    for line in text.splitlines():
        if line.startswith(WORKER_TAG):
            result = json.loads(line[len(WORKER_TAG):])
    if proc.returncode != 0 or result is None:
        tail = "\n".join(text.splitlines()[-15:])
        return {"error": f"exit code {proc.returncode}" + (" (timed out)" if wall > args.timeout else ""), "log_tail": tail, "peak_rss_mb": peak_mb, "wall": wall}
    result.update(peak_rss_mb=peak_mb, wall=wall)
    return result


def _skip_reasons(groups: list[str]) -> tuple[dict[str, str], bool]:
    skips: dict[str, str] = {}
    if "arena" in groups:
        try:
            import mettagrid  # noqa: F401  (fiberlab.envs.mettagrid imports it only when an env is built)
        except Exception as e:  # the adapter may not exist yet, or mettagrid may be missing
            skips["arena"] = f"arena skipped: `import mettagrid` failed ({type(e).__name__}: {e})"
    try:
        import sb3_contrib  # noqa: F401
        import stable_baselines3  # noqa: F401

        have_sb3 = True
    except ImportError:
        have_sb3 = False
    return skips, have_sb3


def _fmt_sps(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def summarize(rows: list[dict], groups: list[str]) -> tuple[list[str], dict[str, float]]:
    """The table lines and the ratio lines' values."""
    lines, ratios = [], {}
    head = f"{'group':<11} {'row':<45} {'SPS':>10} {'% ceiling':>9} {'peak MB':>8}  notes"
    lines += [head, "-" * len(head)]
    for g in groups:
        grp = [r for r in rows if r["group"] == g]
        if not grp:
            continue
        ceiling = next((r.get("sps") for r in grp if r["kind"] == "env"), None)
        for r in grp:
            sps = r.get("sps")
            pct = f"{100 * sps / ceiling:.1f}" if sps and ceiling else "-"
            mb = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"
            notes = r.get("error", "")
            if r.get("spread"):
                notes = f"runs {r['spread']}"
            if r.get("peak_gpu_mb"):
                notes += f" gpu {r['peak_gpu_mb']:.0f} MB"
            lines.append(f"{g:<11} {r['name']:<45} {_fmt_sps(sps):>10} {pct:>9} {mb:>8}  {notes}")
        by = {r["kind"]: r.get("sps") for r in grp}
        if by.get("ours") and by.get("env"):
            ratios[f"{g}: ours / env-only ceiling"] = by["ours"] / by["env"]
        if by.get("ours") and by.get("env") and by.get("arith"):
            # env and network run one after the other, so their times per step add up
            ratios[f"{g}: ours / limit"] = by["ours"] * (1 / by["env"] + 1 / by["arith"])
        if by.get("ours") and by.get("baseline"):
            ratios[f"{g}: ours / baseline code"] = by["ours"] / by["baseline"]
        if by.get("ours") and by.get("sb3_ppo"):
            ratios[f"{g}: ours / SB3 PPO"] = by["ours"] / by["sb3_ppo"]
        if by.get("ours") and by.get("sb3_rppo"):
            ratios[f"{g}: ours / RecurrentPPO"] = by["ours"] / by["sb3_rppo"]
    return lines, ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test; the numbers mean little)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device of the networks (envs run on the CPU)")
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups out of {', '.join(GROUPS)} (default: all)")
    p.add_argument("--num-envs", type=int, default=32, help="envs in the demo group, for every row (default 32)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every row of every group (repeatable), e.g. trainer.minibatch_size=512")
    p.add_argument("--repeats", type=int, default=1, help="run every row this many times (interleaved); report the median")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before a row is killed")
    p.add_argument("--json", metavar="OUT", help="write the results (rows, ratios, machine) to this JSON file")
    p.add_argument("--baseline", metavar="TREE",
                   help="another fiberlab source tree (e.g. `git worktree add /tmp/base <commit>`): adds a trainer row run on its code, "
                        "and the ratio of ours to it, measured in the same run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0

    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        p.error(f"unknown group(s) {', '.join(bad)}: allowed are {', '.join(GROUPS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda asked for but CUDA is not available")
    skips, have_sb3 = _skip_reasons(groups)
    for msg in skips.values():
        print(msg, flush=True)
    if "demo" in groups and not have_sb3:
        print("SB3 rows skipped: stable-baselines3 / sb3-contrib are not installed (pip install -c constraints.txt -e '.[bench]')", flush=True)
    run_groups = [g for g in groups if g not in skips]
    if args.baseline and not (Path(args.baseline) / "src" / "fiberlab").is_dir():
        p.error(f"--baseline {args.baseline}: no src/fiberlab there (allowed: a fiberlab source tree)")
    planned = plan_rows(run_groups, have_sb3, baseline=bool(args.baseline))
    if not planned:
        print("nothing to run")
        return 0
    from fiberlab.config import ConfigError

    configs = {}
    for g in run_groups:
        try:
            configs[g] = group_config(g, args.num_envs, args.quick, args.device, args.set)
        except ConfigError as e:
            p.error(str(e))

    import torch

    print(f"{machine_line()}, "
          f"device {args.device}{' (cuda available)' if torch.cuda.is_available() else ''}", flush=True)
    from fiberlab.devices import resolve_device
    from fiberlab.rl.precision import architecture_precision

    for g, c in configs.items():
        t = c.trainer
        precision = architecture_precision(t.precision, c.policy.name, resolve_device(c.device))
        print(f"{g}: env {c.env.name} x{c.env.num_envs}, policy {c.policy.name}, bptt {t.bptt_horizon}, minibatch {t.minibatch_size}, "
              f"epochs {t.update_epochs}, torch threads {t.torch_threads or 'auto'} (update {t.update_threads or 'auto'}), "
              f"precision {t.precision}{f' -> {precision}' if precision != t.precision else ''}, {t.total_timesteps} agent steps per row", flush=True)

    results: dict[int, list[dict]] = {i: [] for i in range(len(planned))}
    with tempfile.TemporaryDirectory(prefix="fiberlab_bench_logs_") as logs:
        for rep in range(args.repeats):
            for i, row in enumerate(planned):
                r = run_row(row, args, Path(logs))
                results[i].append(r)
                status = r.get("error") or f"{r['sps']:,.0f} SPS, peak {r['peak_rss_mb']:.0f} MB, {r['wall']:.1f} s"
                print(f"  [{rep + 1}/{args.repeats}] {row['group']:<10} {row['name']:<45} {status}", flush=True)
                if r.get("error"):
                    print("    " + r["log_tail"].replace("\n", "\n    "), flush=True)

    rows = []
    for i, row in enumerate(planned):
        ok = [r for r in results[i] if "sps" in r]
        merged = {**row, "runs": results[i]}
        if ok:
            merged["sps"] = statistics.median(r["sps"] for r in ok)
            merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
            if ok[0].get("peak_gpu_mb"):
                merged["peak_gpu_mb"] = max(r.get("peak_gpu_mb", 0) for r in ok)
            if len(ok) > 1:
                merged["spread"] = f"{min(r['sps'] for r in ok):,.0f}-{max(r['sps'] for r in ok):,.0f}"
        else:
            merged["error"] = results[i][-1].get("error", "failed")
            merged["peak_rss_mb"] = results[i][-1].get("peak_rss_mb")
        rows.append(merged)

    lines, ratios = summarize(rows, run_groups)
    print()
    print("\n".join(lines))
    print()
    for key, val in ratios.items():
        group, what = key.split(": ", 1)
        percent = "ceiling" in what or "limit" in what
        shown = f"{100 * val:.1f} %" if percent else f"{val:.2f}x"
        goal = TARGETS.get((group, what), TARGETS.get(what))
        if goal is None:
            print(f"{key}: {shown}")
            continue
        target = f"target >= {100 * goal:.0f} %" if percent else f"target >= {goal:g}x"
        print(f"{key}: {shown}  ({target}: {'met' if val >= goal else 'NOT met'})")
    for g, msg in skips.items():
        print(msg)
    failed = [r for r in rows if r.get("error")]
    if args.json:
        out = {
            "machine": {**machine(), "cuda": torch.cuda.is_available()},
            "args": {k: v for k, v in vars(args).items() if k != "worker"},
            "rows": rows, "ratios": ratios, "skipped": skips,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
