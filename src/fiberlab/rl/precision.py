"""``trainer.precision`` as a run uses it: one resolved choice for acting and for the update.

Why both: PPO's ratio ``exp(logp_new - logp_old)`` compares the update's log-probabilities with the
ones stored while acting. If acting ran in float32 and the update in bf16, that ratio would move
away from 1 by rounding alone, before any weight changed (measured on a confident ``fast`` policy:
mean |ratio - 1| of 1 %, up to 4 %, against PPO's clip at 20 %). Run the same way on both sides,
the first minibatch's ratio is 1 to float32 rounding (tests/test_precision.py). Where bf16 runs,
and what stays float32, is :meth:`fiberlab.policies.RecurrentPolicy._run`'s docstring.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from fiberlab.devices import resolve_precision
from fiberlab.policies.architectures import ARCHITECTURES


def run_precision(precision: str, policy: nn.Module, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` resolved for this policy (its architecture record's
    ``bf16_update``; a policy without one stays float32) on this device (native bf16 or not)."""
    arch = ARCHITECTURES.get(getattr(getattr(policy, "config", None), "name", None))
    return resolve_precision(precision, device, arch is not None and arch.bf16_update)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when the resolved ``precision`` is ``bf16``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
