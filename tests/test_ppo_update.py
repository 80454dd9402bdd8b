"""``ppo_update`` against numbers worked out by hand from the PPO formulas on a 4-step batch.

The "policy" returns fixed logits (both actions equally likely, so log pi = log 0.5 and the entropy
is log 2) and fixed values; the rollout's old log-probabilities are chosen so that the ratios are
r = [1.5, 0.9, 1.0, 0.7]. With clip eps = 0.2, advantages A = [1, -1, 2, 0.5] (not normalised):

    pg terms max(-A r, -A clip(r)):  1.5 -> max(-1.5, -1.2) = -1.2   (clipped: no gradient)
                                     0.9 -> 0.9, 1.0 -> -2.0, 0.7 -> max(-0.35, -0.4) = -0.35
    policy_loss = (-1.2 + 0.9 - 2.0 - 0.35) / 4 = -0.6625
    clipfrac    = |r - 1| > 0.2 for 1.5 and 0.7 -> 0.5
    approx_kl   = mean((r - 1) - log r) = (0.094535 + 0.005361 + 0 + 0.056675) / 4 = 0.039143
    V = [0.5, 0, 1, -0.5], V_old = [0, 0, 0.5, 0], R = [1, 0.5, 0, -1]:
    value terms max((V - R)^2, (V_old + clip(V - V_old) - R)^2) = [0.64, 0.25, 1.0, 0.64]
    value_loss  = 0.5 * 2.53 / 4 = 0.31625
    explained_variance = 1 - var(R - V_old) / var(R) = 1 - (2.5/3) / (2.1875/3) = -0.142857
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fiberlab.config import TrainerConfig
from fiberlab.rl.ppo import ppo_update
from fiberlab.rl.rollout import Rollout

RATIOS = [1.5, 0.9, 1.0, 0.7]
ADV = [1.0, -1.0, 2.0, 0.5]
NEW_V = [0.5, 0.0, 1.0, -0.5]
OLD_V = [0.0, 0.0, 0.5, 0.0]
RET = [1.0, 0.5, 0.0, -1.0]


class FixedPolicy(nn.Module):
    """Logits and values as parameters, one row per segment; the segment id rides in the obs."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2, 2, 2))  # [segments, steps, actions]
        self.values = nn.Parameter(torch.tensor(NEW_V).view(2, 2))

    def forward(self, obs, state, resets):
        ids = obs[:, 0, 0].long()
        return self.logits[ids], self.values[ids], None


def _batch():
    """2 segments x 2 steps (the 4 steps above in row-major order), action 0 taken everywhere."""
    shape = (2, 2)
    rollout = Rollout(
        obs=torch.arange(2.0).view(2, 1, 1).expand(2, 2, 1).clone(),
        actions=torch.zeros(shape, dtype=torch.int64),
        logprobs=(math.log(0.5) - torch.log(torch.tensor(RATIOS))).view(shape),
        values=torch.tensor(OLD_V).view(shape),
        rewards=torch.zeros(shape),
        dones=torch.zeros(shape, dtype=torch.bool),
        starts=torch.zeros(shape, dtype=torch.bool),
        initial_state={},
    )
    return rollout, torch.tensor(ADV).view(shape), torch.tensor(RET).view(shape)


def _update(**cfg):
    torch.manual_seed(0)
    model = FixedPolicy()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing moves: every minibatch sees the same numbers
    tc = TrainerConfig(**{"update_epochs": 1, "minibatch_size": 4, "clip_coef": 0.2, "norm_adv": False, "pass_state": False, "ent_coef": 0.0, **cfg})
    rollout, adv, ret = _batch()
    stats = ppo_update(model, opt, rollout, adv, ret, tc, torch.Generator().manual_seed(0))
    return stats, model


def test_losses_clip_fraction_and_kl_match_the_hand_computation():
    stats, model = _update()
    assert stats.policy_loss == pytest.approx(-0.6625, abs=1e-6)
    assert stats.clipfrac == pytest.approx(0.5)
    assert stats.approx_kl == pytest.approx(0.0391426, abs=1e-6)
    assert stats.value_loss == pytest.approx(0.31625, abs=1e-6)
    assert stats.entropy == pytest.approx(math.log(2), abs=1e-6)
    assert stats.explained_variance == pytest.approx(1 - 2.5 / 2.1875, abs=1e-6)
    assert stats.minibatches == 1
    # the clipped sample (r = 1.5 with A > 0) contributes no policy gradient; the others do
    g = model.logits.grad.view(4, 2)
    assert torch.all(g[0] == 0)
    assert all(bool(g[i].abs().sum() > 0) for i in (1, 2, 3))


def test_unclipped_value_loss_and_normalised_advantages():
    stats, _ = _update(clip_vloss=False)
    assert stats.value_loss == pytest.approx(0.5 * (0.25 + 0.25 + 1.0 + 0.25) / 4, abs=1e-6)
    # normalising A changes the policy loss, not the ratio statistics
    torch.manual_seed(0)
    model = FixedPolicy()
    rollout, adv, ret = _batch()
    tc = TrainerConfig(update_epochs=1, minibatch_size=4, clip_coef=0.2, norm_adv=True, pass_state=False)
    normed = ppo_update(model, torch.optim.SGD(model.parameters(), lr=0.0), rollout, adv, ret, tc, torch.Generator().manual_seed(0))
    a = (torch.tensor(ADV) - torch.tensor(ADV).mean()) / (torch.tensor(ADV).std() + 1e-8)
    r = torch.tensor(RATIOS)
    expected = torch.max(-a * r, -a * r.clamp(0.8, 1.2)).mean().item()
    assert normed.policy_loss == pytest.approx(expected, abs=1e-6) and normed.policy_loss != pytest.approx(-0.6625)
    assert normed.clipfrac == pytest.approx(0.5) and normed.approx_kl == pytest.approx(0.0391426, abs=1e-6)


def test_target_kl_stops_the_update_before_the_step_that_exceeds_it():
    stats, model = _update(target_kl=0.01, update_epochs=3)  # approx_kl 0.039 > 0.01 at the first minibatch
    assert stats.minibatches == 0 and model.logits.grad is None  # no step taken, nothing back-propagated
    assert stats.approx_kl == pytest.approx(0.0391426, abs=1e-6)  # the measurement that stopped it is reported
    stats, _ = _update(target_kl=0.05, update_epochs=3)  # below the target: all 3 epochs run
    assert stats.minibatches == 3
    stats, _ = _update(update_epochs=3)  # off by default
    assert stats.minibatches == 3


def _textbook_loss(logits, values, actions, old_logp, adv, ret, old_v, clip, ent_coef, vf_coef, clip_vloss):
    """The PPO loss as the module docstring writes it, for autograd to differentiate."""
    logp = torch.log_softmax(logits, -1)
    ratio = (logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - old_logp).exp()
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    if clip_vloss:
        v_clipped = old_v + (values - old_v).clamp(-clip, clip)
        v = 0.5 * torch.max((values - ret) ** 2, (v_clipped - ret) ** 2).mean()
    else:
        v = 0.5 * ((values - ret) ** 2).mean()
    return pg - ent_coef * entropy + vf_coef * v, torch.stack([pg, v, entropy])


def _loss_form(monkeypatch, form: str) -> None:
    """Make PPOLoss use its compiled loop ("loop") or its tensor form ("tensor") on CPU tensors."""
    from fiberlab.cortex.kernels import cpu_loops
    from fiberlab.rl import ppo_loss

    if form == "loop" and not cpu_loops.AVAILABLE:
        pytest.skip("numba is not installed")
    if form == "tensor":
        monkeypatch.setattr(ppo_loss, "use_loop", lambda *tensors: False)


def _random_batch(seed, dtype=torch.float64, b=5, t=7, a=4, v_spread=0.5):
    """Logits, values and the loss's other inputs: ratios ~e^{+-0.6}, advantages of both signs."""
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(b, t, a, generator=g, dtype=dtype)).requires_grad_()
    values = torch.randn(b, t, generator=g, dtype=dtype).requires_grad_()
    actions = torch.randint(0, a, (b, t), generator=g)
    with torch.no_grad():
        logp_taken = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    old_logp = logp_taken - 0.6 * torch.randn(b, t, generator=g, dtype=dtype)
    adv = torch.randn(b, t, generator=g, dtype=dtype) + 0.3
    ret = torch.randn(b, t, generator=g, dtype=dtype)
    old_v = values.detach() + v_spread * torch.randn(b, t, generator=g, dtype=dtype)
    return logits, values, actions, old_logp, adv, ret, old_v


@pytest.mark.parametrize("form", ["loop", "tensor"])
@pytest.mark.parametrize("clip_vloss", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hand_written_gradient_equals_autograd_on_the_textbook_loss(clip_vloss, seed, form, monkeypatch):
    """PPOLoss's closed-form gradient against autograd in float64, in both of its forms: ratios
    spread far outside the clip range on both sides, advantages of both signs, values inside and
    outside their clip."""
    from fiberlab.rl.ppo_loss import PPOLoss

    _loss_form(monkeypatch, form)
    logits, values, actions, old_logp, adv, ret, old_v = _random_batch(seed)
    args = (actions, old_logp, adv, ret, old_v, 0.2, 0.05, 0.7, clip_vloss)
    with torch.no_grad():
        logp_taken = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    ratio = (logp_taken - old_logp).exp()
    assert bool(((ratio - 1).abs() > 0.2).any()) and bool(((ratio - 1).abs() < 0.2).any())

    want, want_stats = _textbook_loss(logits, values, *args)
    want_dz, want_dv = torch.autograd.grad(want, (logits, values))
    got, got_stats = PPOLoss.apply(logits, values, *args)
    got_dz, got_dv = torch.autograd.grad(3.0 * got, (logits, values))  # the upstream gradient scales it
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_stats[:3], want_stats.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_dz, 3.0 * want_dz, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_dv, 3.0 * want_dv, rtol=1e-10, atol=1e-12)
    assert float(got_stats[4]) == pytest.approx(float(((ratio - 1).abs() > 0.2).double().mean()))
    assert float(got_stats[3]) == pytest.approx(float(((ratio - 1) - ratio.log()).mean()))


@pytest.mark.parametrize("form", ["loop", "tensor"])
def test_normalised_advantages_inside_the_loss_equal_the_textbook_on_normalised_advantages(form, monkeypatch):
    from fiberlab.rl.ppo_loss import PPOLoss

    _loss_form(monkeypatch, form)
    logits, values, actions, old_logp, adv, ret, old_v = _random_batch(3)
    normed = (adv - adv.mean()) / (adv.std() + 1e-8)
    want, _ = _textbook_loss(logits, values, actions, old_logp, normed, ret, old_v, 0.2, 0.05, 0.7, True)
    want_dz = torch.autograd.grad(want, logits)[0]
    got, _ = PPOLoss.apply(logits, values, actions, old_logp, adv, ret, old_v, 0.2, 0.05, 0.7, True, True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, logits)[0], want_dz, rtol=1e-10, atol=1e-12)
    unnormed, _ = PPOLoss.apply(logits, values, actions, old_logp, adv, ret, old_v, 0.2, 0.05, 0.7, True, False)
    assert abs(float(unnormed.detach()) - float(got.detach())) > 1e-3  # the flag changes the loss


@pytest.mark.parametrize("form", ["loop", "tensor"])
def test_value_gradient_follows_autograd_where_rounding_makes_the_unclipped_value_term_larger(form, monkeypatch):
    """Inside the value clip the two value terms are equal up to float32 rounding; whichever is
    larger, the gradient is (V - R), as autograd's (the clamp passes it). Choosing 0 there, as the
    first hand-written version did, lost ~1 sample's value gradient in 256."""
    from fiberlab.rl.ppo_loss import PPOLoss

    _loss_form(monkeypatch, form)
    logits, values, actions, old_logp, adv, ret, old_v = _random_batch(4, torch.float32, b=32, t=32, v_spread=0.05)
    inside = (values.detach() - old_v).abs() <= 0.2
    assert inside.float().mean() > 0.9
    want, _ = _textbook_loss(logits, values, actions, old_logp, adv, ret, old_v, 0.2, 0.05, 0.7, True)
    want_dv = torch.autograd.grad(want, values)[0]
    got, _ = PPOLoss.apply(logits, values, actions, old_logp, adv, ret, old_v, 0.2, 0.05, 0.7, True)
    got_dv = torch.autograd.grad(got, values)[0]
    assert bool((want_dv[inside] != 0).all())  # every sample inside the clip carries a value gradient
    torch.testing.assert_close(got_dv, want_dv, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loop_and_tensor_forms_agree(dtype, monkeypatch):
    """The compiled loop (float64 inside) and the tensor form (the input's precision) on one batch."""
    from fiberlab.cortex.kernels import cpu_loops
    from fiberlab.rl import ppo_loss

    if not cpu_loops.AVAILABLE:
        pytest.skip("numba is not installed")
    batch = _random_batch(5, dtype, b=16, t=16)
    results = []
    for use in (True, False):
        monkeypatch.setattr(ppo_loss, "use_loop", lambda *tensors, use=use: use)
        loss, stats = ppo_loss.PPOLoss.apply(*batch[:2], *batch[2:], 0.2, 0.01, 0.5, True, True)
        results.append((loss.detach(), stats, *torch.autograd.grad(loss, batch[:2])))
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for got, want in zip(*results):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_nan_logits_or_values_make_the_loss_nan_in_the_loop(monkeypatch):
    """The trainer stops on a NaN loss (TrainingDiverged): the loop must not swallow a NaN in a max."""
    from fiberlab.rl.ppo_loss import PPOLoss

    _loss_form(monkeypatch, "loop")
    for which in (0, 1):
        logits, values, actions, old_logp, adv, ret, old_v = (x.detach() if torch.is_tensor(x) else x for x in _random_batch(6))
        (logits, values)[which].view(-1)[3] = torch.nan
        for clip_vloss in (True, False):
            loss, _ = PPOLoss.apply(logits, values, actions, old_logp, adv, ret, old_v, 0.2, 0.05, 0.7, clip_vloss)
            assert math.isnan(float(loss))


def test_large_minibatches_use_the_tensor_form():
    """Past LOOP_MAX_LOGITS the vectorised tensor form is faster than the one-thread loop."""
    from fiberlab.cortex.kernels import cpu_loops
    from fiberlab.rl.ppo_loss import LOOP_MAX_LOGITS, use_loop

    small, values = torch.zeros(LOOP_MAX_LOGITS // 4, 4), torch.zeros(LOOP_MAX_LOGITS // 4)
    assert use_loop(small, values) == cpu_loops.AVAILABLE
    assert not use_loop(torch.zeros(LOOP_MAX_LOGITS // 4 + 1, 4), torch.zeros(LOOP_MAX_LOGITS // 4 + 1))
    assert not use_loop(small.half(), values.half()) and not use_loop(small, values.double())
