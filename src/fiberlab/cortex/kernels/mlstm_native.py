"""M's acting step (one mLSTM recurrence step) as one compiled C pass (``mlstm_step.c``).

Why: the tensor form (``mlstm_chunkwise.mlstm_step``) passes over the matrix memory ``C``
``[B, NH, d, d]`` (1 MiB at B=64, H=128, 4 heads) three times (a scaled copy, an in-place outer
product, the readout ``q^T C``), around a dozen small operations on the gates, and took
about half of M's acting step, which sat at 0.28-0.37x an ``nn.LSTMCell`` step against a target of
0.3. The kernel reads ``C`` once and writes the new ``C`` once, reading each new row back for the
readout while it is in registers (docs/benchmarks.md, "Cortex cells: one acting step").

It runs where the tensor form would do the same float32 arithmetic without autograd (CPU tensors,
float32, grad disabled: rollouts) and a C compiler is there (``native.py``); elsewhere
:func:`step` returns None and the caller takes the tensor form. Agreement is to float32 rounding.
"""
from __future__ import annotations

import ctypes
import math
from pathlib import Path

import torch

from fiberlab.cortex.kernels import native

SOURCE = Path(__file__).with_name("mlstm_step.c")
_P, _L = ctypes.c_void_p, ctypes.c_long
ARGTYPES = (_L, _P, _P, _P, _P, _L, _P, _L, _P, _L, _P, _L, _P, _L, _P, ctypes.c_float, _P, _P, _P, _P)


def step(c: torch.Tensor, n: torch.Tensor, m: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         i_pre: torch.Tensor, f_pre: torch.Tensor, eps: float,
         resets: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """``mlstm_step``'s result (same arguments and shapes), or None where the kernel does not apply."""
    B, NH, d = k.shape
    f32 = torch.float32
    tensors = (c, n, m, q, k, v, i_pre, f_pre)
    if torch.is_grad_enabled() or not all(t.is_cpu and t.dtype == f32 for t in tensors):
        return None
    if not (c.is_contiguous() and n.is_contiguous() and m.is_contiguous()
            and all(t.stride(2) == 1 and t.stride(1) == d for t in (q, k, v)) and i_pre.stride(1) == 1 and f_pre.stride(1) == 1):
        return None
    fn = KERNELS.get(NH, d)
    if fn is None:
        return None
    if resets is not None and (resets.dtype != torch.bool or not resets.is_contiguous()):
        resets = resets.to(torch.bool).contiguous()
    h, c_new, n_new, m_new = torch.empty(B, NH, d), torch.empty(B, NH, d, d), torch.empty(B, NH, d, 1), torch.empty(B, NH, 1, 1)
    fn(B, c.data_ptr(), n.data_ptr(), m.data_ptr(), q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0),
       v.data_ptr(), v.stride(0), i_pre.data_ptr(), i_pre.stride(0), f_pre.data_ptr(), f_pre.stride(0),
       None if resets is None else resets.data_ptr(), eps, h.data_ptr(), c_new.data_ptr(), n_new.data_ptr(), m_new.data_ptr())
    return h, (c_new, n_new, m_new)


def _shape_constants(NH: int, d: int) -> dict[str, int | float]:
    """Heads and head width, and the normaliser's cap on ``-m`` (the tensor form's ``_normaliser``)."""
    return {"NH": NH, "D": d, "CAP": math.log(torch.finfo(torch.float32).max) - 1.0}


KERNELS = native.Kernels(SOURCE, "mlstm_step", ARGTYPES, _shape_constants)  # by (NH, d)
