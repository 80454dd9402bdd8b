"""A model's gradients as views into one flat buffer, so zeroing and clipping are one operation each.

Why: ``optimizer.zero_grad`` and ``nn.utils.clip_grad_norm_`` touch every parameter tensor one by
one (on CPU torch has no multi-tensor kernels for them), so on ``demo``'s ten small tensors they
cost ~300 us a minibatch, about a tenth of the update. With every ``p.grad`` a view into one
buffer, backward accumulates into the buffer in place (autograd adds into an existing ``.grad``),
and the optimizer still sees one gradient per parameter.

Clipping is ``nn.utils.clip_grad_norm_``'s rule, on the whole buffer at once::

    g <- g * min(1, max_norm / (||g||_2 + 1e-6))

One difference from ``zero_grad(set_to_none=True)``: a parameter that took no part in the forward
pass keeps a zero gradient instead of ``None``, so Adam still steps it by its momentum. A parameter
never used has none (it stays put); one used only in some minibatches drifts on the others, as
with ``zero_grad(set_to_none=False)``. The policies here use every parameter in every pass.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class FlatGradients:
    """``p.grad`` of every trainable parameter as a view into one zeroed buffer per (device, dtype)."""

    def __init__(self, parameters: Iterable[nn.Parameter]) -> None:
        params = [p for p in parameters if p.requires_grad]
        self.buffers: list[torch.Tensor] = []
        for key in dict.fromkeys((p.device, p.dtype) for p in params):
            group = [p for p in params if (p.device, p.dtype) == key]
            buffer = torch.zeros(sum(p.numel() for p in group), device=key[0], dtype=key[1])
            offset = 0
            for p in group:
                p.grad = buffer[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            self.buffers.append(buffer)
        self.views = [p.grad for p in params]
        self.params = params

    def zero_(self) -> None:
        """Zero every gradient; re-attach a view wherever something replaced ``p.grad``."""
        for buffer in self.buffers:
            buffer.zero_()
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                p.grad = view

    def clip_(self, max_norm: float) -> torch.Tensor:
        """Scale all gradients so their joint 2-norm is at most ``max_norm``; returns the norm before."""
        for p, view in zip(self.params, self.views):
            if p.grad is not view:  # something (a hook, a wrapper) put a new tensor there: take it back in
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
                p.grad = view
        norms = [torch.linalg.vector_norm(b) for b in self.buffers]
        total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
        scale = (max_norm / (total + 1e-6)).clamp_(max=1.0)
        for buffer in self.buffers:
            buffer.mul_(scale.to(buffer.device))
        return total
