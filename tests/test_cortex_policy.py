"""policy.core=cortex: a cortex stack in place of the LSTM, through build, checkpoint, rollout and PPO."""

import numpy as np
import pytest
import torch

from fiberlab.checkpoint import load, read_manifest, save
from fiberlab.config import ConfigError, EnvConfig, PolicyConfig, TrainConfig, apply_overrides
from fiberlab.cortex.base import map_state
from fiberlab.envs import make_vecenv
from fiberlab.policies import build_policy
from fiberlab.policies.cortex_core import CortexCore
from fiberlab.rl.rollout import RolloutCollector

torch.set_num_threads(1)


SMALL = {
    "fast": dict(obs_shape=[3, 11, 11], conv_channels=[4, 4], linear=[16, 16], actor_hidden=[8], critic_hidden=[8]),
    "atari": dict(obs_shape=[1, 105, 80], conv_channels=[4, 4, 4], linear=[16]),
    "mlp_lstm": dict(obs_shape=[4], linear=[16]),
}


def cortex_cfg(name, **kw):
    fields = dict(name=name, num_actions=3, core="cortex", pattern="AgSA", d_hidden=16, num_layers=2, **SMALL[name])
    fields.update(kw)
    return PolicyConfig(**fields)


def _obs(cfg, B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, *cfg.obs_shape, generator=g) * 2


@pytest.mark.parametrize("name", list(SMALL))
def test_cortex_policy_builds_and_sequence_equals_step_loop(name):
    torch.manual_seed(0)
    cfg = cortex_cfg(name)
    p = build_policy(cfg)
    assert isinstance(p.core, CortexCore) and p.core.hidden_size == 16
    assert p.actor[0].in_features == 16 and p.critic[0].in_features == 16  # heads read d_hidden
    assert len(p.core.stack.layers) == 2 and len(p.core.stack.layers[0].experts) == len(p.config.pattern.replace(",", "").replace("g", ""))
    assert p.config.core_hidden is None
    obs = _obs(cfg, 2, 6)
    resets = torch.zeros(2, 6, dtype=torch.bool)
    resets[0, 3] = True
    with torch.no_grad():
        logits, values, state = p(obs, None, resets)
        s = p.init_state(2)
        for t in range(6):
            lt, vt, s = p.step(obs[:, t], s, resets[:, t])
            torch.testing.assert_close(lt, logits[:, t], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(vt, values[:, t], atol=2e-5, rtol=1e-4)
    assert logits.shape == (2, 6, 3) and values.shape == (2, 6)
    assert isinstance(state["layer_0"]["expert_0"], dict)  # nested


def test_defaults_and_overrides_from_the_command_line():
    cfg = apply_overrides(TrainConfig(), ["policy.core=cortex", "policy.pattern=AgSA", "policy.d_hidden=128", "policy.num_layers=3"])
    assert (cfg.policy.core, cfg.policy.pattern, cfg.policy.d_hidden, cfg.policy.num_layers) == ("cortex", "AgSA", 128, 3)
    cfg = apply_overrides(TrainConfig(), ['policy.cortex_overrides={"RouterConfig": {"temperature": 0.5}}', 'policy.pattern=["L", "A"]'])
    assert cfg.policy.cortex_overrides == {"RouterConfig": {"temperature": 0.5}} and cfg.policy.pattern == ["L", "A"]
    with pytest.raises(ConfigError, match="policy.core"):
        apply_overrides(TrainConfig(), ["policy.core=gru"])
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, core="cortex"))
    assert (p.config.pattern, p.config.num_layers, p.config.d_hidden) == ("Ag,A,S", 2, 128)  # cortex.md's default policy


def test_cortex_overrides_reach_the_stack():
    p = build_policy(cortex_cfg("mlp_lstm", pattern="A,A", num_layers=1, cortex_overrides={"RouterConfig": {"temperature": 0.25}, "StackConfig": {"post_norm": False}}))
    assert p.core.stack.layers[0].router.cfg.temperature == 0.25 and isinstance(p.core.stack.norm, torch.nn.Identity)


@pytest.mark.parametrize("bad, match", [
    (dict(core="lstm", pattern="L"), "policy.pattern is only used with policy.core=cortex"),
    (dict(core="lstm", d_hidden=8), "policy.d_hidden is only used with policy.core=cortex"),
    (dict(core="cortex", core_hidden=8), "with core=cortex set policy.d_hidden"),
    (dict(core="cortex", pattern="A^"), "unknown token 'A\\^'"),
    (dict(core="cortex", pattern=["L"], num_layers=2), "num_layers=2 entries"),
    (dict(core="cortex", pattern="L", cortex_overrides={"LSTMConfig": {"bias": 1}}), "unknown field LSTMConfig.bias"),
])
def test_bad_cortex_configs_are_one_line_errors(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, **bad))
    assert "\n" not in str(e.value)


def test_lstm_policies_are_unchanged():
    """Same parameter names, shapes and values for the same seed as before core=cortex existed."""
    torch.manual_seed(0)
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3))
    assert [(k, tuple(v.shape)) for k, v in p.state_dict().items()] == [
        ("encoder.1.0.weight", (128, 4)), ("encoder.1.0.bias", (128,)),
        ("core.lstm.weight_ih_l0", (512, 128)), ("core.lstm.weight_hh_l0", (512, 128)), ("core.lstm.bias_ih_l0", (512,)), ("core.lstm.bias_hh_l0", (512,)),
        ("actor.0.weight", (3, 128)), ("actor.0.bias", (3,)), ("critic.0.weight", (1, 128)), ("critic.0.bias", (1,)),
    ]
    assert p.config.core == "lstm" and p.config.core_hidden == 128 and p.config.pattern is None and p.config.d_hidden is None
    assert float(p.core.lstm.bias_ih_l0.detach().abs().sum()) == 0.0  # mlp_lstm keeps PufferLib's zero LSTM bias


@pytest.mark.parametrize("pattern", ["A,S", "M^X,C", "AgSA"])
def test_checkpoint_round_trip_rebuilds_the_cortex_policy(tmp_path, pattern):
    """load builds on the meta device then loads the file: every cell must be rebuilt from
    its parameters and config alone (a non-persistent buffer made in __init__ would be garbage)."""
    torch.manual_seed(0)
    p = build_policy(cortex_cfg("mlp_lstm", pattern=pattern, cortex_overrides={"RouterConfig": {"temperature": 0.5}}))
    opt = torch.optim.Adam(p.parameters(), lr=1e-3)
    logits, values, _ = p(_obs(p.config, 2, 5))
    (logits.square().mean() + values.square().mean()).backward()
    opt.step()
    path = save(tmp_path / "c.safetensors", p, env_spec={"name": "x"}, progress={"epoch": 1, "agent_step": 10, "wall_time": 1.0}, run="r", seed=1, optimizer=opt)
    m = read_manifest(path).as_dict()
    assert m["policy_config"]["core"] == "cortex" and m["policy_config"]["cortex_overrides"] == {"RouterConfig": {"temperature": 0.5}}
    ck = load(path)
    assert ck.policy.config == p.config and ck.report.level == "FULL"
    a, b = p.state_dict(), ck.policy.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    obs = _obs(p.config, 2, 7, seed=1)
    resets = torch.zeros(2, 7, dtype=torch.bool)
    resets[1, 2] = True
    with torch.no_grad():
        torch.testing.assert_close(ck.policy(obs, None, resets)[0], p(obs, None, resets)[0], atol=0, rtol=0)


def test_rollout_stores_nested_state_and_training_replays_it_exactly():
    """With the stored nested state and in-segment resets, the training forward sees what acting saw."""
    from fiberlab.rl.evaluate import evaluate

    torch.manual_seed(0)
    env = make_vecenv(EnvConfig(name="popgym.RepeatPreviousEasy", num_envs=4), 0)
    policy = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=4, core="cortex", pattern="AgSA", d_hidden=16, num_layers=2, linear=[16]))
    collector = RolloutCollector(env, policy, horizon=30, device=torch.device("cpu"), seed=0)
    collector.collect()
    rollout, _, _, _ = collector.collect()
    assert rollout.starts[:, 1:].any()
    leaves = []
    map_state(rollout.initial_state, leaves.append)
    assert len(leaves) > 2 and sum(float(t.float().abs().sum()) for t in leaves) > 0  # carried, nested
    resets = rollout.training_resets()
    with torch.no_grad():
        logits, values, _ = policy(rollout.obs, rollout.initial_state, resets)
        logits0, _, _ = policy(rollout.obs, None, resets)
    logp = torch.log_softmax(logits, -1).gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
    logp0 = torch.log_softmax(logits0, -1).gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, rollout.logprobs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(values, rollout.values, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logp0, rollout.logprobs, atol=1e-4)  # the stored state matters
    out = evaluate(policy, make_vecenv(EnvConfig(name="popgym.RepeatPreviousEasy", num_envs=2), 1), episodes=2)
    assert out["episodes"] == 2 and np.isfinite(out["mean_return"])
    env.close()


def test_ppo_trains_a_cortex_policy_on_the_demo_task(tmp_path):
    """RepeatPreviousEasy: random scores -0.5. A one-layer Axon stack (PostUp block) learns in 40k steps.

    Measured (seed 3, 1 thread): logged returns -0.48 ... 0.81, 0.84, 0.87, 0.88 at 40k steps, ~25 s.
    """
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.logging import read_metrics
    from fiberlab.rl.trainer import Trainer

    over = [f"train_dir={tmp_path}", "run=c", "progress=none", "tensorboard=false", "seed=3", "trainer.total_timesteps=40000", "trainer.checkpoint_interval=100000",
            "policy.core=cortex", "policy.pattern=A", "policy.num_layers=1", "policy.d_hidden=64"]
    Trainer(apply_overrides(get_recipe("demo"), over)).train()
    rows = read_metrics(tmp_path / "c")
    assert all(np.isfinite(r["policy_loss"]) and np.isfinite(r["value_loss"]) for r in rows)
    returns = [r["episode_return"] for r in rows if r["episode_return"] is not None]
    assert np.mean(returns[:2]) < -0.3  # starts at chance
    assert np.mean(returns[-3:]) > 0.3, returns  # and learns to recall


def test_fibration_refuses_a_cortex_policy_with_one_line():
    from fiberlab.fibration import find_fibers

    p = build_policy(cortex_cfg("mlp_lstm", pattern="A", num_layers=1))
    with pytest.raises(ValueError, match="^fibration supports core=lstm; got core=cortex$"):
        find_fibers(p)


def test_bf16_autocast_runs_the_stack_in_float32():
    """The trainer's bf16 path: encoder and heads under autocast, the stack in float32 (Axon's complex
    traces have no bf16 kernels, and exponential gates need the range)."""
    torch.manual_seed(0)
    cfg = cortex_cfg("mlp_lstm", pattern=["AgSA", "L"])
    policy = build_policy(cfg)
    obs = _obs(cfg, 3, 5)
    with torch.no_grad():
        ref_logits, ref_values, _ = policy(obs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, values, state = policy(obs)
    leaves = []
    map_state(state, lambda t: leaves.append(t) or t)
    assert leaves and all(t.dtype == torch.float32 for t in leaves)
    assert torch.isfinite(logits.float()).all() and torch.isfinite(values.float()).all()
    torch.testing.assert_close(logits.float(), ref_logits, atol=0.05, rtol=0.05)  # only the bf16 encoder/heads differ
