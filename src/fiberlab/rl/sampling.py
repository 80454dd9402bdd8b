"""Drawing one action per row from a categorical policy, with its log-probability, while acting.

Why a compiled loop: ``log_softmax``, ``exp``, ``multinomial``, ``gather`` and the two writes into
the rollout are six tensor operations on a ``[num_envs, A]`` matrix at every acting step; on
``demo`` (32 x 4) they took ~70 us a step, a tenth of it, where one pass over the rows takes ~15.
On CPU tensors numba does it (:func:`_sample_loop`); elsewhere, or without numba, the tensor form.

Both draw from ``p = softmax(z)``. The loop inverts the CDF with one uniform per row
(``a = min{j : u sum_k e_k < sum_{k<=j} e_k}``, ``e_k = exp(z_k - max z)``, ``u ~ U[0, 1)`` from
``generator``), ``multinomial`` draws its own way; so the two give the same distribution but not
the same actions for one seed. ``log p_a = z_a - max z - log sum_k e_k``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fiberlab.cortex.kernels.cpu_loops import as_numpy, jit, runs_here


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None = None, actions_out: torch.Tensor | None = None,
                   logp_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions ``[N]`` (int64) drawn from ``softmax(logits)`` (``[N, A]``) and their log-probabilities.

    ``actions_out``/``logp_out`` (``[N]``, any strides, e.g. a column of the rollout) also receive them.
    """
    n = logits.shape[0]
    if runs_here(logits) and not logits.requires_grad:
        actions = torch.empty(n, dtype=torch.int64)
        logp = torch.empty(n, dtype=logits.dtype)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        _sample_loop(as_numpy(logits), as_numpy(u), as_numpy(actions), as_numpy(logp))
    else:
        logp_all = torch.log_softmax(logits, dim=-1)
        actions = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(1)
        logp = logp_all.gather(1, actions[:, None]).squeeze(1)
    if actions_out is not None:
        actions_out.copy_(actions)
    if logp_out is not None:
        logp_out.copy_(logp)
    return actions, logp


@jit
def softmax_row(logits, i, e):  # pragma: no cover - compiled by numba
    """Row ``i`` of ``logits`` as ``e[j] = exp(z_j - max z)``; returns ``(max z, sum_j e[j])``, so
    ``p_j = e[j] / sum`` and ``log p_j = z_j - max z - log sum`` (stable for any logits)."""
    top = -math.inf
    for j in range(logits.shape[1]):
        top = max(top, float(logits[i, j]))
    total = 0.0
    for j in range(logits.shape[1]):
        e[j] = math.exp(logits[i, j] - top)
        total += e[j]
    return top, total


@jit
def _sample_loop(logits, u, actions, logp):  # pragma: no cover - compiled by numba (its results are tested)
    """One inverse-CDF draw per row of ``logits`` ``[N, A]`` with the uniforms ``u`` ``[N]``."""
    n, n_actions = logits.shape
    e = np.empty(n_actions)
    for i in range(n):
        top, total = softmax_row(logits, i, e)
        target = u[i] * total
        cum = 0.0
        pick = -1
        for j in range(n_actions):
            if e[j] > 0.0:  # never an action of probability 0, even when rounding leaves target >= cum
                pick = j
                cum += e[j]
                if target < cum:
                    break
        if pick < 0:  # a row of NaN or -inf logits: no distribution to draw from
            pick = 0
        actions[i] = pick
        logp[i] = logits[i, pick] - top - math.log(total)
