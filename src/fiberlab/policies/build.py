"""Build a policy from (architecture name, config) and nothing else.

:func:`resolve` fills every unset width from the architecture's record
(:data:`~fiberlab.policies.architectures.ARCHITECTURES`) and refuses settings that cannot apply;
:func:`build_policy` assembles encoder, core and heads. Bad user input raises
:class:`~fiberlab.config.ConfigError` (a ``ValueError``) with one line naming the field.
"""
from __future__ import annotations

from fiberlab.config import ConfigError, PolicyConfig
from fiberlab.policies.architectures import architecture
from fiberlab.policies.cores import CORES
from fiberlab.policies.cortex_core import CortexCore
from fiberlab.policies.encoders import ENCODERS
from fiberlab.policies.layers import head
from fiberlab.policies.policy import RecurrentPolicy

# PolicyConfig fields read only with core=cortex.
CORTEX_FIELDS = ("pattern", "d_hidden", "num_layers", "cortex_overrides")


def resolve(cfg: PolicyConfig) -> PolicyConfig:
    """Fill every ``None`` width with the architecture's default; check env fields are present."""
    if cfg.obs_shape is None or cfg.num_actions is None:
        raise ValueError("policy config needs obs_shape and num_actions (filled from the env spec)")
    arch = architecture(cfg.name)
    defaults = arch.width_defaults()
    if cfg.core == "lstm":
        used = [f for f in CORTEX_FIELDS if getattr(cfg, f) is not None]
        if used:
            raise ConfigError(f"policy.{used[0]} is only used with policy.core=cortex (got core=lstm)")
    else:
        if cfg.core_hidden is not None:
            raise ConfigError(f"policy.core_hidden sizes the LSTM; with core=cortex set policy.d_hidden (got core_hidden={cfg.core_hidden})")
        del defaults["core_hidden"]
        defaults.update(arch.cortex.widths())
    filled = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    out = cfg.model_copy(update=filled)
    if len(out.conv_channels) != len(arch.conv_geometry):
        raise ConfigError(f"policy.conv_channels for {cfg.name!r} needs {len(arch.conv_geometry)} entries, got {out.conv_channels}")
    if arch.encoder == "conv":
        check_image_fits(cfg.name, list(cfg.obs_shape), arch.conv_geometry)
    return out


def check_image_fits(name: str, obs_shape: list[int], geometry) -> None:
    """A conv encoder needs ``[C, H, W]`` observations at least as large as its kernels reach:
    each layer maps a side ``n`` to ``(n - kernel) // stride + 1``, which must stay >= 1."""
    if len(obs_shape) != 3:
        raise ConfigError(f"policy.name={name} has a conv encoder for [C, H, W] images; the env gives observations of shape {obs_shape}: mlp_lstm is allowed for those")
    h, w = obs_shape[1:]
    for kernel, stride in geometry:
        if h < kernel or w < kernel:
            raise ConfigError(f"policy.name={name}: observations of shape {obs_shape} are smaller than its {kernel}x{kernel} convolution reaches")
        h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1


def build_policy(cfg: PolicyConfig | dict) -> RecurrentPolicy:
    """Build a policy from its config (a :class:`PolicyConfig` or its dict form)."""
    if isinstance(cfg, dict):
        cfg = PolicyConfig.model_validate(cfg)
    arch = architecture(cfg.name)
    cfg = resolve(cfg)
    encoder, width = ENCODERS[arch.encoder](arch, cfg)
    if cfg.core == "cortex":
        core = CortexCore(width, cfg.pattern, cfg.d_hidden, cfg.num_layers, cfg.cortex_overrides)
    else:
        core = CORES[cfg.core](width, cfg.core_hidden, bias_init=arch.lstm_bias)
    actor = head(core.hidden_size, cfg.actor_hidden, cfg.num_actions, std=0.01)
    critic = head(core.hidden_size, cfg.critic_hidden, 1, std=1.0, activation=arch.critic_activation)
    return RecurrentPolicy(cfg, encoder, core, actor, critic)
