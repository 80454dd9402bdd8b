"""The architecture table: one frozen record per policy name, and nothing else.

Why a table of records: everything that differs between the published networks (widths, conv
kernels and strides, the LSTM's initial bias, the critic's activation) is data, so it sits in one
place next to its source, and one builder (:mod:`fiberlab.policies.build`) reads it. A checkpoint
names an architecture; only the names in :data:`ARCHITECTURES` can be built, and no class path is
ever read from a file.

Widths are published defaults (../shared/specs/checkpoints_and_training.md section 3); every one
can be overridden by the matching :class:`~fiberlab.config.PolicyConfig` field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from fiberlab.config import ConfigError


@dataclass(frozen=True)
class CortexDefaults:
    """What ``policy.core=cortex`` uses when ``pattern`` / ``num_layers`` / ``d_hidden`` are unset."""

    pattern: str = "Ag,A,S"
    num_layers: int = 2
    d_hidden: int = 128

    def widths(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "num_layers": self.num_layers, "d_hidden": self.d_hidden}


@dataclass(frozen=True)
class Architecture:
    """One policy network: its default widths and the fixed choices that are not widths.

    ``conv_geometry`` is one ``(kernel, stride)`` per convolution (so ``policy.conv_channels`` must
    have that many entries); ``encoder`` says whether observations go through those convolutions
    (``conv``) or are flattened into an MLP (``mlp``, vector observations).
    """

    name: str
    source: str  # where the defaults come from
    encoder: Literal["conv", "mlp"]
    conv_channels: tuple[int, ...]
    conv_geometry: tuple[tuple[int, int], ...]  # (kernel, stride) per conv
    linear: tuple[int, ...]
    core_hidden: int  # the LSTM's width (core=lstm)
    actor_hidden: tuple[int, ...]
    critic_hidden: tuple[int, ...]
    critic_activation: type[nn.Module]
    lstm_bias: float  # initial value of every LSTM bias
    patch_convs: bool = False  # CPU convs as gather + matmul (policies/patch_conv.py): only where measured faster
    # trainer.precision=auto runs the update's encoder and hidden head layers in bf16 on devices
    # with native bf16: only where measured faster (docs/benchmarks.md, issue 16)
    bf16_update: bool = False
    cortex: CortexDefaults = field(default_factory=CortexDefaults)  # core=cortex: cortex.md section 4's default

    def width_defaults(self) -> dict[str, Any]:
        """The widths as :class:`~fiberlab.config.PolicyConfig` field values (lists, as the config holds them)."""
        return {
            "conv_channels": list(self.conv_channels), "linear": list(self.linear), "core_hidden": self.core_hidden,
            "actor_hidden": list(self.actor_hidden), "critic_hidden": list(self.critic_hidden),
        }


ARCHITECTURES: dict[str, Architecture] = {
    "fast": Architecture(
        name="fast",
        source="Metta Fast: conv 64 k5 s3, conv 64 k3, linear 128, 128, LSTM 128, actor 512, critic 1024 tanh; "
               "Metta inits LSTM biases to 1",
        encoder="conv", conv_channels=(64, 64), conv_geometry=((5, 3), (3, 1)), linear=(128, 128), core_hidden=128,
        actor_hidden=(512,), critic_hidden=(1024,), critic_activation=nn.Tanh, lstm_bias=1.0,
        patch_convs=True,  # 11x11 -> 3x3 -> 1x1 maps: 1.6x faster acting, 1.8x faster update than oneDNN (docs/benchmarks.md)
        bf16_update=True,  # AVX512-BF16 CPU: arena trainer +23 % (docs/benchmarks.md, issue 16)
    ),
    "atari": Architecture(
        name="atari",
        source="PufferLib Atari: conv 32 k8 s4, 64 k4 s2, 64 k3 s1, linear 512, LSTM 512, linear heads; "
               "PufferLib inits LSTM biases to 0",
        encoder="conv", conv_channels=(32, 64, 64), conv_geometry=((8, 4), (4, 2), (3, 1)), linear=(512,),
        core_hidden=512, actor_hidden=(), critic_hidden=(), critic_activation=nn.ReLU, lstm_bias=0.0,
        patch_convs=False,  # 105x80 -> 25x19 maps: oneDNN is 2.5x faster than gather + matmul there
        bf16_update=True,  # AVX512-BF16 CPU: beam_rider trainer +54 % (docs/benchmarks.md, issue 16)
    ),
    "mlp_lstm": Architecture(
        name="mlp_lstm",
        source="vector observations (popgym): one hidden layer, LSTM 128, linear heads (PufferLib's zero LSTM bias)",
        encoder="mlp", conv_channels=(), conv_geometry=(), linear=(128,), core_hidden=128,
        actor_hidden=(), critic_hidden=(), critic_activation=nn.ReLU, lstm_bias=0.0,
    ),
}


def architecture(name: str) -> Architecture:
    """The record of ``name``; :class:`~fiberlab.config.ConfigError` names the allowed ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}: allowed are {', '.join(sorted(ARCHITECTURES))}") from None
