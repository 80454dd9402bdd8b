#!/usr/bin/env python
"""One PPO minibatch, part by part: fiberlab's update against the same update with torch's standard calls.

Both variants run the same network on the same minibatches of one rollout, alternating in blocks
in one process, so the machine's drift falls on both:

- ``torch standard``: the PPO loss as tensor operations (``PPOLoss``'s tensor form), then
  ``optimizer.zero_grad(set_to_none=True)``, ``loss.backward()``, ``nn.utils.clip_grad_norm_``,
  ``optimizer.step()`` (fused Adam);
- ``fiberlab``: what ``rl/ppo.py`` does: the loss by its compiled loop where it applies
  (``rl/ppo_loss.py``), the gradients in one buffer (``rl/gradients.py``) for zeroing and clipping.

The forward and backward passes are the same code in both; they are timed to show their share
(on ``demo`` they are oneDNN's LSTM, the floor of this minibatch). Prints the median microseconds
of every part, and the ratio of the totals.

Usage::

    .venv/bin/python benchmarks/ppo_minibatch.py                  # demo, 2 threads, ~30 s
    .venv/bin/python benchmarks/ppo_minibatch.py --recipe arena --minibatches 100
"""
from __future__ import annotations

import argparse
import statistics
import time

import bench_common  # noqa: F401  (puts src/ on the path in a plain checkout)

PARTS = ("forward", "loss", "zero", "backward", "clip", "step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="demo", help="recipe whose policy and PPO settings are used (default demo, with 32 envs)")
    parser.add_argument("--minibatches", type=int, default=400, help="minibatches timed per variant (default 400)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, as the trainer's update phase uses (default 2)")
    args = parser.parse_args(argv)
    if args.minibatches < 1 or args.threads < 1:
        parser.error(f"--minibatches and --threads must be >= 1, got {args.minibatches} and {args.threads}")

    import torch
    from torch import nn

    from fiberlab.config import ConfigError, apply_overrides
    from fiberlab.cortex.base import map_state
    from fiberlab.envs import make_vecenv
    from fiberlab.policies import build_policy
    from fiberlab.recipes import get_recipe
    from fiberlab.rl import ppo_loss
    from fiberlab.rl.advantages import compute_gae
    from fiberlab.rl.gradients import FlatGradients
    from fiberlab.rl.ppo import segment_minibatches
    from fiberlab.rl.precision import autocast
    from fiberlab.rl.rollout import RolloutCollector

    over = ["device=cpu"] + (["env.num_envs=32"] if args.recipe == "demo" else [])  # demo as train_throughput.py runs it
    try:
        cfg = apply_overrides(get_recipe(args.recipe), over)
    except ConfigError as err:
        parser.error(str(err))  # one line, exit 2
    tc = cfg.trainer
    env = make_vecenv(cfg.env, cfg.seed)
    spec = env.spec
    pcfg = cfg.policy.model_copy(update={"obs_shape": list(spec.obs_shape), "num_actions": spec.num_actions, "obs_scale": list(spec.obs_scale)})
    torch.manual_seed(0)
    policy = build_policy(pcfg)
    collector = RolloutCollector(env, policy, tc.bptt_horizon, torch.device("cpu"), seed=0, precision=tc.precision)
    precision = collector.precision
    for _ in range(4):  # a rollout from the middle of episodes, not their first steps
        rollout, next_value, _, _ = collector.collect()
    adv, ret = compute_gae(rollout.rewards, rollout.values, rollout.dones, next_value, tc.gamma, tc.gae_lambda)
    resets = rollout.training_resets(tc.reset_in_training)
    optimizer = torch.optim.Adam(policy.parameters(), lr=tc.learning_rate, eps=tc.adam_eps, fused=True)
    policy.train()
    torch.set_num_threads(args.threads)
    env.close()
    generator = torch.Generator().manual_seed(0)
    n, horizon = rollout.actions.shape
    batches = segment_minibatches(n, horizon, tc.minibatch_size, generator)
    use_loop = ppo_loss.use_loop
    grads: FlatGradients | None = None

    def minibatch(variant: str, idx: torch.Tensor, times: dict[str, list[float]]) -> None:
        nonlocal grads
        standard = variant == "torch standard"
        ppo_loss.use_loop = (lambda *t: False) if standard else use_loop
        t0 = time.perf_counter()
        state = map_state(rollout.initial_state, lambda v: v[idx])
        with autocast(precision, torch.device("cpu")):
            logits, value, _ = policy(rollout.obs[idx], state, resets[idx])
        logits, value = logits.float(), value.float()
        t1 = time.perf_counter()
        loss, stats = ppo_loss.PPOLoss.apply(logits, value, rollout.actions[idx], rollout.logprobs[idx], adv[idx], ret[idx],
                                             rollout.values[idx], tc.clip_coef, tc.ent_coef, tc.vf_coef, tc.clip_vloss, tc.norm_adv)
        float(loss.detach()), stats.tolist()  # the update reads both every minibatch
        t2 = time.perf_counter()
        if standard:
            optimizer.zero_grad(set_to_none=True)
        elif grads is None:
            grads = FlatGradients(policy.parameters())
        else:
            grads.zero_()
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        if standard:
            nn.utils.clip_grad_norm_(policy.parameters(), tc.max_grad_norm)
        else:
            grads.clip_(tc.max_grad_norm)
        t5 = time.perf_counter()
        optimizer.step()
        t6 = time.perf_counter()
        for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            times[part].append(seconds * 1e6)

    variants = ("torch standard", "fiberlab")
    times = {v: {p: [] for p in PARTS} for v in variants}
    warm = {p: [] for p in PARTS}
    for v in variants:  # compile the loop, allocate buffers
        for idx in batches[:2] * 5:
            minibatch(v, idx, warm)
    block = 20
    done = 0
    while done < args.minibatches:
        for v in variants:
            for k in range(block):
                minibatch(v, batches[(done + k) % len(batches)], times[v])
        done += block
    ppo_loss.use_loop = use_loop

    print(bench_common.machine_line())
    print(f"{args.recipe}: {len(batches[0])} segments x {horizon} steps a minibatch, policy {cfg.policy.name}, precision {precision}, "
          f"{args.threads} threads, {done} minibatches per variant (blocks of {block}, alternating); median us:")
    print(f"{'part':10s} {'torch standard':>15s} {'fiberlab':>10s} {'ratio':>7s}")
    totals = {}
    for v in variants:
        totals[v] = sum(statistics.median(times[v][p]) for p in PARTS)
    for p in PARTS:
        a, b = statistics.median(times[variants[0]][p]), statistics.median(times[variants[1]][p])
        print(f"{p:10s} {a:15.1f} {b:10.1f} {a / b:6.2f}x")
    a, b = totals[variants[0]], totals[variants[1]]
    print(f"{'total':10s} {a:15.1f} {b:10.1f} {a / b:6.2f}x   (forward + backward, the same code in both: "
          f"{statistics.median(times[variants[1]]['forward']) + statistics.median(times[variants[1]]['backward']):.0f} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
