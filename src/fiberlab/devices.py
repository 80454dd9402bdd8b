"""Which torch device a run uses. A leaf module (torch only), so the trainer, evaluation and the
cortex experiments share one rule without importing each other."""
from __future__ import annotations

import torch

from fiberlab.errors import BadInput


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; any other name is taken as given.

    Asking for CUDA on a machine without it is a :class:`~fiberlab.errors.BadInput` naming the
    value, not a crash at the first tensor moved.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BadInput(f"bad value {name!r} for device: auto, cpu, cuda or cuda:N is allowed") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {name!r} asked for but CUDA is not available: use device=auto or device=cpu")
    return dev
