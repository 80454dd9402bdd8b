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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA device with bf16 support, or
    a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and slower than float32 (measured:
    a 1024^2 bf16 matmul at 29 against 123 GFLOP/s in fp32 on an AVX-512 Xeon without either)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu  # private probes, present since torch 2.1; absent ones mean "no"
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, device: torch.device, bf16_pays: bool) -> str:
    """``trainer.precision`` as run: ``fp32`` / ``bf16`` as given; ``auto`` is ``bf16`` where the
    device has native bf16 (:func:`native_bf16`) and the architecture was measured to gain from it
    (``bf16_pays``, its record's ``bf16_update``), else ``fp32``."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_pays and native_bf16(device) else "fp32"
