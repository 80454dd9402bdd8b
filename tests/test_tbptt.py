"""Strict truncated BPTT and Axon eligibility traces (docs/training.md, "Truncated BPTT").

The property that matters: on a segment split, the traces give the RTU's own parameters (nu_log,
theta_log, w1, w2) exactly the full-BPTT gradient, without them they do not; nothing else changes.
"""
from __future__ import annotations

import pytest
import torch
from conftest import flat_state

from fiberlab.config import (
    ConfigError,
    EnvConfig,
    PolicyConfig,
    TrainerConfig,
    apply_overrides,
)
from fiberlab.cortex.cells import axon as axon_module
from fiberlab.cortex.cells.axon import (
    TRACE_KEYS,
    AxonCell,
    AxonConfig,
    AxonLayer,
    set_eligibility_traces,
)
from fiberlab.envs import make_vecenv
from fiberlab.policies import build_policy
from fiberlab.rl.rollout import RolloutCollector

RTU_PARAMS = ("rtu.nu_log", "rtu.theta_log", "rtu.w1", "rtu.w2")
B, T, H = 3, 12, 6


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3 * T, H, generator=g, dtype=torch.float64)
    resets = torch.zeros(B, 3 * T, dtype=torch.bool)
    resets[1, 5] = resets[2, 2 * T + 3] = True  # an episode boundary inside a segment, in two rows
    w = torch.randn(B, 3 * T, H, generator=g, dtype=torch.float64)  # L = sum(w * y): every step counts
    return x, resets, w


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    return out


def _full_bptt(module, x, resets, w):
    y, _ = module(x, None, resets=resets)
    (w * y).sum().backward()
    return _grads(module)


def _segments(module, x, resets, w, traces: bool, cuts=(T, 2 * T)):
    """Truncated BPTT as the trainer runs it: each segment from the previous one's state, detached."""
    set_eligibility_traces(module, traces)
    try:
        state, lo = module.init_state(B, dtype=torch.float64), 0
        for hi in (*cuts, x.shape[1]):
            y, state = module(x[:, lo:hi], state, resets=resets[:, lo:hi])
            (w[:, lo:hi] * y).sum().backward()
            state, lo = {k: v.detach() for k, v in state.items()}, hi
        return _grads(module)
    finally:
        set_eligibility_traces(module, False)


def _modules():
    torch.manual_seed(0)
    cell = AxonCell(AxonConfig(d_hidden=H, r_min=0.5, r_max=0.99)).double()
    layer = AxonLayer(H, H, r_min=0.5, r_max=0.99).double()  # the "^" stand-in for a Linear
    return {"AxonCell": cell, "AxonLayer": layer}


@pytest.mark.parametrize("kernel", ["cpu_loop", "chunked_scan"])
@pytest.mark.parametrize("name", ["AxonCell", "AxonLayer"])
def test_traces_give_full_bptt_gradients_for_the_rtu_parameters(name, kernel, monkeypatch):
    if kernel == "chunked_scan":  # the GPU path (kernels.rtu_scan), run here on the CPU
        monkeypatch.setattr(axon_module, "rtu_loop_available", False)
    elif not axon_module.rtu_loop_available:
        pytest.skip("numba is not installed: the compiled CPU loop is not used")
    module = _modules()[name]
    x, resets, w = _data()
    full = _full_bptt(module, x, resets, w)
    with_traces = _segments(module, x, resets, w, traces=True)
    without = _segments(module, x, resets, w, traces=False)
    for p in RTU_PARAMS:
        torch.testing.assert_close(with_traces[p], full[p], rtol=1e-9, atol=1e-10)
        assert (without[p] - full[p]).abs().max() > 1e-3 * full[p].abs().max(), p
    if name == "AxonCell":  # the input projection feeds the RTU: it stays truncated either way
        assert (with_traces["input_proj.weight"] - full["input_proj.weight"]).abs().max() > 1e-6
        torch.testing.assert_close(with_traces["input_proj.weight"], without["input_proj.weight"])


def test_traces_change_no_value_and_no_other_gradient():
    """Switching traces on changes the RTU parameters' gradients and nothing else: the outputs,
    the carried state and every other parameter's gradient stay bit-for-bit the same."""
    cell = _modules()["AxonCell"]
    x, resets, w = _data(1)
    on = _segments(cell, x, resets, w, traces=True)
    off = _segments(cell, x, resets, w, traces=False)
    for n in on:
        if n not in RTU_PARAMS:
            assert torch.equal(on[n], off[n]), n
    set_eligibility_traces(cell, True)
    state = {k: torch.randn(B, H, dtype=torch.float64) for k in ("c1", "c2", *TRACE_KEYS)}
    y_on, s_on = cell(x, state, resets=resets)
    set_eligibility_traces(cell, False)
    y_off, s_off = cell(x, {k: state[k] for k in ("c1", "c2")}, resets=resets)
    assert torch.equal(y_on, y_off)
    assert torch.equal(s_on["c1"], s_off["c1"]) and torch.equal(s_on["c2"], s_off["c2"])
    assert set(s_on) == {"c1", "c2", *TRACE_KEYS} and set(s_off) == {"c1", "c2"}


def test_step_mode_carries_the_same_traces_as_sequence_mode():
    """Acting (one step at a time) and training (whole sequences) must hand on the same traces, or
    the stored rollout state would inject the wrong gradient."""
    cell = _modules()["AxonCell"]
    set_eligibility_traces(cell, True)
    x, resets, _ = _data(2)
    with torch.no_grad():
        _, seq = cell(x, cell.init_state(B, dtype=torch.float64), resets=resets)
        state = cell.init_state(B, dtype=torch.float64)
        for t in range(x.shape[1]):
            _, state = cell(x[:, t], state, resets=resets[:, t])
    for k in ("c1", "c2", *TRACE_KEYS):
        torch.testing.assert_close(state[k], seq[k], rtol=1e-9, atol=1e-10)
    assert seq["e_lam1"].abs().sum() > 0 and seq["e_beta2"].abs().sum() > 0


def test_a_reset_clears_the_traces():
    cell = _modules()["AxonCell"]
    set_eligibility_traces(cell, True)
    x, _, _ = _data(3)
    resets = torch.zeros(B, 3 * T, dtype=torch.bool)
    resets[:, 0] = True
    noisy = {k: torch.randn(B, H, dtype=torch.float64) for k in ("c1", "c2", *TRACE_KEYS)}
    with torch.no_grad():
        _, a = cell(x, noisy, resets=resets)
        _, b = cell(x, cell.init_state(B, dtype=torch.float64), resets=resets)
    for k in b:
        torch.testing.assert_close(a[k], b[k])


def _cortex_policy(pattern: str):
    torch.manual_seed(0)
    return build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=4, core="cortex", pattern=pattern, d_hidden=8, num_layers=1))


def test_rollout_stores_traces_and_training_uses_them():
    """Through the trainer's own path: the rollout stores the traces with the segment state; the
    training forward with them has the same loss, and differs in gradient only for RTU parameters."""
    policy = _cortex_policy("A")
    assert set_eligibility_traces(policy, True) == 1
    env = make_vecenv(EnvConfig(name="popgym.RepeatPreviousEasy", num_envs=4), 0)
    collector = RolloutCollector(env, policy, horizon=8, device=torch.device("cpu"), seed=0)
    collector.collect()
    rollout, _, _, _ = collector.collect()
    stored = [v for k, v in flat_state(rollout.initial_state).items() if k.rsplit(".", 1)[-1] in TRACE_KEYS]
    assert len(stored) == 4 and all(v.abs().sum() > 0 for v in stored)

    def loss_and_grads(traces: bool):
        set_eligibility_traces(policy, traces)
        logits, values, _ = policy(rollout.obs, rollout.initial_state, rollout.training_resets())
        loss = torch.log_softmax(logits, -1).gather(-1, rollout.actions.unsqueeze(-1)).sum() + values.sum()
        loss.backward()
        return loss.detach(), _grads(policy)

    loss_on, on = loss_and_grads(True)
    loss_off, off = loss_and_grads(False)
    assert torch.equal(loss_on, loss_off)
    rtu = [n for n in on if n.rsplit(".", 2)[-2:][0] == "rtu"]
    assert rtu and all(not torch.allclose(on[n], off[n]) for n in rtu), rtu
    assert all(torch.equal(on[n], off[n]) for n in on if n not in rtu)


def test_strict_tbptt_is_the_documented_combination_and_refuses_contradictions():
    strict = TrainerConfig(strict_tbptt=True)
    assert (strict.pass_state, strict.reset_in_training, strict.axon_traces) == (True, True, False)
    for bad, word in (({"axon_traces": True}, "axon_traces=true"), ({"pass_state": False}, "pass_state=false"),
                      ({"reset_in_training": False}, "reset_in_training=false")):
        with pytest.raises(ValueError, match=word):
            TrainerConfig(strict_tbptt=True, **bad)


def test_strict_tbptt_contradiction_is_one_line_through_overrides():
    from fiberlab.recipes import get_recipe

    with pytest.raises(ConfigError) as e:
        apply_overrides(get_recipe("demo"), ["trainer.strict_tbptt=true", "trainer.axon_traces=true"])
    msg = str(e.value)
    assert "\n" not in msg and "strict_tbptt=true contradicts axon_traces=true" in msg


def test_trainer_switches_traces_on_in_the_policy(tmp_path, capsys):
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.trainer import Trainer

    over = [f"train_dir={tmp_path}", "run=t", "progress=none", "tensorboard=false", "trainer.total_timesteps=512",
            "policy.core=cortex", "policy.pattern=S^", "policy.d_hidden=8", "policy.num_layers=1", "trainer.axon_traces=true"]
    result = Trainer(apply_overrides(get_recipe("demo"), over)).train()
    rtus = [m for m in result.policy.modules() if isinstance(m, axon_module.DiagonalRTU)]
    assert rtus and all(m.eligibility_traces for m in rtus)
    # a policy without Axon units: a note, not an error (a sweep may cross traces with any pattern)
    over_lstm = [o.replace("S^", "L") for o in over if not o.startswith("run=")] + ["run=l"]
    Trainer(apply_overrides(get_recipe("demo"), over_lstm)).train()
    assert "trainer.axon_traces=true has no effect" in capsys.readouterr().out


class _Spy(torch.nn.Module):
    """Records the state and resets each PPO minibatch hands the policy; fixed outputs otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[tuple] = []

    def forward(self, obs, state, resets):
        self.calls.append((state, resets.clone()))
        n, t = obs.shape[:2]
        return torch.zeros(n, t, 2) + self.bias, torch.zeros(n, t) + self.bias, None


@pytest.mark.parametrize("switch", ["defaults", "pass_state=false", "reset_in_training=false", "strict_tbptt=true"])
def test_each_tbptt_switch_changes_what_it_says_and_nothing_else(switch):
    """What the PPO update hands the policy per segment: the stored state or None, and the rollout's
    resets or only their first column. Every other input is the same under every switch."""
    from fiberlab.rl.ppo import ppo_update
    from fiberlab.rl.rollout import Rollout

    n, t = 4, 5
    starts = torch.zeros(n, t, dtype=torch.bool)
    starts[0, 0] = starts[1, 2] = starts[2, 0] = starts[2, 3] = True
    stored = {"h": torch.arange(n, dtype=torch.float32).unsqueeze(1).expand(n, 3).clone()}
    rollout = Rollout(obs=torch.zeros(n, t, 1), actions=torch.zeros(n, t, dtype=torch.int64), logprobs=torch.full((n, t), -0.6931),
                      values=torch.zeros(n, t), rewards=torch.zeros(n, t), dones=torch.zeros(n, t, dtype=torch.bool),
                      starts=starts, initial_state=stored)
    fields = {} if switch == "defaults" else {switch.split("=")[0]: switch.endswith("true")}
    tc = TrainerConfig(update_epochs=1, minibatch_size=n * t, **fields)
    spy = _Spy()
    ppo_update(spy, torch.optim.SGD(spy.parameters(), lr=0.0), rollout, torch.zeros(n, t), torch.zeros(n, t), tc, torch.Generator().manual_seed(0))
    (state, resets), = spy.calls
    order = torch.as_tensor([int(i) for i in torch.randperm(n, generator=torch.Generator().manual_seed(0))])
    if switch == "pass_state=false":
        assert state is None
    else:
        torch.testing.assert_close(state["h"], stored["h"][order])
    want = starts[order].clone()
    if switch == "reset_in_training=false":
        want[:, 1:] = False  # only the segment's first-step resets, so a stored state is still cleared
    assert torch.equal(resets, want)
