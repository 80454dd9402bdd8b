"""In-context evaluation: a frozen AD-family transformer acting in fresh Darkroom tasks.

Algorithm Distillation's claim is that the transformer improves from episode to episode on a task
it never saw, with its weights fixed, only because its context holds its own recent transitions.
:func:`evaluate_in_context` measures exactly that: every env of a :class:`GridTasks` batch starts
with an empty context (the query alone), and at every step

1. the model reads the last ``<= n_transit - 1`` transitions (s, a, r, s') and the query (the
   current state) and gives logits at the query;
2. the action is sampled from ``softmax(logits)`` (``sample=True``, DICP's evaluation: greedy
   decoding stops AD from exploring) or the argmax;
3. ALL envs step at once, and (s, a, r, s') is appended, s' being the TRUE next state also at an
   episode's end (the state the history file stores there, so training and evaluation agree);
4. the query becomes the state the agent sees next (the start state after an episode's end).

One forward pass per step for all envs: no per-env Python loop. Returns the episode returns,
``(n_envs, n_episodes)`` with ``n_episodes = eval_timesteps // horizon``.

Marker modes at inference (what a CompressedAD model gets at its start/end positions):

- ``none``: no markers (the guide's evaluation; plain AD ignores markers anyway).
- ``causal``: the causal rule run online on the model's OWN probability of the action it took,
  ``p_t = softmax(logits_t)[a_t]``: step t is in a segment once ``p`` has stayed ``>= threshold``
  for ``window`` steps (:class:`fiberlab.distill.segments.OnlineCausalMask`, equal to the offline
  ``segment_mask(p, threshold, window, "causal")``). Markers are kept per env along the whole run
  and sliced with the context, as training slices windows out of whole streams.
- ``random``: independent Bernoulli markers at the start/end rates the model saw in training
  (``marker_rates``): the control for "markers help only because they mark something".
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fiberlab.distill.segments import (
    OnlineCausalMask,
    bernoulli_markers,
    check_threshold,
    check_window,
)
from fiberlab.envs.darkroom import GridTasks, best_return, goal_xy, task_split
from fiberlab.errors import BadInput

MARKER_MODES = ("none", "causal", "random")
GOAL_GROUPS = ("test", "train")


def context_transitions(model: torch.nn.Module, n_transit: int | None = None) -> int:
    """How many past transitions the model reads: ``n_transit - 1`` (the last token is the query)."""
    if n_transit is None:
        n_transit = getattr(model, "n_transit", None)
    if n_transit is None and getattr(model, "cfg", None) is not None:
        n_transit = getattr(model.cfg, "n_transit", None)
    if n_transit is None:
        raise BadInput("the model states no context length: give n_transit= (the ADConfig's n_transit)")
    if int(n_transit) < 2:
        raise BadInput(f"n_transit={n_transit}: at least 2 (one transition and the query) is allowed")
    return int(n_transit) - 1


def model_device(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's parameters (``fallback`` for a model without any)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device(fallback)


def check_marker_mode(markers: str) -> str:
    if markers not in MARKER_MODES:
        raise BadInput(f"markers={markers!r}: allowed are {', '.join(MARKER_MODES)}")
    return markers


def evaluate_in_context(
    model: torch.nn.Module,
    vec_env: GridTasks,
    eval_timesteps: int = 1000,
    sample: bool = True,
    markers: str = "none",
    threshold: float = 0.7,
    window: int = 10,
    generator: torch.Generator | None = None,
    marker_rates: tuple[float, float] | None = None,
    n_transit: int | None = None,
    marker_counts: dict[str, int] | None = None,
) -> np.ndarray:
    """Run ``model`` in context on every env of ``vec_env`` for ``eval_timesteps`` steps.

    ``model(transitions [n, L, 6] long, query [n, 2] long, start, end) -> logits [n, A]`` (the
    :class:`~fiberlab.distill.model.ADTransformer` signature), L <= n_transit - 1 (0 at the first
    step). ``generator`` (on the model's device) makes sampling and random markers reproducible.
    ``marker_rates`` = (start rate, end rate) for ``markers="random"`` (the checkpoint's meta holds
    the training rates). Returns episode returns, float ``(n_envs, eval_timesteps // horizon)``.
    A dict passed as ``marker_counts`` is filled with how many start and end markers were placed
    over how many env steps: causal markers fire only where the model stays confident, so a model
    that is not yet confident in context runs, in effect, without markers.
    """
    markers = check_marker_mode(markers)
    if isinstance(eval_timesteps, bool) or int(eval_timesteps) != eval_timesteps or eval_timesteps < vec_env.horizon:
        raise BadInput(f"eval_timesteps={eval_timesteps!r}: an integer >= the horizon ({vec_env.horizon}, one episode) is allowed")
    eval_timesteps = int(eval_timesteps)
    ctx = context_transitions(model, n_transit)
    device = model_device(model, vec_env.device)
    if device != vec_env.device:
        raise BadInput(f"the model is on {device} but the envs are on {vec_env.device}: build GridTasks on the model's device")
    online = None
    if markers == "causal":
        online = OnlineCausalMask(vec_env.num_envs, check_threshold(threshold), check_window(window), device=device)
    if markers == "random":
        if marker_rates is None:
            raise BadInput("markers='random' needs marker_rates=(start rate, end rate): the rates the model saw in training")
        start_rate, end_rate = (float(r) for r in marker_rates)
    n, horizon = vec_env.num_envs, vec_env.horizon
    n_episodes = eval_timesteps // horizon
    # the whole run, kept per env and sliced with the context: [n, T, 6] is small (T = 1000: 48 kB per env)
    transitions = torch.zeros(n, eval_timesteps, 6, dtype=torch.long, device=device)
    start = torch.zeros(n, eval_timesteps, dtype=torch.bool, device=device)
    end = torch.zeros_like(start)
    returns = torch.zeros(n, n_episodes, dtype=torch.float64, device=device)
    episode_return = torch.zeros(n, dtype=torch.float64, device=device)
    rows = torch.arange(n, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            query = vec_env.reset()
            episode = 0
            for t in range(n_episodes * horizon):
                lo = max(0, t - ctx)
                with_markers = markers != "none"
                logits = model(transitions[:, lo:t], query,
                               start[:, lo:t] if with_markers else None, end[:, lo:t] if with_markers else None)
                probs = torch.softmax(logits.float(), dim=-1)
                if sample:
                    action = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                else:
                    action = probs.argmax(dim=-1)
                out = vec_env.step(action)
                # (s, a, r, s'): s' is the true next state, also at an episode's end
                transitions[:, t, 0:2] = query
                transitions[:, t, 2] = action
                transitions[:, t, 3] = out.reward.round().long()
                transitions[:, t, 4:6] = out.next_state
                if online is not None:
                    # p_t = pi(a_t | context): the model's own probability of the action it took
                    step = online.step(probs[rows, action].clamp(0.0, 1.0))
                    start[:, t], end[:, t] = step.start, step.end
                elif markers == "random":
                    s, e = bernoulli_markers((n,), start_rate, end_rate, generator, device=device)
                    start[:, t], end[:, t] = s, e
                episode_return += out.reward.double()
                if (t + 1) % horizon == 0:  # every env ends its episode here (fixed horizon; no device sync)
                    returns[:, episode] = episode_return
                    episode_return.zero_()
                    episode += 1
                query = out.obs
    finally:
        model.train(was_training)
    if marker_counts is not None:
        marker_counts.update(start=int(start.sum()), end=int(end.sum()), env_steps=n * n_episodes * horizon)
    return returns.cpu().numpy()


def resolve_goals(env: str, goals: str | Sequence[int], split_seed: int, n_train_goals: int = 10) -> tuple[str, list[int]]:
    """``goals`` as (a label, task indices): ``"test"`` = the split's held-out goals, ``"train"``
    = the first ``n_train_goals`` of its train goals, or an explicit list (label ``"custom"``)."""
    train, test = task_split(env, split_seed)
    if isinstance(goals, str):
        if goals == "test":
            return "test", list(test)
        if goals == "train":
            if n_train_goals < 1:
                raise BadInput(f"n_train_goals={n_train_goals}: a positive integer is allowed")
            return "train", list(train[:n_train_goals])
        raise BadInput(f"goals={goals!r}: allowed are test, train or a list of task indices")
    return "custom", [int(g) for g in goals]


def evaluate_checkpoint(
    path: str | Path,
    goals: str | Sequence[int] = "test",
    eval_timesteps: int = 1000,
    markers: str = "none",
    seed: int = 0,
    n_train_goals: int = 10,
    sample: bool = True,
    device: str = "auto",
    threshold: float | None = None,
    window: int | None = None,
    env: str | None = None,
    dataset: str | Path | None = None,
) -> dict[str, Any]:
    """Load an AD checkpoint (:func:`fiberlab.distill.ad_checkpoint.load_ad`) and evaluate it in
    context on the goals of its ``env_split_seed`` split; a JSON-ready dict.

    ``threshold``/``window`` (causal markers) default to the ones the model was trained with;
    random markers use the training marker rates stored in the checkpoint's meta, else the rates
    of the train goals of ``dataset`` (the history file) under the model's segment rule.
    """
    from fiberlab.devices import resolve_device
    from fiberlab.distill.ad_checkpoint import load_ad

    markers = check_marker_mode(markers)
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such checkpoint")
    model, cfg, meta = load_ad(path, resolve_device(device))
    env = env or meta.get("env") or "darkroom"
    label, tasks = resolve_goals(env, goals, cfg.env_split_seed, n_train_goals)
    thr = cfg.on_policy_threshold if threshold is None else threshold
    win = cfg.compression_window if window is None else window
    rates = training_marker_rates(meta) if markers == "random" else None
    if markers == "random" and rates is None:
        dataset = dataset or meta.get("dataset")
        if dataset is None or not Path(dataset).is_file():
            raise BadInput(f"{path}: the checkpoint holds no training marker rates and no history file was given to "
                           f"measure them: random markers cannot match the training rates")
        rates = dataset_marker_rates(dataset, cfg, task_split(env, cfg.env_split_seed)[0])
    dev = model_device(model, torch.device("cpu"))
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    vec_env = GridTasks(env, tasks, device=dev)
    counts: dict[str, int] = {}
    returns = evaluate_in_context(model, vec_env, eval_timesteps, sample=sample, markers=markers, threshold=thr,
                                  window=win, generator=gen, marker_rates=rates, marker_counts=counts)
    best = best_return(env, tasks)
    per_episode = returns.mean(axis=0)
    return {
        "checkpoint": str(path),
        "checkpoint_step": meta.get("step"),  # the training step the weights are from (staleness check)
        "env": env,
        "model": cfg.model,
        "run": meta.get("run"),
        "seed": cfg.seed,
        "eval_seed": int(seed),
        "goals": label,
        "tasks": tasks,
        "goal_xy": [list(goal_xy(t)) for t in tasks] if env == "darkroom" else None,
        "env_split_seed": cfg.env_split_seed,
        "markers": markers,
        "threshold": thr if markers == "causal" else None,
        "window": win if markers == "causal" else None,
        "marker_rates": list(rates) if rates else None,
        "markers_placed": counts,  # {start, end, env_steps}: how often the markers actually fired
        "sample": bool(sample),
        "eval_timesteps": int(eval_timesteps),
        "horizon": vec_env.horizon,
        "returns": returns.tolist(),  # [goal][episode]
        "mean_per_episode": per_episode.tolist(),  # over goals
        "best_return": best.tolist(),
        "best_return_mean": float(best.mean()),
        "final_return": float(per_episode[-1]),
        "auc": float(per_episode.mean()),  # mean return over the episodes: the area under the in-context curve
    }


def training_marker_rates(meta: dict[str, Any]) -> tuple[float, float] | None:
    """The (start, end) marker rates a checkpoint's meta records, under any of the spellings used."""
    rates = meta.get("marker_rates")
    if isinstance(rates, dict):
        rates = (rates.get("start"), rates.get("end"))
    if rates is None and "start_rate" in meta:
        rates = (meta.get("start_rate"), meta.get("end_rate"))
    if rates is None or any(r is None for r in rates):
        return None
    return float(rates[0]), float(rates[1])


def dataset_marker_rates(history: str | Path, cfg: Any, goals: Sequence[int]) -> tuple[float, float]:
    """The start and end marker rates of ``goals`` in a history file under the segment rule of
    ``cfg`` (an ADConfig: on_policy_threshold, compression_window, mask_rule): what a
    random-marker model was trained with, when its checkpoint does not record it."""
    from fiberlab.distill.histories import open_history
    from fiberlab.distill.segments import boundaries, segment_mask

    starts = ends = total = 0
    with open_history(history) as h:
        for g in [g for g in goals if g in h.goals]:
            probs = h.stack([g], ["action_probs"])["action_probs"][0]  # [T, S]
            s, e = boundaries(segment_mask(probs, cfg.on_policy_threshold, cfg.compression_window, cfg.mask_rule))
            starts, ends, total = starts + int(s.sum()), ends + int(e.sum()), total + s.size
    if total == 0:
        raise BadInput(f"{history}: holds none of the train goals: cannot measure the marker rates")
    return starts / total, ends / total
