"""Segments of a learning history: where the behaviour policy was confident, and their markers.

Compressed AD marks stretches of a PPO learning history with two learned vectors (added at the
first step of a stretch and at the first step after it). This module decides which steps are in a
stretch, finds the marker positions, and draws the random-marker control.

What the threshold measures. Every logged step is on-policy by construction: the action at step t
was sampled from the very policy whose probability we log (the behaviour policy IS the logged
policy), so there is no "off-policy" step to detect. ``p_t = pi_t(a_t | s_t) >= threshold`` says
the policy was CONFIDENT about the action it took; the guide's "on-policy segment" is a run of
confident steps. The config keeps the guide's name (``on_policy_threshold``) for familiarity.

Two rules, both computed per stream along time (axis 0 of a ``[T]`` or ``[T, S]`` array; the
guide's loop crashes on ``[T, S]``), vectorised over streams with run arithmetic, no Python loop:

- ``lookahead`` (the guide's): step t is in a segment iff it lies in a maximal run of consecutive
  steps with ``p >= threshold`` whose TOTAL length is ``>= window``. Whether the run reaches
  ``window`` steps is only known ``window - 1`` steps later, so the mask (and the start marker) at
  t depends on future probabilities: inside a causal context this leaks the future (the model
  sees, at a run's first step, that the policy will stay confident for ``window`` more steps).
  Training-only; it cannot be computed at inference.
- ``causal``: step t is in a segment iff ``p[t-window+1 .. t]`` are all ``>= threshold`` (the run
  has lasted ``window`` steps so far). Decided from the past only, so :class:`OnlineCausalMask`
  reproduces it step by step at in-context evaluation from the model's own probabilities.

Run arithmetic (for ``ok_t = [p_t >= threshold]``), per stream:
    last_bad_t = max{u <= t : not ok_u}   (-1 if none)
    next_bad_t = min{u >= t : not ok_u}   (T if none)
    run_so_far_t = t - last_bad_t          (confident steps ending at t, t included; 0 if not ok)
    run_total_t  = next_bad_t - last_bad_t - 1   (length of the run holding t; -1 if not ok)
    causal_t    = run_so_far_t >= window
    lookahead_t = run_total_t  >= window
Both are running max/min scans, O(T * S).
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np
import torch

from fiberlab.errors import BadInput

ArrayLike = np.ndarray | torch.Tensor
RULES = ("lookahead", "causal")


# ---------------------------------------------------------------- validation


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float in [0, 1], or BadInput naming it."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise BadInput(f"threshold={threshold!r} is not a number: the on-policy (confidence) "
                       f"threshold must be a probability in [0, 1]")
    value = float(threshold)
    if not (0.0 <= value <= 1.0):  # also rejects nan
        raise BadInput(f"threshold={threshold!r} is outside [0, 1]: the on-policy (confidence) "
                       f"threshold is a probability P(taken action)")
    return value


def check_window(window: Any) -> int:
    """``window`` as an int >= 1, or BadInput naming it."""
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise BadInput(f"window={window!r} is not an integer: the compression window is a "
                       f"number of steps >= 1")
    if int(window) < 1:
        raise BadInput(f"window={window!r} is < 1: the compression window is a number of "
                       f"steps >= 1")
    return int(window)


def check_rule(rule: Any) -> str:
    """``rule`` as one of :data:`RULES`, or BadInput naming it."""
    if rule not in RULES:
        raise BadInput(f"rule={rule!r} is not a mask rule: use one of {', '.join(RULES)}")
    return str(rule)


def _first_index(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0])


def check_probs(probs: Any, name: str = "probs") -> ArrayLike:
    """``probs`` as a float ndarray or a floating tensor of shape [T] or [T, S] with finite values
    in [0, 1]; BadInput naming the first bad value (and its index) otherwise."""
    if isinstance(probs, torch.Tensor):
        if probs.is_complex() or probs.dtype == torch.bool:
            raise BadInput(f"{name} has dtype {probs.dtype}: action probabilities must be real "
                           f"numbers in [0, 1]")
        x = probs if probs.is_floating_point() else probs.double()
        shape = tuple(x.shape)
    else:
        try:
            x = np.asarray(probs)
        except Exception as exc:  # ragged lists and the like
            raise BadInput(f"{name} is not an array ({type(probs).__name__}): action "
                           f"probabilities must be a [T] or [T, S] array") from exc
        if x.dtype.kind not in "fiu":
            raise BadInput(f"{name} has dtype {x.dtype}: action probabilities must be real "
                           f"numbers in [0, 1]")
        x = x.astype(np.float64, copy=False) if x.dtype.kind != "f" else x
        shape = x.shape
    if len(shape) not in (1, 2):
        raise BadInput(f"{name} has shape {shape}: it must be [T] (one stream) or [T, S] "
                       f"(time first, one column a stream)")
    if isinstance(x, torch.Tensor):
        nonfinite = ~torch.isfinite(x)
        outside = (x < 0) | (x > 1)
        if bool(nonfinite.any()):
            idx = _first_index(nonfinite.cpu().numpy())
            raise BadInput(f"{name}[{', '.join(map(str, idx))}] = {x[idx].item()}: action "
                           f"probabilities must be finite, in [0, 1]")
        if bool(outside.any()):
            idx = _first_index(outside.cpu().numpy())
            raise BadInput(f"{name}[{', '.join(map(str, idx))}] = {x[idx].item()} is outside "
                           f"[0, 1]: action probabilities must lie in [0, 1]")
    else:
        nonfinite = ~np.isfinite(x)
        if nonfinite.any():
            idx = _first_index(nonfinite)
            raise BadInput(f"{name}[{', '.join(map(str, idx))}] = {x[idx]}: action "
                           f"probabilities must be finite, in [0, 1]")
        outside = (x < 0) | (x > 1)
        if outside.any():
            idx = _first_index(outside)
            raise BadInput(f"{name}[{', '.join(map(str, idx))}] = {x[idx]} is outside [0, 1]: "
                           f"action probabilities must lie in [0, 1]")
    return x


def _check_mask(mask: Any, name: str) -> ArrayLike:
    """A 0/1 mask (bool or integer) of >= 1 dims as a bool ndarray/tensor, or BadInput."""
    if isinstance(mask, torch.Tensor):
        m = mask
        if m.dim() < 1:
            raise BadInput(f"{name} is a scalar: a mask is [T] or [T, S] (time first)")
        if m.dtype != torch.bool:
            if m.is_complex() or bool(((m != 0) & (m != 1)).any()):
                raise BadInput(f"{name} holds values other than 0 and 1: a segment mask is "
                               f"boolean (or 0/1)")
            m = m != 0
        return m
    m = np.asarray(mask)
    if m.ndim < 1:
        raise BadInput(f"{name} is a scalar: a mask is [T] or [T, S] (time first)")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "fiu" or bool(((m != 0) & (m != 1)).any()):
            raise BadInput(f"{name} holds values other than 0 and 1: a segment mask is boolean "
                           f"(or 0/1)")
        m = m != 0
    return m


# ---------------------------------------------------------------- run arithmetic


def _run_lengths_np(ok: np.ndarray, total: bool) -> np.ndarray:
    """Per position along axis 0: ``run_so_far`` (total=False) or ``run_total`` (total=True)."""
    T = ok.shape[0]
    idx = np.arange(T, dtype=np.int64).reshape((T,) + (1,) * (ok.ndim - 1))
    last_bad = np.maximum.accumulate(np.where(ok, -1, idx), axis=0)
    if not total:
        return idx - last_bad
    next_bad = np.minimum.accumulate(np.where(ok, T, idx)[::-1], axis=0)[::-1]
    return next_bad - last_bad - 1


def _run_lengths_torch(ok: torch.Tensor, total: bool) -> torch.Tensor:
    T = ok.shape[0]
    idx = torch.arange(T, dtype=torch.int64, device=ok.device).reshape((T,) + (1,) * (ok.dim() - 1))
    last_bad = torch.cummax(torch.where(ok, -1, idx), dim=0).values
    if not total:
        return idx - last_bad
    next_bad = torch.cummin(torch.where(ok, T, idx).flip(0), dim=0).values.flip(0)
    return next_bad - last_bad - 1


def run_lengths(ok: ArrayLike, total: bool = True) -> ArrayLike:
    """For a boolean array along axis 0: the length of the run of True holding each position
    (``total=True``; -1 where False) or the length of that run up to and including the position
    (``total=False``; 0 where False). Used for masks and for segment lengths (at starts)."""
    if isinstance(ok, torch.Tensor):
        if ok.shape[0] == 0:
            return torch.zeros(ok.shape, dtype=torch.int64, device=ok.device)
        return _run_lengths_torch(ok.bool(), total)
    ok = np.asarray(ok, dtype=bool)
    if ok.shape[0] == 0:
        return np.zeros(ok.shape, dtype=np.int64)
    return _run_lengths_np(ok, total)


# ---------------------------------------------------------------- masks and markers


def segment_mask(probs: ArrayLike, threshold: float, window: int,
                 rule: str = "lookahead") -> ArrayLike:
    """The segment mask of action probabilities ``probs`` ([T] or [T, S], time first), per stream.

    ``probs[t, s]`` is P(a_t | s_t) under the behaviour policy at action time. Every logged step is
    on-policy by construction, so ``threshold`` measures the policy's CONFIDENCE (see the module
    docstring). ``rule="lookahead"`` (the guide's): steps in runs of ``p >= threshold`` lasting
    ``>= window`` steps in total: it looks into the future, so it is a training-only rule.
    ``rule="causal"``: step t iff the last ``window`` steps (t included) all have
    ``p >= threshold``: decided from the past, so it runs online (:class:`OnlineCausalMask`).

    Returns a uint8 array of the same shape and kind (numpy in, numpy out; a tensor in, a tensor
    on the same device out). With ``window=1`` both rules are ``p >= threshold``.
    """
    threshold = check_threshold(threshold)
    window = check_window(window)
    rule = check_rule(rule)
    x = check_probs(probs)
    ok = x >= threshold
    runs = run_lengths(ok, total=(rule == "lookahead"))
    mask = runs >= window
    return mask.to(torch.uint8) if isinstance(mask, torch.Tensor) else mask.astype(np.uint8)


def boundaries(mask: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Marker positions of a segment mask along time (axis 0): ``(start, end)`` bool arrays.

    ``start[t]``: t is the first in-segment position of a segment (``m[t] and not m[t-1]``; a
    stream that starts inside a segment gets a start at t=0). ``end[t]``: t is the first position
    AFTER a segment (``m[t-1] and not m[t]``); a segment that runs to the last step has no end
    marker. Compute these on the whole stream and then slice windows out of them: a window that
    opens mid-segment then carries no start marker, as the stream had none there.

    For a causal mask both markers at t depend on ``m[t-1]`` and ``m[t]`` only, so they are causal
    too; for a lookahead mask they inherit its look into the future.
    """
    m = _check_mask(mask, "mask")
    if isinstance(m, torch.Tensor):
        prev = torch.zeros_like(m)
        prev[1:] = m[:-1]
    else:
        prev = np.zeros_like(m)
        prev[1:] = m[:-1]
    return m & ~prev, prev & ~m


def marker_rates(start: ArrayLike, end: ArrayLike) -> tuple[float, float]:
    """The fraction of positions holding a start marker and an end marker (over all streams)."""
    s = _check_mask(start, "start")
    e = _check_mask(end, "end")
    if tuple(s.shape) != tuple(e.shape):
        raise BadInput(f"start has shape {tuple(s.shape)} but end has shape {tuple(e.shape)}: "
                       f"marker arrays must have the same shape")
    n = max(int(np.prod(tuple(s.shape))), 1)
    return float(s.sum()) / n, float(e.sum()) / n


def _check_rate(rate: Any, name: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (0.0 <= float(rate) <= 1.0):
        raise BadInput(f"{name}={rate!r} is not a probability: a marker rate must lie in [0, 1]")
    return float(rate)


def bernoulli_markers(shape: tuple[int, ...], start_rate: float, end_rate: float,
                      rng: np.random.Generator | torch.Generator | int | None = None,
                      device: torch.device | str | None = None,
                      ) -> tuple[ArrayLike, ArrayLike]:
    """Independent Bernoulli(start_rate) and Bernoulli(end_rate) markers of ``shape``.

    Torch tensors when ``device`` is given or ``rng`` is a ``torch.Generator``, numpy otherwise.
    The random-marker control at inference (where only the training data's rates are known)."""
    start_rate = _check_rate(start_rate, "start_rate")
    end_rate = _check_rate(end_rate, "end_rate")
    shape = tuple(int(n) for n in shape)
    as_torch = device is not None or isinstance(rng, torch.Generator)
    if isinstance(rng, torch.Generator):
        u = torch.rand((2,) + shape, generator=rng, dtype=torch.float64, device=rng.device)
        u = u.to(device) if device is not None else u
    else:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        u = gen.random((2,) + shape)
        if as_torch:
            u = torch.from_numpy(u).to(device)
    return u[0] < start_rate, u[1] < end_rate


def random_markers(start: ArrayLike, end: ArrayLike,
                   rng: np.random.Generator | torch.Generator | int | None = None,
                   ) -> tuple[ArrayLike, ArrayLike]:
    """The control: independent Bernoulli markers, one draw per position, with the same start rate
    and end rate as ``start``/``end`` (pooled over all positions and streams). Same shape and kind
    as the inputs. A model that does as well with these as with real markers is not using what the
    markers say about the policy's confidence, only that some positions are marked."""
    start_rate, end_rate = marker_rates(start, end)
    if isinstance(start, torch.Tensor):
        s, e = bernoulli_markers(tuple(start.shape), start_rate, end_rate, rng, device=start.device)
        return s, e
    s, e = bernoulli_markers(np.shape(start), start_rate, end_rate, rng)
    if isinstance(s, torch.Tensor):  # a torch.Generator with numpy markers
        return s.cpu().numpy(), e.cpu().numpy()
    return s, e


class MarkerStep(NamedTuple):
    """One step of :class:`OnlineCausalMask`: the causal mask and both markers, each [S] bool."""

    mask: ArrayLike
    start: ArrayLike
    end: ArrayLike


class OnlineCausalMask:
    """The causal rule one step at a time, for a batch of streams (in-context evaluation).

    At each step feed the newest ``p_t`` per stream, P(a_t | context) of the action the model
    took (sampled or argmax, as acted), and get the causal mask and markers at t, equal to
    ``segment_mask(p, threshold, window, "causal")`` and :func:`boundaries` of it on the whole
    sequence so far. State is a run counter and the previous mask per stream: O(S) memory.
    Episodes do not reset it: training streams run across episode boundaries too.
    """

    def __init__(self, n_streams: int, threshold: float, window: int,
                 device: torch.device | str = "cpu") -> None:
        if isinstance(n_streams, bool) or not isinstance(n_streams, numbers.Integral) or n_streams < 1:
            raise BadInput(f"n_streams={n_streams!r}: the number of streams must be an integer >= 1")
        self.n_streams = int(n_streams)
        self.threshold = check_threshold(threshold)
        self.window = check_window(window)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget every stream's history (a new evaluation)."""
        self.run = torch.zeros(self.n_streams, dtype=torch.int64, device=self.device)
        self.prev = torch.zeros(self.n_streams, dtype=torch.bool, device=self.device)
        self.t = 0

    def step(self, probs: ArrayLike) -> MarkerStep:
        """Advance every stream by one step with its newest probability ``probs`` ([S])."""
        as_numpy = not isinstance(probs, torch.Tensor)
        x = check_probs(probs, "probs")
        if tuple(x.shape) != (self.n_streams,):
            raise BadInput(f"probs has shape {tuple(x.shape)}: one step of {self.n_streams} "
                           f"streams must be [{self.n_streams}]")
        x = torch.as_tensor(x, device=self.device)
        ok = x >= self.threshold
        # run_so_far_t = run_so_far_{t-1} + 1 if ok_t else 0
        self.run = torch.where(ok, self.run + 1, torch.zeros_like(self.run))
        mask = self.run >= self.window
        start, end = mask & ~self.prev, self.prev & ~mask
        self.prev = mask
        self.t += 1
        if as_numpy:
            return MarkerStep(mask.cpu().numpy(), start.cpu().numpy(), end.cpu().numpy())
        return MarkerStep(mask, start, end)


def compression_ratio(mask: ArrayLike) -> float:
    """The fraction of marked steps (the guide's "compression ratio")."""
    m = _check_mask(mask, "mask")
    n = int(np.prod(tuple(m.shape)))
    return float(m.sum()) / n if n else 0.0
