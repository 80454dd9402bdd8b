"""Exactness of collapse on planted symmetries, in every layer type (fibration spec section 3)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fiberlab.config import PolicyConfig
from fiberlab.fibration import collapse, find_fibers
from fiberlab.fibration.partition import canonical
from fiberlab.policies import build_policy
from planted import lift

ZERO = dict(linear=0.0, cnn=0.0, lstm=0.0, critic=0.0)
BASES = {
    "mlp_lstm": PolicyConfig(name="mlp_lstm", obs_shape=[6], num_actions=4, linear=[5, 4], core_hidden=3, actor_hidden=[4], critic_hidden=[3]),
    "fast": PolicyConfig(name="fast", obs_shape=[5, 11, 11], num_actions=5, conv_channels=[4, 3], linear=[5, 4], core_hidden=3, actor_hidden=[4], critic_hidden=[3]),
    "atari": PolicyConfig(name="atari", obs_shape=[1, 36, 36], num_actions=6, conv_channels=[3, 4, 3], linear=[5], core_hidden=4),
}


def _random_base(cfg):
    """Registry init zeroes most biases; with few inputs that makes rows proportional, which cosine
    distance cannot tell apart (spec section 8.1). Random biases keep base units distinct."""
    p = build_policy(cfg)
    with torch.no_grad():
        for name, param in p.named_parameters():
            if "bias" in name:
                param.normal_(0.0, 0.5)
    return p


def _rollout(policy, obs, resets):
    with torch.no_grad():
        logits, values, state = policy(obs, None, resets)
    return logits.double(), values.double(), state


def _sequence(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (3, 9, *cfg.obs_shape), generator=g).float() if len(cfg.obs_shape) == 3 else torch.randn(3, 9, *cfg.obs_shape, generator=g)
    resets = torch.zeros(3, 9, dtype=torch.bool)
    resets[0, 4] = resets[2, 6] = True
    return obs, resets


@pytest.mark.parametrize("arch", list(BASES))
def test_planted_symmetries_collapse_exactly(arch):
    torch.manual_seed(1)
    base = _random_base(BASES[arch])
    big, planted = lift(base, seed=2)
    fibers = find_fibers(big, ZERO)
    for name, a in planted.items():  # exactly the planted groups, in every layer type
        assert np.array_equal(fibers.labels[name], canonical(a)), name
    small = collapse(big, fibers)
    assert small.config.core_hidden == base.config.core_hidden
    obs, resets = _sequence(BASES[arch])
    lb, vb, sb = _rollout(big, obs, resets)
    ls, vs, ss = _rollout(small, obs, resets)
    torch.testing.assert_close(ls, lb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vs, vb, atol=1e-5, rtol=1e-5)
    # recurrent outputs: each big hidden unit equals its fiber's unit in the small network
    h_fiber = torch.from_numpy(fibers.labels["core"])
    torch.testing.assert_close(ss["h"][:, h_fiber].double(), sb["h"].double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ss["c"][:, h_fiber].double(), sb["c"].double(), atol=1e-5, rtol=1e-5)
    # and the collapsed network is the base network again
    lbase, vbase, _ = _rollout(base, obs, resets)
    torch.testing.assert_close(ls, lbase, atol=1e-5, rtol=1e-5)


def test_threshold_zero_merges_only_exact_duplicates():
    torch.manual_seed(0)
    p = _random_base(BASES["fast"])
    f = find_fibers(p, ZERO)
    assert all(int(v.max()) + 1 == len(v) for v in f.labels.values())  # random weights: nothing merges
    big, planted = lift(p, seed=5)
    f = find_fibers(big, ZERO)
    assert all(int(f.labels[n].max()) + 1 == int(a.max()) + 1 for n, a in planted.items())


def test_threshold_two_gives_one_fiber_per_hidden_layer():
    p = build_policy(BASES["mlp_lstm"])
    f = find_fibers(p, dict(linear=2, cnn=2, lstm=2, critic=2))
    assert all(int(f.labels[n].max()) == 0 for n in ("linear0", "linear1", "core", "actor0", "critic0"))
    assert len(f.labels["actor_out"]) == 4 and int(f.labels["actor_out"].max()) == 3  # outputs kept


def test_bad_thresholds_are_refused():
    from pydantic import ValidationError

    from fiberlab.fibration import Thresholds

    with pytest.raises(ValidationError):
        Thresholds(linear=2.5)
    with pytest.raises(ValidationError):
        Thresholds(cnn=-0.1)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    linear=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    core=st.integers(1, 4),
    actor=st.lists(st.integers(1, 3), max_size=1),
    critic=st.lists(st.integers(1, 3), max_size=1),
    copies=st.integers(1, 3),
)
def test_random_planted_networks_collapse_exactly(seed, linear, core, actor, critic, copies):
    torch.manual_seed(seed)
    base = _random_base(PolicyConfig(name="mlp_lstm", obs_shape=[3], num_actions=3, linear=linear, core_hidden=core, actor_hidden=actor, critic_hidden=critic))
    big, _ = lift(base, seed=seed, max_copies=copies)
    small = collapse(big, find_fibers(big, ZERO))
    obs, resets = _sequence(base.config, seed)
    lb, vb, _ = _rollout(big, obs, resets)
    ls, vs, _ = _rollout(small, obs, resets)
    torch.testing.assert_close(ls, lb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vs, vb, atol=1e-5, rtol=1e-5)


def test_ablation_keeps_original_weights_with_exact_widths():
    from fiberlab.fibration.controls import ablate

    torch.manual_seed(3)
    p = _random_base(BASES["fast"])
    full = {layer: n for layer, (n, _) in find_fibers(p, ZERO).widths().items()}
    same, _ = ablate(p, full, seed=0)  # keeping every unit is the identity
    obs, resets = _sequence(BASES["fast"])
    torch.testing.assert_close(_rollout(same, obs, resets)[0], _rollout(p, obs, resets)[0], atol=1e-5, rtol=1e-5)
    widths = {**full, "conv0": 2, "linear0": 3, "core": 2, "actor0": 2, "critic0": 1}
    small, kept = ablate(p, widths, seed=1)
    cfg = small.config
    assert (cfg.conv_channels, cfg.linear, cfg.core_hidden, cfg.actor_hidden, cfg.critic_hidden) == ([2, 3], [3, 4], 2, [2], [1])
    k = torch.tensor(kept["linear0"])
    torch.testing.assert_close(small.encoder[1][0].bias, p.encoder[1][0].bias[k])
    h = torch.tensor(kept["core"])
    torch.testing.assert_close(small.core.lstm.bias_hh_l0.view(4, 2), p.core.lstm.bias_hh_l0.view(4, 3)[:, h])
    other, kept2 = ablate(p, widths, seed=2)
    assert kept2 != kept  # draws differ
