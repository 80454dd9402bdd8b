"""The PPO update (Schulman et al. 2017) over minibatches of whole BPTT segments.

Names follow the paper and CleanRL so the code can be checked line by line:

    ratio    = exp(logp_new - logp_old)
    pg_loss  = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))
    v_loss   = 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2))
    loss     = pg_loss - ent_coef * entropy + vf_coef * v_loss
    approx_kl = mean((ratio - 1) - logratio)        (Schulman's low-variance estimator)
    clipfrac  = mean(|ratio - 1| > eps)

The gradient of this loss to the network's logits and values is written out in ``rl/ppo_loss.py``
(tested against autograd on these expressions).

The resets are the rollout's own (``Rollout.training_resets``): the forward pass gets the state
carried into each segment and zeroes it where an episode starts, exactly as acting did.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fiberlab.config import TrainerConfig
from fiberlab.cortex.base import map_state
from fiberlab.errors import OperationFailed
from fiberlab.rl.gradients import FlatGradients
from fiberlab.rl.ppo_loss import PPOLoss
from fiberlab.rl.precision import autocast, run_precision
from fiberlab.rl.rollout import Rollout


class TrainingDiverged(OperationFailed, RuntimeError):
    """The loss became NaN or infinite; the message says at which epoch and minibatch (exit code 1)."""


@dataclass
class UpdateStats:
    """Means over the minibatches of one update; the names are the metrics row's keys."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clipfrac: float
    explained_variance: float
    minibatches: int  # optimizer steps taken (fewer than epochs x minibatches after a target_kl stop)


def segment_minibatches(num_segments: int, horizon: int, minibatch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffle segment indices and split them into minibatches of ``minibatch_size`` steps."""
    per_mb = max(1, minibatch_size // horizon)
    perm = torch.randperm(num_segments, generator=generator)
    return [perm[i : i + per_mb] for i in range(0, num_segments, per_mb)]


def ppo_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: TrainerConfig,
    generator: torch.Generator,
    epoch: int = 0,
) -> UpdateStats:
    """Several epochs of clipped-PPO over ``rollout``; ``model`` may be a DDP wrapper.

    With ``cfg.target_kl`` set, the update stops at the first minibatch whose ``approx_kl`` (to the
    rollout policy) exceeds it, before that minibatch's step is applied (SB3 stops the same way at
    1.5 x target_kl; CleanRL checks after each epoch). Its losses still count in the statistics.
    """
    n, horizon = rollout.actions.shape
    resets = rollout.training_resets(cfg.reset_in_training)
    device = rollout.obs.device
    precision = run_precision(cfg.precision, getattr(model, "module", model), device)  # as acting ran
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
    measured = steps = 0
    stop = False
    grads: FlatGradients | None = None  # made at the first step: zeroed and clipped in one operation each
    for _ in range(cfg.update_epochs):
        for mb_i, idx in enumerate(segment_minibatches(n, horizon, cfg.minibatch_size, generator)):
            if cfg.pass_state:
                state = map_state(rollout.initial_state, lambda v: v[idx])  # the segments' rows (nested dicts too)
            else:
                state = None
            with autocast(precision, device):
                logits, newvalue, _ = model(rollout.obs[idx], state, resets[idx])
            logits, newvalue = logits.float(), newvalue.float()
            # the losses above (advantages standardised per minibatch with norm_adv), their gradient
            # to logits and values written out (rl/ppo_loss.py)
            loss, mb_stats = PPOLoss.apply(logits, newvalue, rollout.actions[idx], rollout.logprobs[idx], advantages[idx], returns[idx],
                                           rollout.values[idx], cfg.clip_coef, cfg.ent_coef, cfg.vf_coef, cfg.clip_vloss, cfg.norm_adv)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss became {loss_value} at epoch {epoch}, minibatch {mb_i}: training stopped")
            for name, value in zip(totals, mb_stats.tolist(), strict=True):  # policy_loss, value_loss, entropy, approx_kl, clipfrac
                totals[name] += value
            measured += 1
            if cfg.target_kl is not None and mean_over_ranks(mb_stats[3]) > cfg.target_kl:
                stop = True  # every DDP rank sees the same mean, so all stop at the same minibatch
                break

            if grads is None:
                grads = FlatGradients(model.parameters())  # zeroed (rl/gradients.py)
            else:
                grads.zero_()
            loss.backward()
            grads.clip_(cfg.max_grad_norm)  # nn.utils.clip_grad_norm_'s rule
            optimizer.step()
            steps += 1
        if stop:
            break
    y_pred, y_true = rollout.values.flatten(), returns.flatten()
    var_y = torch.var(y_true)
    explained_var = float("nan") if var_y == 0 else float(1 - torch.var(y_true - y_pred) / var_y)
    means = {name: total / max(measured, 1) for name, total in totals.items()}
    return UpdateStats(**means, explained_variance=explained_var, minibatches=steps)


def mean_over_ranks(x: torch.Tensor) -> float:
    """``x`` averaged over the DDP ranks (itself without DDP), as a Python float."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        x = x.detach().clone()
        torch.distributed.all_reduce(x)  # SUM: the one reduction every backend has
        x /= torch.distributed.get_world_size()
    return float(x)
