"""Batched PPO and ``collect_histories``: the hand-written gradient against autograd, a goal learned
in a batch against the same goal learned alone, the recorded action probabilities against a fresh
forward pass, resume after an interruption, the file written, and a goal that learns."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiberlab.distill.batched_ppo import BatchedPPO, StackedActorCritic, gae
from fiberlab.distill.collect import collect_histories, parts_dir
from fiberlab.distill.config import CollectConfig
from fiberlab.distill.histories import open_history
from fiberlab.errors import BadInput


def small(**over: object) -> CollectConfig:
    """4 streams, 3 updates of 20 steps (80 samples per goal: minibatches of 50 and 30)."""
    base = dict(n_stream=4, steps_per_goal=4 * 20 * 3, progress="none")
    base.update(over)
    return CollectConfig(**base)


# =============================================================================== PPO pieces
def reference_loss(model: StackedActorCritic, params: dict[str, torch.Tensor], obs, act, old_logp, adv, ret, cfg) -> torch.Tensor:
    """SB3's PPO loss with autograd, summed over goals (the straightforward way, for comparison)."""
    def mlp(net: str, x: torch.Tensor) -> torch.Tensor:
        n = len(model.hidden) + 1
        for i in range(n):
            x = torch.baddbmm(params[f"{net}{i}.b"], x, params[f"{net}{i}.w"])
            x = torch.tanh(x) if i < n - 1 else x
        return x

    adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
    log_pi = F.log_softmax(mlp("pi", obs), -1)
    ratio = torch.exp(log_pi.gather(-1, act).squeeze(-1) - old_logp)
    pg = -torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)).mean(1)
    v = F.mse_loss(mlp("vf", obs).squeeze(-1), ret, reduction="none").mean(1)
    entropy = -(log_pi.exp() * log_pi).sum(-1).mean(1)
    return (pg + cfg.vf_coef * v - cfg.ent_coef * entropy).sum()


@pytest.mark.parametrize("ent_coef", [0.0, 0.05])
def test_hand_written_gradient_equals_autograd(ent_coef: float) -> None:
    cfg = small(ent_coef=ent_coef)
    ppo = BatchedPPO(cfg, [3, 56])
    gen = torch.Generator().manual_seed(0)
    G, B = 2, 50
    obs = torch.randint(0, 9, (G, B, 2), generator=gen).float()
    act = torch.randint(0, 5, (G, B, 1), generator=gen)
    with torch.no_grad():
        logits, _, _ = ppo.model.forward(obs)
    # old log-probs spread the ratio over both sides of the clip range, advantages of both signs
    old_logp = F.log_softmax(logits, -1).gather(-1, act).squeeze(-1) + 0.5 * torch.randn(G, B, generator=gen)
    adv, ret = torch.randn(G, B, generator=gen), torch.randn(G, B, generator=gen)
    loss = ppo.loss_and_grad(obs, act, old_logp, adv, ret)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in ppo.model.params.items()}
    ref = reference_loss(ppo.model, params, obs, act, old_logp, adv, ret, cfg)
    ref.backward()
    assert torch.allclose(loss.sum(), ref.detach(), rtol=1e-5)
    for name, p in params.items():
        torch.testing.assert_close(ppo.model.grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gae_matches_a_step_by_step_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    n, gamma, lam = 6, 0.9, 0.8
    r, v, last = torch.rand(n, 2, generator=gen), torch.rand(n, 2, generator=gen), torch.rand(2, generator=gen)
    d = torch.zeros(n, 2, dtype=torch.bool)
    d[2, 0] = d[5, 1] = True
    adv, ret = gae(r, v, d, last, gamma, lam)
    for s in range(2):
        a = 0.0
        for t in reversed(range(n)):
            nv = float(last[s]) if t == n - 1 else float(v[t + 1, s])
            nd = 0.0 if d[t, s] else 1.0
            a = float(r[t, s]) + gamma * nv * nd - float(v[t, s]) + gamma * lam * nd * a
            assert abs(float(adv[t, s]) - a) < 1e-5
    torch.testing.assert_close(ret, adv + v)


def test_orthogonal_init_per_goal_seed() -> None:
    a = StackedActorCritic([torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)], 2, 5, [64, 64])
    b = StackedActorCritic([torch.Generator().manual_seed(6)], 2, 5, [64, 64])
    w = a.params["pi1.w"][0]
    torch.testing.assert_close(w.T @ w, 2.0 * torch.eye(64), atol=1e-4, rtol=0)  # orthogonal, gain sqrt 2
    assert a.params["pi2.w"][0].norm() == pytest.approx(0.01 * 5 ** 0.5, rel=1e-4)  # 0.01 x a [5, 64] semi-orthogonal
    assert float(a.params["vf0.b"].abs().max()) == 0.0
    for name in a.params:  # goal 1 of the pair is the lone goal seeded the same
        torch.testing.assert_close(a.params[name][1], b.params[name][0], rtol=0, atol=0)


def test_a_goal_in_a_batch_learns_as_it_does_alone() -> None:
    cfg = small()
    goals = [3, 56, 80]
    batched = BatchedPPO(cfg, goals)
    rec = batched.learn(3)
    for i, g in enumerate(goals):
        alone = BatchedPPO(cfg, [g])
        rec1 = alone.learn(3)
        np.testing.assert_array_equal(rec.actions[i].numpy(), rec1.actions[0].numpy())
        np.testing.assert_allclose(rec.action_probs[i].numpy(), rec1.action_probs[0].numpy(), atol=1e-6)
        for name, p in batched.model.goal_parameters(i).items():
            torch.testing.assert_close(p, alone.model.goal_parameters(0)[name], rtol=1e-5, atol=1e-6, msg=name)


def test_recorded_probabilities_are_the_behaviour_policy_at_action_time() -> None:
    cfg = small()
    ppo = BatchedPPO(cfg, [10, 70])
    snapshots = [{k: v.clone() for k, v in ppo.model.params.items()}]  # the policy of rollout 1
    rec = ppo.learn(3, on_update=lambda k, r: snapshots.append({n: v.clone() for n, v in ppo.model.params.items()}))
    probe = StackedActorCritic([torch.Generator(), torch.Generator()], 2, 5, cfg.hidden)
    for k in range(3):
        with torch.no_grad():
            for name, p in probe.params.items():
                p.copy_(snapshots[k][name])
            steps = slice(20 * k, 20 * (k + 1))
            states = rec.states[:, steps].reshape(2, -1, 2).float()
            logits, _, _ = probe.forward(states)
            fresh = F.softmax(logits, -1).gather(-1, rec.actions[:, steps].reshape(2, -1, 1).long()).squeeze(-1)
        np.testing.assert_allclose(rec.action_probs[:, steps].reshape(2, -1).numpy(), fresh.numpy(), rtol=1e-5)
    # and the policy changed between rollouts, so this compared different policies
    assert not torch.equal(snapshots[0]["pi0.w"], snapshots[2]["pi0.w"])


def test_a_goal_learns_on_a_small_budget() -> None:
    cfg = small(n_stream=20)  # goal (5,4), next to the start: best return 20
    rec = BatchedPPO(cfg, [49]).learn(25)
    curve = rec.curve()[:, 0]
    assert curve.shape == (25,)
    assert curve[-3:].mean() > max(3 * curve[:3].mean(), curve[:3].mean() + 4.0), curve


# =============================================================================== the collection
def test_collect_writes_the_schema_and_resumes_after_an_interruption(tmp_path: Path) -> None:
    from fiberlab.distill.segments import segment_mask

    goals = [56, 3, 40]
    whole = collect_histories(small(goals=goals, goals_per_batch=2, out_dir=str(tmp_path / "whole")), progress=False)
    assert whole.learned == goals and whole.resumed == [] and not parts_dir(whole.path).exists()
    with open_history(whole.path) as h:
        assert h.goals == [3, 40, 56] and h.steps == 60 and h.n_stream == 4
        assert h.attrs["total_steps"] == 3 * 60 * 4 and h.attrs["horizon"] == 20 and h.attrs["alg"] == "PPO"
        g = h.goal(56)
        np.testing.assert_array_equal(g.compression_mask, segment_mask(g.action_probs, 0.7, 10, "lookahead"))
        assert (g.dones.sum(0) == 3).all()  # three 20-step episodes per stream
        # next_states are the true next states: the terminal one at done, the next state otherwise
        np.testing.assert_array_equal(g.next_states[:-1][~g.dones[:-1]], g.states[1:][~g.dones[:-1]])
        assert not (g.states[1:][g.dones[:-1]] != 4).any()  # after done, the episode restarts at the centre
        assert whole.final_return[56] == pytest.approx(float(g.rewards[-20:].sum(0).mean()))

    cfg = small(goals=goals, goals_per_batch=2, out_dir=str(tmp_path / "resumed"))

    def interrupt(chunk: list[int]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_histories(cfg, progress=False, on_chunk=interrupt)
    path = whole.path.parent.parent / "resumed" / whole.path.name
    assert not path.exists()  # complete or absent
    assert sorted(p.name for p in parts_dir(path).glob("goal_*")) == ["goal_3.npz", "goal_56.npz"]
    chunks: list[list[int]] = []
    again = collect_histories(cfg, progress=False, on_chunk=chunks.append)
    assert chunks == [[40]] and again.learned == [40] and sorted(again.resumed) == [3, 56]
    assert not parts_dir(path).exists()
    with h5py.File(whole.path, "r") as a, h5py.File(again.path, "r") as b:
        for goal in a:
            for name in a[goal]:
                np.testing.assert_array_equal(a[goal][name][()], b[goal][name][()], err_msg=f"{goal}/{name}")
        assert a.attrs["compression_ratio"] == b.attrs["compression_ratio"]

    # the finished file is left alone on a rerun; other settings are refused
    assert collect_histories(cfg, progress=False).skipped
    with pytest.raises(BadInput, match="exists with other settings"):
        collect_histories(small(goals=goals, goals_per_batch=2, out_dir=cfg.out_dir, learning_rate=1e-3), progress=False)


def test_parts_of_other_settings_are_refused(tmp_path: Path) -> None:
    cfg = small(goals=[1, 2], goals_per_batch=1, out_dir=str(tmp_path))

    def interrupt(chunk: list[int]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_histories(cfg, progress=False, on_chunk=interrupt)
    with pytest.raises(BadInput, match="other settings .*n_stream: 4 -> 5"):
        collect_histories(small(goals=[1, 2], goals_per_batch=1, out_dir=str(tmp_path), n_stream=5), progress=False)


def test_overwrite_discards_parts_of_other_settings(tmp_path: Path) -> None:
    def interrupt(chunk: list[int]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_histories(small(goals=[1, 2], goals_per_batch=1, out_dir=str(tmp_path)), progress=False, on_chunk=interrupt)
    res = collect_histories(small(goals=[1, 2], goals_per_batch=1, out_dir=str(tmp_path), steps_per_goal=80),
                            progress=False, overwrite=True)
    assert res.learned == [1, 2] and res.resumed == []
    with open_history(res.path) as h:
        assert h.steps == 20


def test_benchmark_quick_prints_the_ratio(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "ad_collect.py"), "--quick", "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"ad collect: batched / lone speed-up: \d+\.\d+x", proc.stdout), proc.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["batched"]["steps_per_second"] > 0 and data["lone"]["steps_per_second"] > 0


@pytest.mark.parametrize("goals,words", [([3, 3], "goal 3 is listed twice"), ([81], "bad task index 81")])
def test_bad_goals(tmp_path: Path, goals: list[int], words: str) -> None:
    with pytest.raises(BadInput, match=words):
        collect_histories(small(goals=goals, out_dir=str(tmp_path)), progress=False)
