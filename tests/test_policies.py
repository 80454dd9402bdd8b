import pytest
import torch

from fiberlab.config import PolicyConfig
from fiberlab.policies import LSTMCore, build_policy


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_atari_policy_has_pufferlib_parameter_count():
    p = build_policy(PolicyConfig(name="atari", obs_shape=[1, 105, 80], num_actions=9, obs_scale=[255.0]))
    assert n_params(p) == 3_948_202


def test_fast_policy_shapes_and_metta_widths():
    p = build_policy(PolicyConfig(name="fast", obs_shape=[24, 11, 11], num_actions=5))
    convs = [m for m in p.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(64, (5, 5), (3, 3)), (64, (3, 3), (1, 1))]
    assert p.core.hidden_size == 128
    assert p.actor[0].out_features == 512 and p.critic[0].out_features == 1024
    assert isinstance(p.critic[1], torch.nn.Tanh)
    assert torch.all(p.core.lstm.bias_ih_l0 == 1.0)  # Metta: LSTM biases 1
    logits, values, state = p(torch.zeros(2, 3, 24, 11, 11, dtype=torch.uint8))
    assert logits.shape == (2, 3, 5) and values.shape == (2, 3) and state["h"].shape == (2, 128)


def test_every_width_is_configurable():
    p = build_policy(PolicyConfig(name="fast", obs_shape=[24, 11, 11], num_actions=5, conv_channels=[7, 9], linear=[13, 11], core_hidden=5, actor_hidden=[6], critic_hidden=[3]))
    small = build_policy(PolicyConfig(name="fast", obs_shape=[24, 11, 11], num_actions=5))
    assert n_params(p) < n_params(small) / 50
    assert p.core.hidden_size == 5 and p.actor[0].out_features == 6 and p.critic[0].out_features == 3
    with pytest.raises(ValueError, match="conv_channels"):
        build_policy(PolicyConfig(name="atari", obs_shape=[1, 105, 80], num_actions=9, conv_channels=[8]))


def test_init_head_gains():
    torch.manual_seed(0)
    p = build_policy(PolicyConfig(name="atari", obs_shape=[1, 105, 80], num_actions=9))
    actor_w = p.actor[-1].weight
    # orthogonal rows scaled by 0.01: each row's norm is 0.01
    torch.testing.assert_close(actor_w.norm(dim=1), torch.full((9,), 0.01), rtol=1e-4, atol=1e-6)


def test_lstm_core_sequence_with_resets_equals_step_loop():
    torch.manual_seed(0)
    core = LSTMCore(6, 8)
    x = torch.randn(5, 12, 6)
    resets = torch.rand(5, 12) < 0.2
    resets[:, 0] = True
    init = {"h": torch.randn(5, 8), "c": torch.randn(5, 8)}
    y_seq, s_seq = core(x, init, resets=resets)
    state = init
    ys = []
    for t in range(12):
        state = core.reset_state(state, resets[:, t])
        y, state = core(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(y_seq, torch.stack(ys, 1), atol=1e-6, rtol=1e-5)
    for k in state:
        torch.testing.assert_close(s_seq[k], state[k], atol=1e-6, rtol=1e-5)


def test_reset_makes_outputs_independent_of_the_past():
    torch.manual_seed(0)
    core = LSTMCore(3, 4)
    x = torch.randn(1, 10, 3)
    x2 = x.clone()
    x2[:, :5] = torch.randn(1, 5, 3)
    resets = torch.zeros(1, 10, dtype=torch.bool)
    resets[:, 5] = True
    y1, _ = core(x, None, resets=resets)
    y2, _ = core(x2, None, resets=resets)
    torch.testing.assert_close(y1[:, 5:], y2[:, 5:])
    assert not torch.allclose(y1[:, :5], y2[:, :5])


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError):
        build_policy({"name": "os.system", "obs_shape": [4], "num_actions": 2})


def test_architecture_records_are_frozen_and_match_the_config_names():
    import dataclasses
    import typing

    from fiberlab.config import ConfigError
    from fiberlab.policies import ARCHITECTURES, architecture

    assert set(ARCHITECTURES) == set(typing.get_args(PolicyConfig.model_fields["name"].annotation))
    for name, arch in ARCHITECTURES.items():
        assert arch.name == name and arch.source
        assert len(arch.conv_channels) == len(arch.conv_geometry)
        assert (arch.encoder == "conv") == bool(arch.conv_geometry)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ARCHITECTURES["fast"].lstm_bias = 0.0
    with pytest.raises(ConfigError, match="unknown architecture 'nope': allowed are atari, fast, mlp_lstm"):
        architecture("nope")


def test_bad_policy_settings_are_config_errors():
    from fiberlab.config import ConfigError

    with pytest.raises(ConfigError, match="needs 3 entries"):
        build_policy(PolicyConfig(name="atari", obs_shape=[1, 105, 80], num_actions=9, conv_channels=[8]))
    with pytest.raises(ConfigError, match="only used with policy.core=cortex"):
        build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, num_layers=2))
