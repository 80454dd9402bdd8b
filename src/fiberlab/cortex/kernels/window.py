"""Rolling windows ``[B, M, H]`` whose one-step update writes one row instead of copying M.

Why: a cell that carries its last M inputs (X: ``mem [B, M, H]``) must return a new state at every
step without changing the old one (states are values: the rollout keeps the segment's first state,
tests compare states of different steps). Rebuilding the window with ``torch.cat`` copies all M
rows per step; at B=64, M=H=128 that is 4 MiB, which alone took longer than one ``nn.LSTMCell``
step on the 2-core CPU we benchmark on (~550 us against ~300 us).

How: the window lives in a longer buffer ``buf [B, M + 1 + slack, H]`` and a state holds the view
``buf[:, s:s+M]``. The next step writes its row at ``s+M`` (a row no handed-out view covers) and
returns the view ``buf[:, s+1:s+M+1]``. When the buffer is full, the last M rows are copied into a
fresh one: M rows every ``slack`` steps, so about 2 rows per step with ``slack = M``, at the cost
of holding up to ``2M + 1`` rows per batch row while a state of that buffer is alive.

Why old states never change:
- a row is written only at the end of the rows written so far (``buf._fl_end``) and only for the
  state whose view ends exactly there; a second step from an older state (a branch, e.g. the
  bootstrap-value step at the end of a rollout followed by the next rollout's first step from the
  same state) finds its end behind ``_fl_end`` and copies into a fresh buffer instead;
- rows are written in place only while autograd records nothing (``torch.no_grad`` or
  ``torch.inference_mode``, as in rollouts): a window saved for backward must not see its buffer's
  version counter move, so with grad enabled the window is built with ``torch.cat``, as before;
- a state this module did not make (a fresh zero state, rows sliced by the trainer with
  ``v[idx]``, ``detach()``/``to()`` copies, a state from a sequence call) has no buffer attached
  and is copied once into a fresh buffer; later steps append again.

Caveat: states of consecutive steps share storage, so writing INTO a returned state tensor in
place (nothing in fiberlab does; ``reset_state`` and the trainer's copies are out of place or
write into their own buffers) would also change the overlapping rows of the earlier states.
"""
from __future__ import annotations

import torch

_TAG = "_fl_window"  # attribute of a returned view: (buffer, start row)


def append_row(mem: torch.Tensor, row: torch.Tensor, slack: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``window = [mem; row]`` ``[B, M+1, H]`` and the next state ``window[:, 1:]`` ``[B, M, H]``.

    Values are exactly those of ``torch.cat([mem, row[:, None]], 1)``; only where they are stored
    differs (see the module docstring). ``slack`` (>= 1): in-place steps per buffer before a copy.
    """
    B, M, H = mem.shape
    if torch.is_grad_enabled():  # autograd may save the window: build it out of place
        window = torch.cat([mem, row.unsqueeze(1)], dim=1)
        return window, window[:, 1:]
    tag = getattr(mem, _TAG, None)
    if tag is not None:
        buf, start = tag
        end = start + M
        if (end < buf.shape[1] and getattr(buf, "_fl_end", None) == end and buf.dtype == row.dtype and buf.device == row.device
                and mem.data_ptr() == buf[:, start].data_ptr() and tuple(mem.shape) == (buf.shape[0], M, buf.shape[2])
                and (torch.is_inference_mode_enabled() or not buf.is_inference())):
            buf[:, end] = row
            buf._fl_end = end + 1
            return _views(buf, start, M)
    buf = torch.empty(B, M + 1 + slack, H, dtype=row.dtype, device=row.device)
    buf[:, :M] = mem
    buf[:, M] = row
    buf._fl_end = M + 1
    return _views(buf, 0, M)


def _views(buf: torch.Tensor, start: int, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window ``buf[:, start:start+M+1]`` and the next state's view, tagged so it can append."""
    window = buf[:, start:start + M + 1]
    nxt = buf[:, start + 1:start + M + 1]
    setattr(nxt, _TAG, (buf, start + 1))
    return window, nxt

