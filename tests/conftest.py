"""Shared helpers: tiny configs and a CLI runner that captures exit code and output."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def tiny(train_dir: Path, run: str = "t", recipe: str = "demo", epochs: int = 2, agents: int | None = None, **extra: object) -> list[str]:
    """Overrides for a run of ``epochs`` epochs of 8 steps; ``agents`` is the batch (default: env.num_envs, 8)."""
    agents = agents or int(extra.get("env.num_envs", 8))
    over = {
        "run": run,
        "train_dir": str(train_dir),
        "progress": "none",
        "env.num_envs": 8,
        "trainer.bptt_horizon": 8,
        "trainer.minibatch_size": 32,
        "trainer.total_timesteps": 8 * agents * epochs,
        "trainer.checkpoint_interval": 1,
    }
    over.update(extra)
    return [recipe] + [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in over.items()]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "fiberlab", *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)


def policy_and_adam(small: bool = False):
    """A seeded mlp_lstm policy and its Adam after two steps (``small``: 16 units), for checkpoints."""
    from fiberlab.config import PolicyConfig
    from fiberlab.policies import build_policy

    torch.manual_seed(0)
    extra = {"linear": [16], "core_hidden": 16} if small else {}
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, **extra))
    opt = torch.optim.Adam(p.parameters(), lr=1e-3)
    for _ in range(2):
        logits, values, _ = p(torch.randn(2, 3, 4))
        (logits.sum() + values.sum()).backward()
        opt.step()
        opt.zero_grad()
    return p, opt


@pytest.fixture
def cli():
    return run_cli


def flat_state(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """A nested recurrent state as one flat dict with dotted keys (``"0.c1"``), for comparing states."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        out.update(flat_state(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def assert_states_close(a: dict, b: dict, **tol) -> None:
    """Same keys, and every tensor close (``torch.testing.assert_close`` tolerances in ``tol``)."""
    fa, fb = flat_state(a), flat_state(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], msg=lambda m, k=k: f"state[{k}]: {m}", **tol)
