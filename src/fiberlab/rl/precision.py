"""``trainer.precision`` as a run uses it: one resolved choice for acting and for the update.

Why both: PPO's ratio ``exp(logp_new - logp_old)`` compares the update's log-probabilities with the
ones stored while acting. If acting ran in float32 and the update in bf16, that ratio would move
away from 1 by rounding alone, before any weight changed (measured on a confident ``fast`` policy:
mean |ratio - 1| of 1-3 %, up to 13 %, against PPO's clip at 20 %). Run the same way on both
sides, the first minibatch's ratio measured exactly 1 (tests/test_precision.py bounds it at 5e-3). Where bf16 runs,
and what stays float32, is :meth:`fiberlab.policies.RecurrentPolicy._run`'s docstring.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from fiberlab.devices import resolve_precision
from fiberlab.policies.architectures import ARCHITECTURES


def run_precision(precision: str, policy: nn.Module, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` resolved for this policy on this device (a policy without an
    architecture record stays float32)."""
    return architecture_precision(precision, getattr(getattr(policy, "config", None), "name", None), device)


def architecture_precision(precision: str, name: str | None, device: torch.device) -> str:
    """``auto`` resolved for the architecture ``name`` (its record's ``bf16_update``) on ``device``
    (native bf16 or not): what a trainer of that architecture will run, before any policy exists."""
    arch = ARCHITECTURES.get(name)
    return resolve_precision(precision, device, arch is not None and arch.bf16_update)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when the resolved ``precision`` is ``bf16``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
