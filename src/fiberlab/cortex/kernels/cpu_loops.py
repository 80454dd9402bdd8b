"""What the compiled CPU loops (``rtu_loop``, ``decayed_readout_loop``, ``scan_loop``) share.

Why compiled loops at all: on one CPU core the linear recurrences of Axon and AGaLiTe are bound by
memory traffic, and a tensor-op parallel form moves each sequence-sized tensor through memory many
times (forward and backward) where a loop over time in compiled code moves it once, keeping the
state in registers or cache, as ``torch.nn.LSTM``'s CPU kernel does. numba compiles them (cached
on disk after the first call); on GPUs, or without numba, the cells use the tensor-op forms.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

try:
    import numba
except ImportError:  # numba is a dependency; without it the tensor-op kernels are used everywhere
    numba = None

AVAILABLE = numba is not None


def jit(fn: Callable | None = None, *, fastmath: bool | set = False) -> Callable:
    """numba's ``njit`` (cached, GIL released); the plain function when numba is missing."""
    def wrap(f: Callable) -> Callable:
        return numba.njit(cache=True, nogil=True, fastmath=fastmath)(f) if numba is not None else f
    return wrap(fn) if fn is not None else wrap


def runs_here(x: torch.Tensor) -> bool:
    """Whether a loop can take ``x``: numba present, a CPU tensor, a dtype numpy has (not bf16/fp16)."""
    return AVAILABLE and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor's data (no copy, whatever its strides)."""
    return t.detach().numpy()


def require(what: str, instead: str) -> None:
    if numba is None:
        raise RuntimeError(f"{what} needs numba (pip install numba); use {instead} instead")
