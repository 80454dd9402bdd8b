"""A convolution computed as one gather and one matrix product (CPU), for small feature maps.

Why: Metta's ``fast`` network convolves 11x11 observations with 34 channels into 3x3 and then 1x1
maps. At those sizes oneDNN's convolution kernel ran at about 30 GFLOP/s on one core of our
benchmark CPU, while one ``[48*9, 850] x [850, 64]`` matrix product with the same multiply-adds
runs at about 100 (measured in ``benchmarks/train_throughput.py``'s profile, docs/benchmarks.md).
So the convolution is written as what it is::

    y[b, o, i, j] = bias[o] + sum_{u, v, c} W[o, c, u, v] x[b, c, s i + u, s j + v]
                  = (P W_flat^T)[(b, i, j), o]       P[(b, i, j), (u, v, c)] = x[b, c, s i + u, s j + v]

``P`` (the patches) is gathered with one ``index_select`` over the flattened input, the index made
once per input shape and layout. From a channels-last input that needs no gradient (the first
conv, reading observations: the policy hands them over channels-last when it has patch convs),
each patch row is k runs of ``k C`` contiguous numbers, and one strided copy of the unfolded view
does the gather 2-3x faster than ``index_select`` (0.26 against 0.09 ms at B=48, 33 against 17 ms
at B=1536, 2 threads); with a gradient to the input, ``index_select``'s backward is the faster one.
The weight reordered into P's column order is a copy; while acting (no autograd) it is kept until
the weight changes (:class:`~fiberlab.cortex.kernels.step_tables.StepTables`, as the cortex cells
keep their step tables). The output is returned as an ``[B, O, OH, OW]`` view of
channels-last memory, so a following ``PatchConv2d`` reads it without a copy (its patches are then
runs of C contiguous numbers; where a kernel covers the whole map, as ``fast``'s second conv
does, no gather is needed at all).

Everything else is an ordinary ``nn.Conv2d``: the same parameters, names and initialisation (so
checkpoints, ``fiberlab.fibration`` and ``torch.compile`` see a Conv2d), and the same function up to
float summation order (tested). Used only where it was measured to win: the architecture record's
``patch_convs`` flag (the ``atari`` network's large early maps are faster in oneDNN), on the CPU
(CUDA keeps cuDNN), for unpadded, undilated, ungrouped square kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fiberlab.cortex.kernels.step_tables import StepTables


class PatchConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU forward is gather + matmul (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._indices: dict[tuple, torch.Tensor | None] = {}  # (C, H, W, channels_last, device) -> gather index
        self._patch_weight = StepTables()  # the reordered weight, reused while acting (no autograd, weight unchanged)

    def _weight_columns(self) -> torch.Tensor:
        """The weight as ``[O, k k C]``, columns in P's (u, v, c) order (a copy: kept while acting)."""
        o, c, k, _ = self.weight.shape
        return self.weight.permute(0, 2, 3, 1).reshape(o, k * k * c)

    def _supported(self, x: torch.Tensor) -> bool:
        k, s = self.kernel_size, self.stride
        return (x.device.type == "cpu" and x.dim() == 4 and k[0] == k[1] and s[0] == s[1] and self.groups == 1
                and self.padding_mode == "zeros" and all(p == 0 for p in self.padding) and all(d == 1 for d in self.dilation))

    def _index(self, c: int, h: int, w: int, channels_last: bool, device: torch.device) -> torch.Tensor | None:
        """Flat input offsets of P's columns, row by row: (i, j) outer, (u, v, c) inner; ``None``
        when that is the input's own memory order (one output position, channels-last input)."""
        key = (c, h, w, channels_last, device)
        if key not in self._indices:
            k, s = self.kernel_size[0], self.stride[0]
            offsets = torch.arange(c * h * w, device=device)
            grid = offsets.view(h, w, c).permute(2, 0, 1) if channels_last else offsets.view(c, h, w)  # grid[c, y, x] = offset
            patches = grid.unfold(1, k, s).unfold(2, k, s)  # [C, OH, OW, k, k]
            index = patches.permute(1, 2, 3, 4, 0).reshape(-1)
            self._indices[key] = None if torch.equal(index, offsets) else index  # equal shapes and values only
        return self._indices[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._supported(x):
            return super().forward(x)
        b, c, h, w = x.shape
        k, s, o = self.kernel_size[0], self.stride[0], self.out_channels
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        flat = (x.permute(0, 2, 3, 1) if channels_last else x).reshape(b, c * h * w)
        index = self._index(c, h, w, channels_last, x.device)
        # under autocast a float32 product runs in its dtype: patches and weight are made in it
        # directly (a float32 patch matrix cast afterwards is one more pass: 18 against 4 ms at B=1536)
        cast = torch.is_autocast_enabled("cpu") and x.dtype == torch.float32  # autocast casts float32 only
        dtype = torch.get_autocast_dtype("cpu") if cast else x.dtype
        if index is None:
            patches = flat
        elif channels_last and not x.requires_grad:  # a strided copy of runs of k*C numbers (below)
            patches = torch.empty((b, oh, ow, k, k, c), dtype=dtype, device=x.device)
            patches.copy_(x.permute(0, 2, 3, 1).unfold(1, k, s).unfold(2, k, s).permute(0, 1, 2, 4, 5, 3))
        else:
            patches = flat.index_select(1, index)
        weight = self._patch_weight.get((self.weight,), lambda: self._weight_columns().to(dtype), (dtype, x.device))
        y = F.linear(patches.view(b * oh * ow, k * k * c), weight, self.bias)
        return y.view(b, oh, ow, o).permute(0, 3, 1, 2)
