"""Architecture registry: a policy is built from (architecture name, config) and nothing else.

No class path is ever read from a file: a checkpoint names an architecture, and only the names
registered here can be built. Each architecture's defaults cite their source.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from fiberlab.config import PolicyConfig
from fiberlab.policies.cores import CORES
from fiberlab.policies.cortex_core import CortexCore
from fiberlab.policies.layers import head, layer_init, mlp
from fiberlab.policies.policy import RecurrentPolicy

# Published widths (../shared/specs/checkpoints_and_training.md section 3).
DEFAULTS: dict[str, dict] = {
    # Metta "Fast": conv 64 k5 s3, conv 64 k3, linear 128, 128, LSTM 128, actor 512, critic 1024 tanh.
    "fast": dict(conv_channels=[64, 64], linear=[128, 128], core_hidden=128, actor_hidden=[512], critic_hidden=[1024]),
    # PufferLib Atari: conv 32 k8 s4, 64 k4 s2, 64 k3 s1, linear 512, LSTM 512, linear heads.
    "atari": dict(conv_channels=[32, 64, 64], linear=[512], core_hidden=512, actor_hidden=[], critic_hidden=[]),
    # Vector observations (popgym): one hidden layer, LSTM 128, linear heads.
    "mlp_lstm": dict(conv_channels=[], linear=[128], core_hidden=128, actor_hidden=[], critic_hidden=[]),
}
CONV_GEOMETRY = {"fast": [(5, 3), (3, 1)], "atari": [(8, 4), (4, 2), (3, 1)], "mlp_lstm": []}  # (kernel, stride)
LSTM_BIAS = {"fast": 1.0, "atari": 0.0, "mlp_lstm": 0.0}  # Metta inits LSTM biases to 1, PufferLib to 0
CRITIC_ACTIVATION = {"fast": nn.Tanh, "atari": nn.ReLU, "mlp_lstm": nn.ReLU}
# core=cortex: cortex.md section 4's default policy ("Ag,A,S" x 2 layers, d = 128)
CORTEX_DEFAULTS = dict(pattern="Ag,A,S", num_layers=2, d_hidden=128)
CORTEX_FIELDS = ("pattern", "d_hidden", "num_layers", "cortex_overrides")


def resolve(cfg: PolicyConfig) -> PolicyConfig:
    """Fill every ``None`` width with the architecture's default; check env fields are present."""
    if cfg.obs_shape is None or cfg.num_actions is None:
        raise ValueError("policy config needs obs_shape and num_actions (filled from the env spec)")
    defaults = dict(DEFAULTS[cfg.name])
    if cfg.core == "lstm":
        used = [f for f in CORTEX_FIELDS if getattr(cfg, f) is not None]
        if used:
            raise ValueError(f"policy.{used[0]} is only used with policy.core=cortex (got core=lstm)")
    else:
        if cfg.core_hidden is not None:
            raise ValueError(f"policy.core_hidden sizes the LSTM; with core=cortex set policy.d_hidden (got core_hidden={cfg.core_hidden})")
        del defaults["core_hidden"]
        defaults.update(CORTEX_DEFAULTS)
    filled = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    out = cfg.model_copy(update=filled)
    if len(out.conv_channels) != len(CONV_GEOMETRY[cfg.name]):
        raise ValueError(f"policy.conv_channels for {cfg.name!r} needs {len(CONV_GEOMETRY[cfg.name])} entries, got {out.conv_channels}")
    return out


def _conv_encoder(cfg: PolicyConfig) -> tuple[nn.Module, int]:
    """Convs (ReLU) -> flatten -> linear layers (ReLU); returns the module and its output width."""
    import torch

    c_in = cfg.obs_shape[0]
    layers: list[nn.Module] = []
    for c_out, (k, s) in zip(cfg.conv_channels, CONV_GEOMETRY[cfg.name]):
        layers += [layer_init(nn.Conv2d(c_in, c_out, k, s)), nn.ReLU()]
        c_in = c_out
    layers.append(nn.Flatten())
    convs = nn.Sequential(*layers)
    with torch.no_grad():
        flat = convs(torch.zeros(1, *cfg.obs_shape)).shape[1]
    return nn.Sequential(convs, mlp([flat, *cfg.linear])), cfg.linear[-1] if cfg.linear else flat


def _mlp_encoder(cfg: PolicyConfig) -> tuple[nn.Module, int]:
    import math

    n_in = math.prod(cfg.obs_shape)
    return nn.Sequential(nn.Flatten(), mlp([n_in, *cfg.linear])), cfg.linear[-1] if cfg.linear else n_in


def _build(cfg: PolicyConfig) -> RecurrentPolicy:
    encoder, width = _mlp_encoder(cfg) if cfg.name == "mlp_lstm" else _conv_encoder(cfg)
    if cfg.core == "cortex":
        core = CortexCore(width, cfg.pattern, cfg.d_hidden, cfg.num_layers, cfg.cortex_overrides)
    else:
        core = CORES[cfg.core](width, cfg.core_hidden, bias_init=LSTM_BIAS[cfg.name])
    actor = head(core.hidden_size, cfg.actor_hidden, cfg.num_actions, std=0.01)
    critic = head(core.hidden_size, cfg.critic_hidden, 1, std=1.0, activation=CRITIC_ACTIVATION[cfg.name])
    return RecurrentPolicy(cfg, encoder, core, actor, critic)


ARCHITECTURES: dict[str, Callable[[PolicyConfig], RecurrentPolicy]] = {name: _build for name in DEFAULTS}


def build_policy(cfg: PolicyConfig | dict) -> RecurrentPolicy:
    """Build a policy from its config (a :class:`PolicyConfig` or its dict form)."""
    if isinstance(cfg, dict):
        cfg = PolicyConfig.model_validate(cfg)
    if cfg.name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.name!r}: allowed are {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[cfg.name](resolve(cfg))
