"""Truncated BPTT: stored segment states, resets inside segments, and learning a memory task."""
import numpy as np
import pytest
import torch

from fiberlab.config import EnvConfig, PolicyConfig, apply_overrides
from fiberlab.envs import make_vecenv
from fiberlab.policies import build_policy
from fiberlab.rl.rollout import RolloutCollector


def _replay(policy, rollout, pass_state=True, reset_in_training=True):
    resets = rollout.training_resets(reset_in_training)
    state = rollout.initial_state if pass_state else None
    with torch.no_grad():
        logits, values, _ = policy(rollout.obs, state, resets)
    logp = torch.log_softmax(logits, -1).gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
    return logp, values


def test_training_forward_reproduces_rollout_exactly():
    """With the stored state and in-segment resets, training sees exactly what acting saw."""
    torch.manual_seed(0)
    env = make_vecenv(EnvConfig(name="popgym.RepeatPreviousEasy", num_envs=6), 0)
    policy = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=4))
    collector = RolloutCollector(env, policy, horizon=40, device=torch.device("cpu"), seed=0)
    collector.collect()  # first segment starts from zeros; the second starts mid-episode
    rollout, _, _, _ = collector.collect()
    assert rollout.starts[:, 1:].any(), "the second segment must contain an episode boundary"
    assert rollout.initial_state["h"].abs().sum() > 0
    logp, values = _replay(policy, rollout)
    torch.testing.assert_close(logp, rollout.logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, rollout.values, atol=1e-5, rtol=1e-5)
    # each switch breaks the equality, so the test can tell them apart
    assert not torch.allclose(_replay(policy, rollout, pass_state=False)[0], rollout.logprobs, atol=1e-4)
    assert not torch.allclose(_replay(policy, rollout, reset_in_training=False)[0], rollout.logprobs, atol=1e-4)


def _final_return(tmp_path, extra):
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.logging import read_metrics
    from fiberlab.rl.trainer import Trainer

    over = [f"train_dir={tmp_path}", "run=m", "progress=none", "tensorboard=false", "seed=3", "trainer.total_timesteps=150000", "trainer.checkpoint_interval=100000", *extra]
    Trainer(apply_overrides(get_recipe("demo"), over)).train()
    rows = [r for r in read_metrics(tmp_path / "m") if r["episode_return"] is not None]
    return float(np.mean([r["episode_return"] for r in rows[-10:]]))


@pytest.mark.slow
def test_memory_task_is_learned_with_stored_state_and_not_without_memory(tmp_path):
    # RepeatPreviousEasy: recall the suit 4 cards back. A random or memoryless policy scores -0.5.
    with_memory = _final_return(tmp_path / "a", [])
    # Two-step segments starting from zeros: the card 4 steps back is never inside a trained window.
    without = _final_return(tmp_path / "b", ["trainer.bptt_horizon=2", "trainer.pass_state=false"])
    assert with_memory > 0.0, with_memory
    assert without < -0.3, without
