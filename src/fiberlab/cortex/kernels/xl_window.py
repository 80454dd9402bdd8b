"""X's acting step over its memory window as one compiled C pass (``xl_window.c``).

Why: in the tensor form (``XLCell._step``) the step reads the window ``[B, M+1, H]`` twice (the
logits product, then the weighted sum) plus a dozen small operations for the mask and the softmax;
at B=64, H=M=128 the window is 4.2 MB, larger than L2, so both reads come from L3, and the step ran
at 0.20-0.24x an ``nn.LSTMCell`` step. The kernel reads each row's window from L3 once (prefetched)
and uses it again from L1, with the mask, the softmax and the next ``mem_valid`` inside
(docs/benchmarks.md, "Cortex cells: one acting step", has the measurements).

It replaces exactly this part of the step (``hidden``: 1 where a slot is not visible)::

    logits = qk_pos[..., :H] . window + qk_pos[..., H:]    (+ -inf where hidden)
    mixed  = softmax(logits) @ window,   new_valid = 1 - hidden[:, 1:]

and runs only where the tensor form would do the same arithmetic in float32 without autograd: CPU
tensors, float32, grad disabled (rollouts), ``H`` a multiple of 16. Anything else, or no C compiler
(``native.py``), returns None and the caller takes the tensor form. Results agree with it to float32
rounding (a vectorised ``exp``, sums in another order), not bit for bit.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from fiberlab.cortex.kernels import native

SOURCE = Path(__file__).with_name("xl_window.c")
_P, _L = ctypes.c_void_p, ctypes.c_long
ARGTYPES = (_L, _P, _L, _P, _P, _L, _P, _P, _P)
MAX_LOGITS = 1 << 16  # NH * (M+1) floats live on the C stack (256 KiB); a larger window takes the tensor form


def attend(window: torch.Tensor, qk_pos: torch.Tensor, mem_valid: torch.Tensor,
           resets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mixed [B, NH, H], new_valid [B, M])`` for ``window [B, M+1, H]``, ``qk_pos [NH, B, H + M+1]``
    (query side, then position terms; see ``XLCell._step``), ``mem_valid [B, M]`` and ``resets [B]``
    (bool) or None; None where the kernel does not apply.

    This runs at every acting step, so its checks use the cheap tensor properties (``is_cpu``, not
    ``device.type``): the first version of this wrapper cost 70 us a call, a fifth of the kernel.
    """
    B, M1, H = window.shape
    NH = qk_pos.shape[0]
    f32 = torch.float32
    if (torch.is_grad_enabled() or H % 16 or NH * M1 > MAX_LOGITS
            or not (window.is_cpu and qk_pos.is_cpu and mem_valid.is_cpu)
            or not (window.dtype == f32 and qk_pos.dtype == f32 and mem_valid.dtype == f32)
            or window.stride(2) != 1 or window.stride(1) != H or mem_valid.stride(1) != 1 or not qk_pos.is_contiguous()):
        return None
    fn = KERNELS.get(NH, H, M1)
    if fn is None:
        return None
    if resets is not None and (resets.dtype != torch.bool or not resets.is_contiguous()):
        resets = resets.to(torch.bool).contiguous()
    mixed = torch.empty(B, NH, H)
    new_valid = torch.empty(B, M1 - 1)
    fn(B, window.data_ptr(), window.stride(0), qk_pos.data_ptr(), mem_valid.data_ptr(), mem_valid.stride(0),
       None if resets is None else resets.data_ptr(), mixed.data_ptr(), new_valid.data_ptr())
    return mixed, new_valid


def _shape_constants(NH: int, H: int, M1: int) -> dict[str, int]:
    """The kernel's compile-time constants. CW: vectors of a window row per chunk of the weighted-sum
    pass, so that its NH x CW accumulators (16 floats each) fit in 16 registers."""
    nv = H // 16
    cw = max(c for c in range(1, nv + 1) if nv % c == 0 and NH * c <= max(16, NH))
    return {"NH": NH, "HD": H, "M1": M1, "CW": cw}


KERNELS = native.Kernels(SOURCE, "xl_window_attend", ARGTYPES, _shape_constants)  # by (NH, H, M+1)
