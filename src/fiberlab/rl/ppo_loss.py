"""The clipped PPO loss of one minibatch, with its gradient written out by hand.

Why by hand: autograd records the loss as ~40 small operations on ``[segments, steps]`` tensors and
replays ~40 backward nodes; on ``demo``'s 256-step minibatches that bookkeeping cost more than the
arithmetic. The gradient of this loss with respect to the network's two outputs (logits and values)
has a short closed form, so the forward pass computes it alongside the loss, and the backward pass
only scales it. Tested against autograd on the textbook expressions in float64
(``tests/test_ppo_update.py``), clipped and unclipped samples of both signs included.

With ``M`` samples, ``p = softmax(z)``, ``l = log p``, action ``a``, ratio ``r = exp(l_a - l_old)``,
advantage ``A`` and clip ``c``::

    pg      = mean(max(-A r, -A clip(r, 1-c, 1+c)))
    H       = mean(H_m),   H_m = -sum_j p_j l_j
    v       = 0.5 mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))   (clip_vloss)
    loss    = pg - ent_coef H + vf_coef v

    dloss/dz_j = [ g_m r_m (1[j = a] - p_j) + ent_coef p_j (l_j + H_m) ] / M
                 g_m = -A_m where the unclipped term is the max (-A r >= -A clip(r)), else 0
    dloss/dV   = vf_coef e_m / M,  e_m = V - R where the unclipped value term is the max (always
                 without clip_vloss); else V_old + (V - V_old) - R where the clip is not active
                 (|V - V_old| <= c: the two terms differ only by rounding, and autograd follows the
                 larger), and 0 where it is

(``d H_m / d z_j = -p_j (l_j + H_m)``; where the two terms of a max are equal, as inside the clip
range, both paths carry the same gradient, so taking the unclipped one is autograd's answer too.)

With ``norm_adv`` the advantages are first standardised over the minibatch,
``A = (A - mean(A)) / (std(A) + 1e-8)`` (``std`` unbiased, as ``torch.std``); no gradient flows
through them.

Two forms of the same arithmetic: on CPU tensors of up to ``LOOP_MAX_LOGITS`` logits a compiled
loop (numba, :func:`_loss_loop`) does it in one pass over the samples, in float64 whatever the
input's float type; elsewhere (larger minibatches, GPUs, or without numba) the tensor form does it
in the input's precision. The loop exists because on
``demo`` the tensor form's ~35 operations on 256-sample tensors cost ~400 us a minibatch in
dispatch alone, a tenth of the whole update; the two are tested against each other and autograd.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fiberlab.cortex.kernels.cpu_loops import as_numpy, jit, runs_here
from fiberlab.rl.sampling import softmax_row


class PPOLoss(torch.autograd.Function):
    """``loss, stats = PPOLoss.apply(logits, values, actions, old_logp, adv, returns, old_values,
    clip, ent_coef, vf_coef, clip_vloss, norm_adv)``; ``stats`` is ``[pg, v, H, approx_kl, clipfrac]``
    (no gradient). Logits ``[..., A]``, everything else ``[...]``, all float32 (or float64)."""

    @staticmethod
    def forward(ctx, logits, values, actions, old_logp, adv, returns, old_values, clip: float, ent_coef: float, vf_coef: float,
                clip_vloss: bool, norm_adv: bool = False):
        if use_loop(logits, values):
            loss, stats, dlogits, dvalues = _by_loop(logits, values, actions, old_logp, adv, returns, old_values, clip, ent_coef,
                                                     vf_coef, clip_vloss, norm_adv)
            ctx.save_for_backward(dlogits, dvalues)
            ctx.mark_non_differentiable(stats)
            return loss, stats
        m = values.numel()
        if norm_adv:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        ent_m = -(p * logp).sum(-1)
        logratio = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - old_logp
        ratio = logratio.exp()
        surr = -adv * ratio
        surr_clipped = -adv * ratio.clamp(1 - clip, 1 + clip)
        pg = torch.maximum(surr, surr_clipped).mean()
        err = values - returns
        if clip_vloss:
            err_clipped = old_values + (values - old_values).clamp(-clip, clip) - returns
            sq, sq_clipped = err.square(), err_clipped.square()
            v = 0.5 * torch.maximum(sq, sq_clipped).mean()
            inside = (values - old_values).abs() <= clip  # the clip passes the gradient (clamp's backward)
            dvalues = torch.where(sq >= sq_clipped, err, torch.where(inside, err_clipped, 0.0))
        else:
            v = 0.5 * err.square().mean()
            dvalues = err
        entropy = ent_m.mean()
        loss = pg - ent_coef * entropy + vf_coef * v
        # the gradients (module docstring), scaled by 1/M
        g = torch.where(surr >= surr_clipped, -adv, 0.0).mul_(ratio)  # dpg_m / dl_a
        dlogits = (logp + ent_m.unsqueeze(-1)).mul_(p).mul_(ent_coef)
        dlogits.sub_(p * g.unsqueeze(-1))
        dlogits.scatter_add_(-1, actions.unsqueeze(-1), g.unsqueeze(-1))
        ctx.save_for_backward(dlogits.div_(m), dvalues.mul_(vf_coef / m))
        with torch.no_grad():
            stats = torch.stack([pg, v, entropy, ((ratio - 1) - logratio).mean(), ((ratio - 1).abs() > clip).to(ratio.dtype).mean()])
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        dlogits, dvalues = ctx.saved_tensors
        return (grad_loss * dlogits, grad_loss * dvalues) + (None,) * 10  # nothing for the other 10 inputs


# Above this many logits the tensor form is faster (it vectorises ``exp`` and uses every thread; the
# loop runs on one): measured on 2 cores, loop against tensor form with backward, 256 x 4 logits
# 134 against 349 us, 2048 x 5 283 against 484, 8192 x 9 995 against 1283, 16384 x 18 3794 against 2928.
LOOP_MAX_LOGITS = 1 << 17


def use_loop(logits: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether :func:`_loss_loop` takes these outputs: numba present, CPU, one float dtype numpy has, not too many."""
    return runs_here(logits) and values.dtype == logits.dtype and values.device.type == "cpu" and logits.numel() <= LOOP_MAX_LOGITS


def _by_loop(logits, values, actions, old_logp, adv, returns, old_values, clip, ent_coef, vf_coef, clip_vloss, norm_adv):
    """The forward pass of :class:`PPOLoss` by :func:`_loss_loop`: loss, stats and the two gradients, as tensors."""
    dtype, n_actions = logits.dtype, logits.shape[-1]
    dlogits = torch.empty(logits.shape, dtype=dtype)
    dvalues = torch.empty(values.shape, dtype=dtype)
    out = torch.empty(6, dtype=dtype)
    # the five per-sample inputs as the rows of one float64 array: one copy instead of five conversions
    samples = torch.stack([values.detach(), old_logp, adv, returns, old_values]).to(torch.float64).reshape(5, -1)
    _loss_loop(as_numpy(logits.detach().reshape(-1, n_actions)), as_numpy(actions.reshape(-1)), as_numpy(samples),
               float(clip), float(ent_coef), float(vf_coef), bool(clip_vloss), bool(norm_adv),
               as_numpy(dlogits.view(-1, n_actions)), as_numpy(dvalues.view(-1)), as_numpy(out))
    return out[0].clone(), out[1:], dlogits, dvalues


@jit
def _loss_loop(logits, actions, samples, clip, ent_coef, vf_coef, clip_vloss, norm_adv, dlogits, dvalues, out):  # pragma: no cover - compiled by numba
    """PPOLoss's forward pass over ``m`` samples in one loop (the module docstring's formulas, float64).

    ``logits``/``dlogits`` ``[m, A]``; ``samples`` ``[5, m]``: values, old log-probabilities,
    advantages, returns, old values; ``actions``/``dvalues`` ``[m]``;
    ``out`` = ``[loss, pg, v, H, approx_kl, clipfrac]``.
    """
    m, n_actions = logits.shape
    values, old_logp, adv, returns, old_values = samples[0], samples[1], samples[2], samples[3], samples[4]
    mean, scale = 0.0, 1.0
    if norm_adv:  # A <- (A - mean) / (std + 1e-8), std unbiased
        for i in range(m):
            mean += adv[i]
        mean /= m
        var = 0.0
        for i in range(m):
            var += (adv[i] - mean) ** 2
        scale = 1.0 / (math.sqrt(var / (m - 1)) + 1e-8) if m > 1 else math.nan
    pg = v = ent = kl = clipped = 0.0
    e = np.empty(n_actions)  # exp(z_j - max z) of the current row
    for i in range(m):
        top, total = softmax_row(logits, i, e)  # log p = z - logsumexp(z); one exp per logit
        lse = top + math.log(total)
        h = 0.0  # H_m = -sum_j p_j l_j
        for j in range(n_actions):
            h -= e[j] / total * (logits[i, j] - lse)
        a = actions[i]
        logratio = (logits[i, a] - lse) - old_logp[i]
        ratio = math.exp(logratio)
        advantage = (adv[i] - mean) * scale
        surr = -advantage * ratio
        surr_clipped = -advantage * min(max(ratio, 1.0 - clip), 1.0 + clip)
        if surr >= surr_clipped:  # the unclipped term is the max: g_m = -A r carries the gradient
            pg += surr
            g = surr
        else:
            pg += surr_clipped
            g = 0.0
        if not (surr == surr and surr_clipped == surr_clipped):
            pg += math.nan  # a NaN in either term makes the loss NaN, as torch.maximum does
        # dloss/dz_j = [g r (1[j = a] - p_j) + ent_coef p_j (l_j + H_m)] / M  (g already holds -A r)
        for j in range(n_actions):
            pj = e[j] / total
            dlogits[i, j] = (ent_coef * pj * (logits[i, j] - lse + h) - g * pj) / m
        dlogits[i, a] += g / m
        err = values[i] - returns[i]
        if clip_vloss:
            err_clipped = old_values[i] + min(max(values[i] - old_values[i], -clip), clip) - returns[i]
            sq, sq_clipped = err * err, err_clipped * err_clipped
            if sq >= sq_clipped:
                v += sq
                dvalues[i] = vf_coef * err / m
            else:  # the clipped term is larger: its gradient where the clip is not active
                v += sq_clipped
                dvalues[i] = vf_coef * err_clipped / m if abs(values[i] - old_values[i]) <= clip else 0.0
            if not (sq == sq and sq_clipped == sq_clipped):
                v += math.nan
        else:
            v += err * err
            dvalues[i] = vf_coef * err / m
        ent += h
        kl += (ratio - 1.0) - logratio
        if abs(ratio - 1.0) > clip:
            clipped += 1.0
    pg, v, ent = pg / m, 0.5 * v / m, ent / m
    out[0] = pg - ent_coef * ent + vf_coef * v
    out[1], out[2], out[3], out[4], out[5] = pg, v, ent, kl / m, clipped / m
