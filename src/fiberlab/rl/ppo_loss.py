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
    dloss/dV   = vf_coef (V - R) k_m / M
                 k_m = 1 where the unclipped value term is the max (always without clip_vloss), else 0

(``d H_m / d z_j = -p_j (l_j + H_m)``; where the two terms of a max are equal, as inside the clip
range, both paths carry the same gradient, so taking the unclipped one is autograd's answer too.)
"""
from __future__ import annotations

import torch


class PPOLoss(torch.autograd.Function):
    """``loss, stats = PPOLoss.apply(logits, values, actions, old_logp, adv, returns, old_values,
    clip, ent_coef, vf_coef, clip_vloss)``; ``stats`` is ``[pg, v, H, approx_kl, clipfrac]`` (no
    gradient). Logits ``[..., A]``, everything else ``[...]``, all float32 (or float64)."""

    @staticmethod
    def forward(ctx, logits, values, actions, old_logp, adv, returns, old_values, clip: float, ent_coef: float, vf_coef: float, clip_vloss: bool):
        m = values.numel()
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
            dvalues = err.mul_((sq >= sq_clipped).to(err.dtype))  # err is not used after this
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
        return grad_loss * dlogits, grad_loss * dvalues, None, None, None, None, None, None, None, None, None
