"""PPO for G independent learners at once: one per goal, stacked over a goal axis.

Why: DICP trains one Stable-Baselines3 PPO per goal (100 copies of one goal each), about 3 minutes
a goal, 4 hours for Darkroom's 81 goals. Each learner is tiny (two 64x64 tanh MLPs, 2,000-step
rollouts, minibatches of 50), so one learner leaves the CPU idle between Python calls. Here every
goal keeps its own weights and optimizer state, but all goals are computed together: one batched
matmul per layer (``torch.baddbmm`` over the goal axis), one backward, one Adam step.

Why the goals stay independent (learning goal g inside a batch equals learning it alone, up to float
round-off):

- the loss is the SUM over goals of each goal's own mean loss, so d(loss)/d(theta_g) is goal g's own
  gradient (no other goal's term depends on theta_g);
- gradient clipping is per goal: ``||grad_g||`` is the norm over goal g's slice of every parameter,
  ``grad_g *= min(1, max_norm / (||grad_g|| + 1e-6))`` as ``torch.nn.utils.clip_grad_norm_`` does for
  one learner;
- Adam is elementwise (m, v and the update of one number use only that number's gradient), so one
  Adam over the stacked tensor is exactly G Adams that step together;
- every goal has its own ``torch.Generator`` seeded ``alg_seed + goal`` (DICP's seed): it draws that
  goal's initial weights, its action-sampling uniforms and its minibatch permutations, in the same
  order whether the goal is learned alone or with 80 others. All random draws happen on the CPU, so
  the draws do not depend on the device either.

PPO itself is SB3's as DICP runs it (``MlpPolicy``, default settings but lr 3e-4, n_steps 20,
batch 50, 20 epochs, entropy 0): separate actor and critic tanh MLPs, orthogonal init (gain sqrt 2 in
hidden layers, 0.01 on the action head, 1 on the value head, zero biases), the raw (x, y) as float
inputs (SB3 does not normalise Box observations), GAE(gamma, lambda) bootstrapped from the value of
the next observation except where ``done`` (Darkroom ends at the horizon and reports ``terminated``,
so SB3 does not bootstrap there, and neither do we), advantages normalised per minibatch, the clipped
surrogate, an unclipped value loss times ``vf_coef``, Adam (eps 1e-5) with a constant learning rate.

The parameters of all goals live in one flat tensor (each layer a contiguous ``[G, in, out]`` block
of it) and so do their gradients: the optimizer is one fused Adam over one tensor, and the backward
(written out by hand, checked against autograd in the tests) writes each layer's gradient in place.
Profiled on the 2-core CPU: the batched matmuls are about half of a step, Adam a tenth, tanh and
its derivative a sixth; the same step through autograd (which copied every layer's gradient into
the flat tensor) took about 30 % longer.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from fiberlab.devices import resolve_device
from fiberlab.distill.config import CollectConfig
from fiberlab.distill.histories import GoalHistory
from fiberlab.envs.darkroom import GridTasks
from fiberlab.errors import BadInput


# =============================================================================== the stacked network
class StackedActorCritic:
    """G independent SB3-style actor-critics (separate tanh MLPs), stacked over a goal axis.

    Every layer is a weight ``[G, in, out]`` (a layer is ``x @ W + b``, one ``torch.baddbmm`` for all
    goals) and a bias ``[G, 1, out]``; all of them are contiguous views into ONE flat parameter
    tensor, and their gradients views into one flat gradient tensor of the same layout. So the
    backward writes each layer's gradient in place (``out=``), and the optimizer is one fused Adam
    over one tensor. Per goal, in layout order: actor layers then critic layers.

    The backward is written out by hand (the chain rule through ``tanh`` MLPs is four lines): for
    these tiny layers, autograd's bookkeeping and the copy of every gradient into the flat tensor
    made a step about 30 % slower.
    ``tests/test_distill_collect.py`` checks it against autograd.
    """

    def __init__(self, generators: Sequence[torch.Generator], obs_dim: int, num_actions: int,
                 hidden: Sequence[int], device: torch.device | str = "cpu") -> None:
        G = self.num_goals = len(generators)
        self.obs_dim, self.num_actions, self.hidden = obs_dim, num_actions, list(hidden)
        self.device = torch.device(device)
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for net, out_dim in (("pi", num_actions), ("vf", 1)):
            dims = [obs_dim, *self.hidden, out_dim]
            for i in range(len(dims) - 1):
                shapes += [(f"{net}{i}.w", (dims[i], dims[i + 1])), (f"{net}{i}.b", (1, dims[i + 1]))]
        self.num_params = sum(math.prod(s) for _, s in shapes)  # per goal
        flat = torch.zeros(G * self.num_params)
        self.flat = flat.to(self.device)
        self.grad = torch.zeros_like(self.flat)
        self.flat.grad = self.grad  # the optimizer reads the gradient from here
        self.params: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        pos = 0
        for name, shape in shapes:
            n = G * math.prod(shape)
            self.params[name] = self.flat[pos:pos + n].view(G, *shape)
            self.grads[name] = self.grad[pos:pos + n].view(G, *shape)
            pos += n
        n_layers = len(self.hidden) + 1
        self.nets = {net: [(self.params[f"{net}{i}.w"], self.params[f"{net}{i}.b"]) for i in range(n_layers)] for net in ("pi", "vf")}
        self.net_grads = {net: [(self.grads[f"{net}{i}.w"], self.grads[f"{net}{i}.b"]) for i in range(n_layers)] for net in ("pi", "vf")}
        self._init(generators)

    def _init(self, generators: Sequence[torch.Generator]) -> None:
        """SB3's orthogonal init, per goal from that goal's generator, in SB3's module order (actor
        hidden, critic hidden, action head, value head); biases zero."""
        n_hidden = len(self.hidden)
        names = [f"pi{i}.w" for i in range(n_hidden)] + [f"vf{i}.w" for i in range(n_hidden)] + [f"pi{n_hidden}.w", f"vf{n_hidden}.w"]
        gains = [math.sqrt(2)] * (2 * n_hidden) + [0.01, 1.0]
        with torch.no_grad():
            for g, gen in enumerate(generators):
                for name, gain in zip(names, gains):
                    fan_in, fan_out = self.params[name].shape[1:]
                    w = torch.empty(fan_out, fan_in)  # torch.nn.Linear's [out, in], as SB3 initialises it
                    torch.nn.init.orthogonal_(w, gain=gain, generator=gen)
                    self.params[name][g] = w.t().to(self.device)

    # ----------------------------------------------------------------------- forward and backward
    @staticmethod
    def _mlp(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """h_{i+1} = tanh(h_i W_i + b_i), the last layer linear; returns the output and every layer's input."""
        inputs = []
        h = x
        for i, (w, b) in enumerate(layers):
            inputs.append(h)
            h = torch.baddbmm(b, h, w)
            if i < len(layers) - 1:
                h = h.tanh_()
        return h, inputs

    @staticmethod
    def _mlp_backward(layers: list[tuple[torch.Tensor, torch.Tensor]], grads: list[tuple[torch.Tensor, torch.Tensor]],
                      inputs: list[torch.Tensor], g_out: torch.Tensor) -> None:
        """Chain rule from d(loss)/d(output) [G, B, out]: dW_i = h_i^T g_i, db_i = sum_B g_i,
        g_{i-1} = (g_i W_i^T) * (1 - h_i^2) (tanh' = 1 - tanh^2); written into the gradient views."""
        g = g_out
        for i in reversed(range(len(layers))):
            gw, gb = grads[i]
            torch.bmm(inputs[i].transpose(1, 2), g, out=gw)
            torch.sum(g, dim=1, keepdim=True, out=gb)
            if i > 0:
                g = torch.ops.aten.tanh_backward(torch.bmm(g, layers[i][0].transpose(1, 2)), inputs[i])

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``obs`` [G, B, obs_dim] float -> (logits [G, B, A], values [G, B], cache for :meth:`backward`)."""
        logits, pi_in = self._mlp(self.nets["pi"], obs)
        values, vf_in = self._mlp(self.nets["vf"], obs)
        return logits, values.squeeze(-1), (pi_in, vf_in)

    def backward(self, cache: Any, g_logits: torch.Tensor, g_values: torch.Tensor) -> None:
        """Write d(loss)/d(parameters) into :attr:`grad`, given d(loss)/d(logits) and d(loss)/d(values)."""
        pi_in, vf_in = cache
        self._mlp_backward(self.nets["pi"], self.net_grads["pi"], pi_in, g_logits)
        self._mlp_backward(self.nets["vf"], self.net_grads["vf"], vf_in, g_values.unsqueeze(-1))

    def grad_norms(self) -> torch.Tensor:
        """[G]: each goal's gradient norm over its slice of every parameter."""
        G = self.num_goals
        per_layer = torch.stack([g.reshape(G, -1).norm(dim=1) for g in self.grads.values()])  # [layers, G]
        return per_layer.norm(dim=0)

    def scale_grads(self, coef: torch.Tensor) -> None:
        """Multiply goal g's gradient by coef[g]."""
        c = coef.view(-1, 1, 1)
        for g in self.grads.values():
            g.mul_(c)

    def goal_parameters(self, g: int) -> dict[str, torch.Tensor]:
        """Goal g's parameters, by layer name (copies)."""
        return {name: p[g].clone() for name, p in self.params.items()}


# =============================================================================== PPO
class Rollout(NamedTuple):
    """One rollout of every goal's streams, time-major [n_steps, G, S, ...]."""

    obs: torch.Tensor  # [n, G, S, 2] long: what the agent saw
    actions: torch.Tensor  # [n, G, S] long
    rewards: torch.Tensor  # [n, G, S] float32
    next_states: torch.Tensor  # [n, G, S, 2] long: true next state (terminal at done)
    dones: torch.Tensor  # [n, G, S] bool
    log_probs: torch.Tensor  # [n, G, S]: log pi_old(a|s), for the PPO ratio
    action_probs: torch.Tensor  # [n, G, S]: pi_old(a|s), recorded
    values: torch.Tensor  # [n, G, S]: V_old(s)
    last_values: torch.Tensor  # [G, S]: V_old of the observation after the rollout


def log_softmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi, pi) over the last axis: z = l - max l, log pi = z - log sum exp z. By hand because
    aten's log_softmax is ~10x slower than these four ops on a 5-wide last axis."""
    z = logits - logits.amax(-1, keepdim=True)
    e = z.exp()
    total = e.sum(-1, keepdim=True)
    return z - total.log(), e / total


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_values: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over time (axis 0), as SB3's RolloutBuffer computes it.

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t);  A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1};
    returns R_t = A_t + V(s_t). ``done_t`` means the episode ended at step t (no bootstrap there).
    """
    n = rewards.shape[0]
    adv = torch.empty_like(rewards)
    last = torch.zeros_like(last_values)
    not_done = 1.0 - dones.to(rewards.dtype)
    for t in reversed(range(n)):
        next_v = last_values if t == n - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_v * not_done[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values


@dataclass
class LearnResult:
    """What :meth:`BatchedPPO.learn` recorded: every step of every stream, goal-major for writing."""

    goals: list[int]
    states: torch.Tensor  # [G, T, S, 2] uint8
    actions: torch.Tensor  # [G, T, S] uint8
    rewards: torch.Tensor  # [G, T, S] float32
    next_states: torch.Tensor  # [G, T, S, 2] uint8
    dones: torch.Tensor  # [G, T, S] bool
    action_probs: torch.Tensor  # [G, T, S] float32
    episode_returns: list[torch.Tensor] = field(default_factory=list)  # each [G]: mean over streams of one episode

    def goal(self, i: int) -> GoalHistory:
        """The i-th goal of this batch (not the goal index) as a :class:`GoalHistory` in the schema's dtypes."""
        return GoalHistory(
            states=self.states[i].numpy().astype(np.int32), actions=self.actions[i].numpy().astype(np.int32),
            rewards=self.rewards[i].numpy().copy(), next_states=self.next_states[i].numpy().astype(np.int32),
            dones=self.dones[i].numpy().copy(), action_probs=self.action_probs[i].numpy().copy())

    def curve(self) -> np.ndarray:
        """[n_episodes, G]: each goal's mean return over its streams, per episode."""
        if not self.episode_returns:
            return np.zeros((0, len(self.goals)))
        return torch.stack(self.episode_returns).numpy()


class BatchedPPO:
    """One PPO learner per goal of ``goals`` (``n_stream`` envs of that goal each), all stepped together.

    ``learn(n_updates)`` runs SB3's loop: a rollout of ``n_steps`` per stream, then ``n_epochs``
    epochs of minibatch updates on it, ``n_updates`` times, recording every step.
    """

    def __init__(self, cfg: CollectConfig, goals: Sequence[int], device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.goals = [int(g) for g in goals]
        repeated = sorted({g for g in self.goals if self.goals.count(g) > 1})
        if repeated:
            raise BadInput(f"goal {repeated[0]} is listed twice: each goal is learned once")
        self.device = resolve_device(device if device is not None else cfg.device)
        G, S = len(self.goals), cfg.n_stream
        self.num_goals, self.n_stream = G, S
        self.env = GridTasks(cfg.env, torch.tensor(self.goals).repeat_interleave(S), device=self.device)  # env g*S+s
        self.generators = [torch.Generator().manual_seed(cfg.alg_seed + g) for g in self.goals]
        self.model = StackedActorCritic(self.generators, 2, self.env.num_actions, cfg.hidden, self.device)
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam([self.model.flat], lr=cfg.learning_rate, eps=cfg.adam_eps, fused=fused)
        self.obs = self.env.reset().view(G, S, 2)
        self.episode_sum = torch.zeros(G, S, device=self.device)
        self.num_updates = 0

    # ----------------------------------------------------------------------- randomness (per goal, CPU)
    def _uniforms(self) -> torch.Tensor:
        """[n_steps, G, S] uniforms for inverse-CDF action sampling, goal g's from its own generator."""
        n, S = self.cfg.n_steps, self.n_stream
        return torch.stack([torch.rand(n, S, generator=gen) for gen in self.generators], dim=1).to(self.device)

    def _permutations(self, n: int) -> torch.Tensor:
        """[G, n_epochs, n]: a fresh permutation of the rollout per goal per epoch."""
        return torch.stack([torch.stack([torch.randperm(n, generator=gen) for _ in range(self.cfg.n_epochs)])
                            for gen in self.generators]).to(self.device)

    # ----------------------------------------------------------------------- acting
    @torch.no_grad()
    def rollout(self) -> Rollout:
        """``n_steps`` batched steps of every stream; the action probabilities come from this forward
        pass (the behaviour policy at action time), not from a second one."""
        cfg, G, S = self.cfg, self.num_goals, self.n_stream
        n, A = cfg.n_steps, self.env.num_actions
        u = self._uniforms()
        obs = torch.empty(n, G, S, 2, dtype=torch.long, device=self.device)
        nxt = torch.empty_like(obs)
        actions = torch.empty(n, G, S, dtype=torch.long, device=self.device)
        rewards = torch.empty(n, G, S, device=self.device)
        dones = torch.empty(n, G, S, dtype=torch.bool, device=self.device)
        logp = torch.empty(n, G, S, device=self.device)
        probs_taken = torch.empty_like(logp)
        values = torch.empty_like(logp)
        for t in range(n):
            obs[t] = self.obs
            logits, values[t], _ = self.model.forward(self.obs.float())
            log_pi, pi = log_softmax(logits)  # [G, S, A]
            # inverse CDF: the first action whose cumulative probability exceeds u (clamped against round-off)
            a = (pi.cumsum(-1) <= u[t].unsqueeze(-1)).sum(-1).clamp_(max=A - 1)
            actions[t] = a
            logp[t] = log_pi.gather(-1, a.unsqueeze(-1)).squeeze(-1)
            probs_taken[t] = pi.gather(-1, a.unsqueeze(-1)).squeeze(-1)
            step = self.env.step(a.view(-1))
            nxt[t] = step.next_state.view(G, S, 2)
            rewards[t] = step.reward.view(G, S)
            dones[t] = step.done.view(G, S)
            self.obs = step.obs.view(G, S, 2)
        _, last_values, _ = self.model.forward(self.obs.float())
        return Rollout(obs, actions, rewards, nxt, dones, logp, probs_taken, values, last_values)

    # ----------------------------------------------------------------------- learning
    def train(self, ro: Rollout) -> None:
        """``n_epochs`` passes over the rollout in minibatches of ``batch_size``, per goal (SB3's ``train``)."""
        cfg, G = self.cfg, self.num_goals
        adv, ret = gae(ro.rewards, ro.values, ro.dones, ro.last_values, cfg.gamma, cfg.gae_lambda)
        # one [G, N, 6] table per goal (x, y, action, log pi_old, advantage, return): one gather per epoch
        data = torch.cat([ro.obs.float(), ro.actions.unsqueeze(-1).float(), ro.log_probs.unsqueeze(-1),
                          adv.unsqueeze(-1), ret.unsqueeze(-1)], dim=-1)  # [n, G, S, 6]
        data = data.transpose(0, 1).reshape(G, -1, 6)
        N, B = data.shape[1], cfg.batch_size
        perms = self._permutations(N)
        model, opt, max_norm = self.model, self.optimizer, cfg.max_grad_norm
        for epoch in range(cfg.n_epochs):
            shuffled = data.gather(1, perms[:, epoch].unsqueeze(-1).expand(G, N, 6))
            for start in range(0, N, B):
                mb = shuffled[:, start:start + B]
                self.loss_and_grad(mb[..., 0:2].contiguous(), mb[..., 2:3].long(), mb[..., 3], mb[..., 4], mb[..., 5])
                # clip_grad_norm_ per goal: g *= min(1, max_norm / (||g|| + 1e-6)), ||g|| over that goal's parameters
                model.scale_grads((max_norm / (model.grad_norms() + 1e-6)).clamp_(max=1.0))
                opt.step()
        self.num_updates += 1

    def loss_and_grad(self, obs: torch.Tensor, act: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      returns: torch.Tensor) -> torch.Tensor:
        """SB3's PPO loss of one minibatch per goal, and its gradient written into ``model.grad``.

        ``obs`` [G, B, 2], ``act`` [G, B, 1] long, the rest [G, B]. Per goal g (means over its B samples):
        L_g = -mean(min(r A, clip(r, 1-eps, 1+eps) A)) + vf_coef mean((R - V)^2) - ent_coef mean(H),
        r = exp(log pi(a|s) - log pi_old(a|s)), A normalised within the minibatch. Returns L [G]; the
        gradient is that of sum_g L_g, i.e. every goal's own gradient.
        """
        cfg = self.cfg
        B = obs.shape[1]
        if B > 1:  # SB3 normalises per minibatch (torch.std: unbiased)
            advantages = (advantages - advantages.mean(1, keepdim=True)) / (advantages.std(1, keepdim=True) + 1e-8)
        logits, values, cache = self.model.forward(obs)
        log_pi, pi = log_softmax(logits)
        logp = log_pi.gather(-1, act).squeeze(-1)
        ratio = torch.exp(logp - old_logp)
        unclipped = advantages * ratio
        clipped = advantages * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
        surrogate = torch.minimum(unclipped, clipped)
        v_err = values - returns
        loss = -surrogate.mean(1) + cfg.vf_coef * v_err.square().mean(1)
        # d L / d log pi(a|s) = -A r / B where the unclipped term is the minimum (inside the clip range
        # both are equal and torch.min's gradient reaches r either way), 0 where the clipped one is
        g_logp = torch.where(unclipped <= clipped, unclipped, 0.0).mul_(-1.0 / B)
        # d log pi(a|s) / d logits = onehot(a) - pi
        g_logits = (pi * g_logp.unsqueeze(-1)).neg_().scatter_add_(-1, act, g_logp.unsqueeze(-1))
        if cfg.ent_coef:
            entropy = -(pi * log_pi).sum(-1)  # H = -sum p log p; dH/dz_j = -p_j (log p_j + H)
            loss = loss - cfg.ent_coef * entropy.mean(1)
            g_logits += (cfg.ent_coef / B) * pi * (log_pi + entropy.unsqueeze(-1))
        g_values = v_err.mul_(2.0 * cfg.vf_coef / B)  # d vf_coef mean((V - R)^2) / dV
        self.model.backward(cache, g_logits, g_values)
        return loss

    def learn(self, n_updates: int, on_update: Callable[[int, torch.Tensor], None] | None = None) -> LearnResult:
        """``n_updates`` x (rollout, train), recording every step; ``on_update(k, mean_returns [G])``
        is called after update k (1-based) with the goals' latest mean episode return."""
        G, S, n = self.num_goals, self.n_stream, self.cfg.n_steps
        T = n_updates * n
        if self.env.grid > 255:
            raise BadInput(f"grid {self.env.grid} does not fit the recorder's uint8 states")
        rec = LearnResult(
            goals=self.goals,
            states=torch.empty(G, T, S, 2, dtype=torch.uint8), actions=torch.empty(G, T, S, dtype=torch.uint8),
            rewards=torch.empty(G, T, S), next_states=torch.empty(G, T, S, 2, dtype=torch.uint8),
            dones=torch.empty(G, T, S, dtype=torch.bool), action_probs=torch.empty(G, T, S))
        last = torch.full((G,), float("nan"))
        for k in range(n_updates):
            ro = self.rollout()
            sl = slice(k * n, (k + 1) * n)
            rec.states[:, sl] = ro.obs.transpose(0, 1).cpu()
            rec.actions[:, sl] = ro.actions.transpose(0, 1).cpu()
            rec.rewards[:, sl] = ro.rewards.transpose(0, 1).cpu()
            rec.next_states[:, sl] = ro.next_states.transpose(0, 1).cpu()
            rec.dones[:, sl] = ro.dones.transpose(0, 1).cpu()
            rec.action_probs[:, sl] = ro.action_probs.transpose(0, 1).cpu()
            for t in range(n):  # episode returns, mean over streams (Darkroom: every stream ends together)
                self.episode_sum += ro.rewards[t]
                done = ro.dones[t]
                if bool(done.any()):
                    if bool(done.all()):
                        last = self.episode_sum.mean(1).cpu()
                        rec.episode_returns.append(last)
                    self.episode_sum = torch.where(done, torch.zeros_like(self.episode_sum), self.episode_sum)
            self.train(ro)
            if on_update is not None:
                on_update(k + 1, last)
        return rec


def num_updates(cfg: CollectConfig) -> int:
    """SB3's loop: rollouts of n_stream x n_steps agent steps until ``steps_per_goal`` is reached."""
    return -(-cfg.steps_per_goal // (cfg.n_stream * cfg.n_steps))
