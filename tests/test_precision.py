"""trainer.precision: what ``auto`` resolves to, and what bf16 autocast does to the PPO ratio.

The update may run under bf16 autocast while acting runs in float32, so the log-probabilities the
update computes for the rollout's own actions differ from the stored ones by bf16 rounding alone.
PPO reads that difference as a policy change (the ratio), so it must stay far inside the clip range
on the update's first minibatch, where the weights are still the ones that acted.
"""
import pytest
import torch

from fiberlab import devices
from fiberlab.config import PolicyConfig, TrainerConfig
from fiberlab.devices import resolve_precision
from fiberlab.policies import build_policy
from fiberlab.rl.precision import run_precision


@pytest.mark.parametrize("native, pays, expected", [(True, True, "bf16"), (False, True, "fp32"), (True, False, "fp32"), (False, False, "fp32")])
def test_auto_precision_needs_native_bf16_and_an_architecture_that_gains(monkeypatch, native, pays, expected):
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    assert resolve_precision("auto", torch.device("cpu"), pays) == expected
    for given in ("fp32", "bf16"):  # an explicit setting is taken as given
        assert resolve_precision(given, torch.device("cpu"), pays) == given


def test_auto_precision_per_architecture(monkeypatch):
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    cpu = torch.device("cpu")
    fast = build_policy(PolicyConfig(name="fast", obs_shape=[3, 11, 11], num_actions=5))
    mlp = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3))
    assert run_precision("auto", fast, cpu) == "bf16"
    assert run_precision("auto", mlp, cpu) == "fp32"  # its LSTM, which stays fp32, is nearly all of it
    assert run_precision("auto", torch.nn.Linear(2, 2), cpu) == "fp32"  # no architecture record: fp32
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    assert run_precision("auto", fast, cpu) == "fp32"


def test_default_precision_is_auto():
    assert TrainerConfig().precision == "auto"


def _confident_fast_policy() -> torch.nn.Module:
    """A ``fast`` policy whose logits and values are as large as a trained one's (a fresh actor's
    0.01 gain gives logits near 0, where any rounding looks harmless)."""
    torch.manual_seed(0)
    policy = build_policy(PolicyConfig(name="fast", obs_shape=[6, 11, 11], num_actions=9, obs_scale=[4.0] * 6))
    with torch.no_grad():
        policy.actor[-1].weight.mul_(3000.0)  # logits spread over several units
        policy.critic[-1].weight.mul_(5.0)
    return policy


def _acting_and_update_logprobs(policy, precision: str, acting: str = "fp32") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Act T steps in float32 (as the rollout does), then run the update's sequence forward pass
    under ``precision``; return (acting log-probs, update log-probs, acting values, update values)."""
    n, t = 24, 8
    gen = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 5, (n, t, 6, 11, 11), generator=gen, dtype=torch.uint8)
    starts = torch.zeros(n, t, dtype=torch.bool)
    starts[:, 0] = True
    starts[::5, 4] = True  # some episodes start inside the segment
    logps, values = [], []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=acting == "bf16"):
        state = policy.init_state(n)
        for k in range(t):
            logits, value, state = policy.step(obs[:, k], state, resets=starts[:, k])
            logps.append(torch.log_softmax(logits, -1))
            values.append(value)
    act_logp, act_v = torch.stack(logps, 1), torch.stack(values, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits, new_v, _ = policy(obs, None, starts)
    assert logits.dtype == torch.float32 and new_v.dtype == torch.float32  # the output layers ran in float32
    return act_logp, torch.log_softmax(logits.detach(), -1), act_v, new_v.detach()


def test_bf16_acting_and_update_keep_first_minibatch_ratio_at_one():
    policy = _confident_fast_policy()
    act_logp, upd_logp, act_v, upd_v = _acting_and_update_logprobs(policy, "bf16", acting="bf16")
    assert act_logp.exp().max() > 0.5  # the policy is confident: the test is not about tiny logits
    dev = ((upd_logp - act_logp).exp() - 1).abs()
    # same precision on both sides: 0 on an AVX512-BF16 CPU; the bound leaves room for a bf16
    # product that rounds differently at the rollout's and the update's batch sizes elsewhere
    assert dev.max() < 5e-3, dev.max()
    assert (upd_v - act_v).abs().max() < 5e-3
    # why both sides must match: acting in float32 against a bf16 update moves the ratio by
    # rounding alone (and this shows bf16 really ran in the update)
    _, upd_mixed, _, _ = _acting_and_update_logprobs(policy, "bf16", acting="fp32")
    act32, upd32, _, _ = _acting_and_update_logprobs(policy, "fp32")
    mixed = ((upd_mixed - act32).exp() - 1).abs()
    assert mixed.mean() > 0.005 and mixed.max() > 0.05 and mixed.max() > 10 * dev.max()
    assert ((upd32 - act32).exp() - 1).abs().max() < 1e-4


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_rollout_acts_in_the_precision_the_update_uses(tmp_path, precision):
    """The trainer's own pieces: a RolloutCollector with ``precision`` and ppo_update's forward pass
    (the same resolution) see the same log-probabilities on the first minibatch."""
    from fiberlab.config import apply_overrides
    from fiberlab.envs import make_vecenv
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.precision import autocast
    from fiberlab.rl.rollout import RolloutCollector

    cfg = apply_overrides(get_recipe("arena"), ["env.num_envs=1", "env.mettagrid.max_steps=6"])
    env = make_vecenv(cfg.env, 0)
    try:
        s = env.spec
        torch.manual_seed(0)
        policy = build_policy(PolicyConfig(name="fast", obs_shape=list(s.obs_shape), num_actions=s.num_actions, obs_scale=list(s.obs_scale)))
        with torch.no_grad():
            policy.actor[-1].weight.mul_(1000.0)
        collector = RolloutCollector(env, policy, 8, torch.device("cpu"), seed=0, precision=precision)
        assert collector.precision == precision
        buf, _, _, _ = collector.collect()
    finally:
        env.close()
    assert buf.starts[:, 1:].any()  # episodes of 6 steps: resets inside the segment are replayed
    with torch.no_grad(), autocast(run_precision(precision, policy, torch.device("cpu")), torch.device("cpu")):
        logits, _, _ = policy(buf.obs, buf.initial_state, buf.training_resets())
    logp = torch.log_softmax(logits, -1).gather(-1, buf.actions.unsqueeze(-1)).squeeze(-1)
    assert ((logp - buf.logprobs).exp() - 1).abs().max() < 5e-3


def test_bf16_core_state_stays_float32():
    """Under autocast the memory core runs in float32: its returned state is float32."""
    policy = _confident_fast_policy()
    obs = torch.randint(0, 5, (4, 3, 6, 11, 11), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, state = policy(obs, None, None)
    assert all(v.dtype == torch.float32 for v in state.values())
