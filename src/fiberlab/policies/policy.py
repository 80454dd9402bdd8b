"""The recurrent actor-critic every architecture in ``fiberlab.policies.ARCHITECTURES`` builds.

encoder (obs -> features) -> core (memory, dict state) -> actor head (logits), critic head (value).
"""
from __future__ import annotations

import torch
from torch import nn

from fiberlab.config import PolicyConfig
from fiberlab.policies.cores import State
from fiberlab.policies.patch_conv import PatchConv2d


class RecurrentPolicy(nn.Module):
    """Actor-critic over a sequence: ``forward(obs [B,T,...], state, resets [B,T])``.

    ``config`` is the fully resolved :class:`PolicyConfig` the registry built it from, so a
    checkpoint can rebuild it without importing anything named in a file.
    """

    def __init__(self, config: PolicyConfig, encoder: nn.Module, core: nn.Module, actor: nn.Module, critic: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.core = core
        self.actor = actor
        self.critic = critic
        self.register_buffer("obs_scale", self._obs_scale(), persistent=False)
        # image observations go to patch convs channels-last: their first gather is then a strided
        # copy instead of an element gather (policies/patch_conv.py); the values are the same
        patch_convs = any(isinstance(m, PatchConv2d) for m in encoder.modules())
        self.channels_last_obs = patch_convs and len(config.obs_shape or []) == 3  # a bool: memory formats do not pickle

    def _obs_scale(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The divisor of raw observations, from the config (one per image channel or one in all)."""
        scale = torch.tensor(self.config.obs_scale or [1.0], dtype=torch.float32, device=device)
        if scale.numel() > 1 and len(self.config.obs_shape or [1]) == 3:
            scale = scale.view(-1, 1, 1)
        return scale

    def refresh_buffers(self) -> None:
        """Recompute the buffers derived from the config (after ``to_empty``, say)."""
        self.obs_scale = self._obs_scale(next(self.parameters()).device)

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return self.core.init_state(batch, device)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations (any leading batch dims) -> features; scaling happens here."""
        lead = obs.shape[: obs.dim() - len(self.config.obs_shape)]
        fmt = torch.channels_last if getattr(self, "channels_last_obs", False) else torch.preserve_format  # (absent in older pickles)
        x = obs.reshape(-1, *self.config.obs_shape).to(torch.float32, memory_format=fmt) / self.obs_scale
        return self.encoder(x).reshape(*lead, -1)

    def forward(self, obs: torch.Tensor, state: State | None = None, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Sequence form: obs ``[B, T, *obs_shape]`` -> logits ``[B, T, A]``, values ``[B, T]``."""
        return self._run(obs, state, resets)

    def step(self, obs: torch.Tensor, state: State | None = None, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One step: obs ``[B, *obs_shape]`` -> logits ``[B, A]``, values ``[B]``."""
        return self._run(obs, state, resets)

    def _run(self, obs: torch.Tensor, state: State | None, resets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """encoder -> core -> heads. Under bf16 autocast (``trainer.precision``) only the encoder and
        the heads' hidden layers run in bf16, where the multiply-adds are: the core keeps its state
        in float32 (a memory rounded to 8 bits every step drifts from the one acting carried), and
        the heads' output layers read the bf16 hidden units in float32, so logits and values carry
        one rounding of their inputs, not of their own sums. Acting runs under the same autocast as
        the update (``fiberlab.rl.precision``), so the first minibatch's PPO ratio stays 1."""
        x = self.encode(obs)
        autocast = torch.is_autocast_enabled(x.device.type)
        if autocast:
            with torch.autocast(x.device.type, enabled=False):
                y, state = self.core(x.float(), state, resets=resets)
            return _head_fp32_out(self.actor, y), _head_fp32_out(self.critic, y).squeeze(-1), state
        y, state = self.core(x, state, resets=resets)
        return self.actor(y), self.critic(y).squeeze(-1), state


def _head_fp32_out(head: nn.Sequential, y: torch.Tensor) -> torch.Tensor:
    """A head under autocast: its hidden layers as autocast runs them, its output layer in float32."""
    *hidden, out = head
    for layer in hidden:
        y = layer(y)
    with torch.autocast(y.device.type, enabled=False):
        return out(y.float())
