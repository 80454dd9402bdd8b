"""sample_actions: draws from softmax(logits) with the right log-probabilities, in both forms."""
from __future__ import annotations

import math

import pytest
import torch

from fiberlab.rl import sampling


@pytest.fixture(params=["loop", "tensor"])
def form(request, monkeypatch):
    from fiberlab.cortex.kernels import cpu_loops

    if request.param == "loop" and not cpu_loops.AVAILABLE:
        pytest.skip("numba is not installed")
    if request.param == "tensor":
        monkeypatch.setattr(sampling, "runs_here", lambda t: False)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frequencies_match_the_softmax_and_impossible_actions_are_never_drawn(form, dtype):
    probs = torch.tensor([0.1, 0.2, 0.7, 0.0], dtype=dtype)
    n = 40_000
    logits = (probs.log() + 3.0).expand(n, 4).contiguous()  # a shift changes nothing; log 0 = -inf
    actions, logp = sampling.sample_actions(logits, torch.Generator().manual_seed(0))
    assert actions.dtype == torch.int64 and actions.shape == (n,) and logp.dtype == dtype
    freq = torch.bincount(actions, minlength=4).double() / n
    sigma = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert bool(((freq - probs.double()).abs() <= 5 * sigma + 1e-12).all()), freq
    assert freq[3] == 0
    torch.testing.assert_close(logp, probs.log()[actions], rtol=0, atol=1e-6)


def test_log_probabilities_equal_log_softmax_and_outputs_are_written_into_strided_columns(form):
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(64, 9, generator=g)
    actions_buf = torch.full((64, 5), -1, dtype=torch.int64)
    logp_buf = torch.zeros(64, 5)
    actions, logp = sampling.sample_actions(logits, torch.Generator().manual_seed(2), actions_buf[:, 2], logp_buf[:, 2])
    want = torch.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
    torch.testing.assert_close(logp, want, rtol=0, atol=1e-6)
    assert torch.equal(actions_buf[:, 2], actions) and torch.equal(logp_buf[:, 2], logp)
    assert bool((actions_buf[:, [0, 1, 3, 4]] == -1).all()) and not logp_buf[:, [0, 1, 3, 4]].any()


def test_the_generator_makes_draws_repeatable(form):
    logits = torch.zeros(256, 6)
    a1, _ = sampling.sample_actions(logits, torch.Generator().manual_seed(7))
    a2, _ = sampling.sample_actions(logits, torch.Generator().manual_seed(7))
    a3, _ = sampling.sample_actions(logits, torch.Generator().manual_seed(8))
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert set(a1.tolist()) == set(range(6))


def test_a_nearly_deterministic_row_gives_its_action_and_a_log_probability_near_zero(form):
    logits = torch.tensor([[0.0, 60.0, -30.0]] * 100)
    actions, logp = sampling.sample_actions(logits, torch.Generator().manual_seed(3))
    assert bool((actions == 1).all()) and float(logp.abs().max()) < 1e-12
    assert math.isfinite(float(logp.sum()))
