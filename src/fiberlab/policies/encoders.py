"""Observation encoders: raw (already scaled) observations -> a feature vector for the core.

Two kinds, chosen by the architecture record's ``encoder`` field: convolutions for images (Metta's
and PufferLib's networks) and a plain MLP for vector observations. Each returns the module and its
output width, which the core is sized from.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fiberlab.config import PolicyConfig
from fiberlab.policies.architectures import Architecture
from fiberlab.policies.layers import layer_init, mlp
from fiberlab.policies.patch_conv import PatchConv2d


def conv_encoder(arch: Architecture, cfg: PolicyConfig) -> tuple[nn.Module, int]:
    """Convs (ReLU, the record's kernels and strides) -> flatten -> linear layers (ReLU)."""
    c_in = cfg.obs_shape[0]
    conv = PatchConv2d if arch.patch_convs else nn.Conv2d  # the same parameters either way
    layers: list[nn.Module] = []
    for c_out, (k, s) in zip(cfg.conv_channels, arch.conv_geometry, strict=True):
        layers += [layer_init(conv(c_in, c_out, k, s)), nn.ReLU()]
        c_in = c_out
    layers.append(nn.Flatten())
    convs = nn.Sequential(*layers)
    with torch.no_grad():
        flat = convs(torch.zeros(1, *cfg.obs_shape)).shape[1]
    return nn.Sequential(convs, mlp([flat, *cfg.linear])), cfg.linear[-1] if cfg.linear else flat


def mlp_encoder(arch: Architecture, cfg: PolicyConfig) -> tuple[nn.Module, int]:
    """Flatten -> linear layers (ReLU)."""
    n_in = math.prod(cfg.obs_shape)
    return nn.Sequential(nn.Flatten(), mlp([n_in, *cfg.linear])), cfg.linear[-1] if cfg.linear else n_in


ENCODERS = {"conv": conv_encoder, "mlp": mlp_encoder}
