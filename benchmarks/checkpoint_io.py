#!/usr/bin/env python
"""Checkpoint I/O: save and load time against torch.save/torch.load, manifest reads, compression.

One run prints three tables (see docs/checkpoints_compression.md for the numbers measured so far):

1. **Save and load** of the ``atari`` policy (PufferLib's network, 3,948,202 parameters) with its
   Adam state: our ``save`` / ``load`` (plain, zstd-3, zstd-3 + shuffle)
   against ``torch.save`` / ``torch.load(weights_only=True)`` of the same two state dicts. "Load"
   ends with a usable policy and optimizer on both sides, so the torch side builds the policy
   from its config and calls ``load_state_dict`` (our loader rebuilds it from the manifest and,
   by default, verifies the checksum over every tensor and the manifest and that every float is
   finite). "load, unverified" is ``load(verify=False)``, so the difference is what
   verification costs; "verify" sets that cost against the machine's limit for it: sha256 of the
   same bytes already in memory on the same threads, with no other work. The "tensors only"
   rows compare ``read_tensors`` with a bare ``torch.load``. Median of ``--repeats`` runs,
   interleaved; target: ours no slower, verified loads included.
2. **Manifest read** (``read_manifest``, header only) against a full ``load``;
   target: at least 100x faster.
3. **Compression** (``fiberlab.experiments.checkpoint_bench.bench``, what ``fiberlab ckpt bench`` prints): gzip 1/6/9, lz4 0/9,
   zstd 1/3/9/19, each with and without the byte shuffle, on the ``atari`` and the ``fast``
   (Metta's, obs 34x11x11, 5 actions) checkpoints with their Adam state; then zstd-3 on weights
   alone and on the optimizer state alone.

The Adam state comes from a few PPO-shaped updates (random actions and advantages) on real
BeamRider frames from ALE when ale-py is there (random frames otherwise) for ``atari``, and on
sparse random grid observations for ``fast``. Moment entries of inputs that were never active
in those frames are exactly zero, and that makes them compress better than a long run's; the
share of zeros is printed.

Usage::

    .venv/bin/python benchmarks/checkpoint_io.py                  # ~1.5 min on 2 cores
    .venv/bin/python benchmarks/checkpoint_io.py --quick          # smoke test, ~15 s
    .venv/bin/python benchmarks/checkpoint_io.py --json io.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

# imported before fiberlab: puts src/ on the path when fiberlab is not installed
from bench_common import machine, machine_line, median_time, reference_policies
from safetensors.torch import save_file

from fiberlab.checkpoint import load, read_manifest, save
from fiberlab.checkpoint.base import tensor_checksum
from fiberlab.checkpoint.format import read_tensors
from fiberlab.experiments.checkpoint_bench import bench as compression_bench
from fiberlab.config import PolicyConfig
from fiberlab.policies import build_policy

REFERENCE = reference_policies()
ATARI, FAST = REFERENCE["atari"], REFERENCE["fast"]
FULL_LEVELS = {"gzip": (1, 6, 9), "lz4": (0, 9), "zstd": (1, 3, 9, 19)}
QUICK_LEVELS = {"gzip": (6,), "lz4": (0,), "zstd": (1, 3)}


# =============================================================================== the state
def _beam_rider_frames(n_envs: int = 8, steps: int = 64) -> tuple[torch.Tensor, str]:
    """``[n_envs, steps, 1, 105, 80]`` uint8 frames: BeamRider with random actions, else noise."""
    try:
        from fiberlab.envs import make_vecenv
        from fiberlab.recipes import get_recipe

        env = make_vecenv(get_recipe("beam_rider").env.model_copy(update={"num_envs": n_envs}), seed=0)
        rng = np.random.default_rng(0)
        env.reset()
        frames = []
        for _ in range(steps):
            obs, *_ = env.step(rng.integers(0, env.spec.num_actions, n_envs))
            frames.append(obs.copy())
        env.close()
        return torch.from_numpy(np.stack(frames, 1)), "BeamRider frames (ALE, random actions)"
    except Exception as e:  # noqa: BLE001 - no ALE here: noise still gives dense-ish moments
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n_envs, steps, 1, 105, 80), dtype=torch.uint8, generator=g), f"random frames ({type(e).__name__})"


def _grid_obs(n: int = 8, steps: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    dense = torch.randint(1, 8, (n, steps, *FAST.obs_shape), generator=g).float()
    return dense * (torch.rand(dense.shape, generator=g) < 0.05)  # a few features per cell


def trained(cfg: PolicyConfig, obs: torch.Tensor, updates: int = 4) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The policy and its Adam after ``updates`` PPO-shaped steps on ``obs`` ``[B, T, ...]``."""
    torch.manual_seed(0)
    policy = build_policy(cfg)
    opt = torch.optim.Adam(policy.parameters(), lr=2.5e-4)
    seg = obs.shape[1] // updates
    for i in range(updates):
        logits, values, _ = policy(obs[:, i * seg : (i + 1) * seg])
        actions = torch.randint(0, logits.shape[-1], logits.shape[:2])
        logp = torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
        loss = -(logp * torch.randn_like(logp)).mean() + 0.5 * (values - torch.randn_like(values)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return policy, opt


def zero_share(opt: torch.optim.Optimizer) -> float:
    ts = [t for s in opt.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t) and t.numel() > 1]
    return sum(int((t == 0).sum()) for t in ts) / max(1, sum(t.numel() for t in ts))


def _save(path: Path, policy: torch.nn.Module, opt: torch.optim.Optimizer, **kw: Any) -> Path:
    return save(path, policy, env_spec={"name": "bench"}, progress={"epoch": 1, "agent_step": 0, "wall_time": 0.0}, run="bench", seed=0, optimizer=opt, **kw)


# =============================================================================== timing
def save_load(policy: torch.nn.Module, opt: torch.optim.Optimizer, cfg: PolicyConfig, work: Path, repeats: int) -> list[dict[str, Any]]:
    """Rows: name, ours seconds, torch seconds, ratio (ours / torch), file sizes."""
    pt = work / "state.pt"
    ours = {"plain": work / "ours.safetensors", "zstd-3": work / "ours.safetensors.zst", "zstd-3+shuffle": work / "ours_s.safetensors.zst"}
    opts = {"plain": {}, "zstd-3": {"compress": "zstd"}, "zstd-3+shuffle": {"compress": "zstd", "shuffle": True}}

    def torch_save() -> None:
        torch.save({"policy": policy.state_dict(), "optimizer": opt.state_dict()}, pt)

    def torch_load_full() -> None:
        sd = torch.load(pt, weights_only=True)
        p = build_policy(cfg)
        p.load_state_dict(sd["policy"])
        torch.optim.Adam(p.parameters(), lr=1.0).load_state_dict(sd["optimizer"])

    def ours_load_full(path: Path, verify: bool = True) -> None:
        ck = load(path, verify=verify)
        ck.load_optimizer(torch.optim.Adam(ck.policy.parameters(), lr=1.0))

    in_memory: dict[str, torch.Tensor] = {}

    fns: dict[str, Callable[[], Any]] = {"torch save": torch_save, "torch load": torch_load_full, "torch tensors": lambda: torch.load(pt, weights_only=True)}
    for name, path in ours.items():
        fns[f"ours save {name}"] = lambda path=path, kw=opts[name]: _save(path, policy, opt, **kw)
        fns[f"ours load {name}"] = lambda path=path: ours_load_full(path)
        fns[f"ours load, unverified {name}"] = lambda path=path: ours_load_full(path, verify=False)
        fns[f"ours tensors {name}"] = lambda path=path: read_tensors(path)
    fns["sha256 limit"] = lambda: tensor_checksum(in_memory)  # the hashing alone, data in memory
    for k, fn in fns.items():  # warm-up, and the files the loads read
        if k == "sha256 limit":
            in_memory.update(read_tensors(ours["plain"]))
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so drifts of the machine hit every row alike
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for what, torch_key in (("save", "torch save"), ("load", "torch load"), ("load, unverified", "torch load"), ("tensors", "torch tensors")):
        for name, path in ours.items():
            rows.append({
                "what": what, "ours": name, "ours_s": med[f"ours {what} {name}"], "torch_s": med[torch_key],
                "ratio": med[f"ours {what} {name}"] / med[torch_key], "ours_bytes": path.stat().st_size, "torch_bytes": pt.stat().st_size,
            })
    cost = med["ours load plain"] - med["ours load, unverified plain"]
    rows.append({"what": "verify", "ours": "plain", "ours_s": cost, "torch_s": med["sha256 limit"], "ratio": cost / med["sha256 limit"],
                 "ours_bytes": ours["plain"].stat().st_size, "torch_bytes": ours["plain"].stat().st_size, "reference": "sha256 of the same tensors in memory"})
    return rows


def manifest_vs_load(paths: dict[str, Path], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, path in paths.items():
        t_manifest = median_time(lambda path=path: read_manifest(path), max(50, repeats * 20))
        t_load = median_time(lambda path=path: load(path), repeats)
        rows.append({"file": name, "manifest_s": t_manifest, "load_s": t_load, "speedup": t_load / t_manifest})
    return rows


def parts(path: Path, work: Path) -> dict[str, Path]:
    """Weights alone and optimizer state alone, as plain safetensors files."""
    tensors = read_tensors(path)
    out = {}
    for prefix in ("policy/", "optimizer/"):
        f = work / f"{path.stem}_{prefix[:-1]}.safetensors"
        save_file({k: v for k, v in tensors.items() if k.startswith(prefix)}, str(f))
        out[prefix[:-1]] = f
    return out


# =============================================================================== printing
def print_compression(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"  {'method':<6} {'level':>5} {'shuffle':>7} {'bytes':>12} {'ratio':>6} {'saved':>6} {'comp MB/s':>10} {'decomp MB/s':>11}")
    for r in rows:
        print(f"  {r['method']:<6} {r['level']:>5} {r['shuffle']!s:>7} {r['size']:>12,} {r['ratio']:>6.3f} {r['saved_percent']:>5.1f}% {r['compress_mb_s']:>10.1f} {r['decompress_mb_s']:>11.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer levels and repeats (smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="save/load repeats (default 7, quick 2)")
    ap.add_argument("--json", metavar="OUT", help="write every number to OUT")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 7)
    levels = QUICK_LEVELS if args.quick else FULL_LEVELS
    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    print(machine_line())

    frames, source = _beam_rider_frames()
    atari_policy, atari_opt = trained(ATARI, frames)
    fast_policy, fast_opt = trained(FAST, _grid_obs())
    result["state"] = {"atari_obs": source, "atari_params": sum(p.numel() for p in atari_policy.parameters()), "fast_params": sum(p.numel() for p in fast_policy.parameters()), "atari_adam_zero_share": zero_share(atari_opt), "fast_adam_zero_share": zero_share(fast_opt)}
    st = result["state"]
    print(f"atari: {st['atari_params']:,} params, Adam state after 4 updates on {source}; {100 * st['atari_adam_zero_share']:.1f}% of moment entries exactly 0")
    print(f"fast:  {st['fast_params']:,} params, Adam state after 4 updates on sparse random grids; {100 * st['fast_adam_zero_share']:.1f}% of moment entries exactly 0")

    with tempfile.TemporaryDirectory(prefix="fiberlab-ckpt-io-") as tmp:
        work = Path(tmp)
        rows = save_load(atari_policy, atari_opt, ATARI, work, repeats)
        result["save_load"] = rows
        print(f"\nSave / load, atari + Adam, median of {repeats} (ours / torch: < 1 means ours is faster; the verify row: its cost / sha256 alone)")
        print(f"  {'':<17} {'ours':<15} {'ours s':>8} {'torch s':>8} {'ratio':>6} {'ours bytes':>12} {'torch bytes':>12}")
        for r in rows:
            print(f"  {r['what']:<17} {r['ours']:<15} {r['ours_s']:>8.3f} {r['torch_s']:>8.3f} {r['ratio']:>6.2f} {r['ours_bytes']:>12,} {r['torch_bytes']:>12,}")

        atari_ckpt = work / "ours.safetensors"
        mrows = manifest_vs_load({"plain": atari_ckpt, "zstd-3+shuffle": work / "ours_s.safetensors.zst"}, repeats)
        result["manifest"] = mrows
        print("\nManifest read vs full load, atari + Adam (target: >= 100x)")
        for r in mrows:
            print(f"  {r['file']:<15} read_manifest {1e3 * r['manifest_s']:8.3f} ms   load {1e3 * r['load_s']:8.1f} ms   {r['speedup']:8.0f}x")

        fast_ckpt = _save(work / "fast.safetensors", fast_policy, fast_opt)
        result["compression"] = {}
        for name, path in (("atari", atari_ckpt), ("fast", fast_ckpt)):
            bench_rows = compression_bench(path, levels=levels, min_time=0.1 if args.quick else 0.3, max_repeats=3 if args.quick else 10)
            result["compression"][name] = bench_rows
            print_compression(f"Compression, {name} weights + Adam ({path.stat().st_size:,} bytes)", bench_rows)
        result["parts"] = {}
        for name, path in (("atari", atari_ckpt), ("fast", fast_ckpt)):
            for part, f in parts(path, work).items():
                bench_rows = compression_bench(f, methods=("zstd",), levels=[3], min_time=0.05, max_repeats=3)
                result["parts"][f"{name}/{part}"] = bench_rows
                print_compression(f"zstd-3, {name} {'weights' if part == 'policy' else 'Adam state'} alone ({f.stat().st_size:,} bytes)", bench_rows)
    result["wall_s"] = time.perf_counter() - t_start
    print(f"\nwall time {result['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
