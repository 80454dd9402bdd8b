"""AD's training data as tensors: every sliding window of every stream, gathered by index arithmetic.

A stream is one learning history of one goal: T transitions (s, a, r, s') packed as rows
(x, y, a, r, x', y') of a small integer tensor [N_streams, T, 6] (uint8 when the values fit: the
73 x 100 x 1000 Darkroom train set is 44 MB). Window i of a stream covers transitions
i .. i + n_transit - 1 and is one training example::

    context = transitions i .. i + n_transit - 2      (n_transit - 1 tokens)
    query   = the state (x, y) of transition i + n_transit - 1
    label   = the action taken there                  (what PPO actually did)

so a stream of T steps holds T - n_transit + 1 windows (921 for T = 1000, n_transit = 80), the
Darkroom train set 73 goals x 100 streams x 921 = 6.72 M and the test set (8 held-out goals x
stream 0, as DICP) 7,368. Nothing is materialised per window: a batch is a tensor of window
indices, turned into (stream, first step) by a division, then into row numbers of the flattened
stream tensor, and read with ONE advanced-indexing gather (no per-item Python, no collate).

Markers (CompressedAD) are computed on each WHOLE stream (segment mask recomputed from
``action_probs`` with the config's threshold, window and rule, then its boundaries), and windows
are sliced out of them afterwards: a window that opens inside a segment carries no start marker,
as the stream has none there. The random-marker control replaces them by Bernoulli markers with
the train streams' start and end rates, drawn once with fixed seeds (so the control's data is the
same for every training seed).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from fiberlab.distill.config import ADConfig
from fiberlab.errors import BadInput

FIELDS = ("states", "actions", "rewards", "next_states")
TEST_STREAMS = 1  # DICP evaluates the test loss on stream 0 of each held-out goal
RANDOM_MARKER_SEEDS = {"train": 0, "test": 1}  # fixed: the control's markers do not vary with cfg.seed


class WindowBatch(NamedTuple):
    """A batch of windows: what :class:`~fiberlab.distill.model.ADTransformer` takes, and the label."""

    transitions: Tensor  # [B, n_transit - 1, 6] long: (x, y, a, r, x', y')
    query: Tensor  # [B, 2] long: the state the next action is taken in
    target: Tensor  # [B] long: the logged action
    start: Tensor | None  # [B, n_transit - 1] bool, or None without markers
    end: Tensor | None


class Windows:
    """Every window of ``streams`` [N, T, 6]; markers ``start``/``end`` [N, T] bool or None.

    Window ``k`` (0 <= k < len) is window ``k % W`` of stream ``k // W``, W = T - n_transit + 1.
    """

    def __init__(self, streams: Tensor, n_transit: int, start: Tensor | None = None, end: Tensor | None = None) -> None:
        if streams.dim() != 3 or streams.shape[-1] != 6:
            raise BadInput(f"streams of shape {tuple(streams.shape)}: [N, T, 6] is allowed")
        n, t, _ = streams.shape
        if t < n_transit:
            raise BadInput(f"streams of {t} steps are shorter than n_transit={n_transit}: a window needs n_transit steps")
        if (start is None) != (end is None):
            raise BadInput("start and end markers go together: give both or neither")
        if start is not None and (tuple(start.shape) != (n, t) or tuple(end.shape) != (n, t)):
            raise BadInput(f"markers of shape {tuple(start.shape)}/{tuple(end.shape)}: ({n}, {t}) is allowed (one per step)")
        self.n_streams, self.steps, self.n_transit = n, t, n_transit
        self.per_stream = t - n_transit + 1
        self.streams = streams
        self.start, self.end = start, end
        self._flat = streams.reshape(n * t, 6)
        self._flat_start = None if start is None else start.reshape(n * t)
        self._flat_end = None if end is None else end.reshape(n * t)
        self._offsets = torch.arange(n_transit, device=streams.device)

    @property
    def device(self) -> torch.device:
        return self.streams.device

    @property
    def has_markers(self) -> bool:
        return self.start is not None

    def __len__(self) -> int:
        return self.n_streams * self.per_stream

    def to(self, device: torch.device | str) -> Windows:
        move = (lambda x: None if x is None else x.to(device))
        return Windows(self.streams.to(device), self.n_transit, move(self.start), move(self.end))

    def rows(self, index: Tensor) -> Tensor:
        """Row numbers [B, n_transit] of the flattened [N * T, 6] tensor for window indices [B]:
        stream = k // W, first = k % W, row = stream * T + first + (0 .. n_transit - 1)."""
        stream = torch.div(index, self.per_stream, rounding_mode="floor")
        first = index - stream * self.per_stream
        return (stream * self.steps + first).unsqueeze(1) + self._offsets

    def gather(self, index: Tensor) -> WindowBatch:
        """The windows ``index`` [B] (long, on this set's device): one gather for the transitions,
        one per marker tensor."""
        rows = self.rows(index.to(self.device))
        w = self._flat[rows].long()  # [B, n_transit, 6]
        ctx_rows = rows[:, :-1]
        start = None if self._flat_start is None else self._flat_start[ctx_rows]
        end = None if self._flat_end is None else self._flat_end[ctx_rows]
        return WindowBatch(w[:, :-1], w[:, -1, :2], w[:, -1, 2], start, end)

    def sample(self, batch_size: int, generator: torch.Generator) -> WindowBatch:
        """``batch_size`` windows drawn uniformly (with replacement) over all windows."""
        index = torch.randint(len(self), (batch_size,), generator=generator, device=generator.device)
        return self.gather(index)

    def batches(self, batch_size: int) -> Iterator[WindowBatch]:
        """Every window once, in order, in batches of ``batch_size`` (the last may be smaller)."""
        for lo in range(0, len(self), batch_size):
            yield self.gather(torch.arange(lo, min(lo + batch_size, len(self)), device=self.device))


@dataclass
class ADData:
    """The train and test windows of one history file under one config."""

    path: Path
    env: str
    train_goals: list[int]
    test_goals: list[int]
    train: Windows
    test: Windows
    marker_rates: dict[str, float] | None = None  # start/end rates of the markers the train windows carry
    compression_ratio: float | None = None  # fraction of train steps inside a segment (None: not computed)
    attrs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What a run records about its data (config.json, checkpoint meta)."""
        return {"dataset": str(self.path), "env": self.env, "train_goals": self.train_goals, "test_goals": self.test_goals,
                "train_windows": len(self.train), "test_windows": len(self.test), "steps_per_stream": self.train.steps,
                "marker_rates": self.marker_rates, "compression_ratio": self.compression_ratio}


def pack_streams(states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_states: np.ndarray, where: str = "history") -> Tensor:
    """Time-major arrays of one or more goals ([..., T, S(, 2)], the file's layout) -> rows
    [S_total, T, 6] (x, y, a, r, x', y'), stream-major. uint8 when every value lies in 0..255,
    else int64. Rewards must be integers (Darkroom's are 0/1): the model reads r as a number."""
    states, actions, rewards, next_states = (np.asarray(a) for a in (states, actions, rewards, next_states))
    if not np.array_equal(rewards, np.round(rewards)):
        bad = rewards[rewards != np.round(rewards)].flat[0]
        raise BadInput(f"{where}: reward {bad!r} is not an integer: AD's transition encoding holds integer rewards (Darkroom's are 0/1)")
    cols = [states[..., 0], states[..., 1], actions, rewards, next_states[..., 0], next_states[..., 1]]
    packed = np.stack([np.asarray(c).astype(np.int64) for c in cols], axis=-1)  # [..., T, S, 6]
    packed = np.moveaxis(packed, -2, -3)  # [..., S, T, 6]
    packed = packed.reshape(-1, *packed.shape[-2:])
    if packed.size and packed.min() < 0:
        raise BadInput(f"{where}: negative value {int(packed.min())} in states/actions/rewards: non-negative integers are allowed")
    dtype = np.uint8 if packed.size == 0 or packed.max() <= 255 else np.int64
    return torch.from_numpy(np.ascontiguousarray(packed.astype(dtype)))


def stream_markers(probs: np.ndarray, cfg: ADConfig) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) [S, T] bool of one goal's streams from its action probabilities [T, S]: the
    segment mask under the config's rule, computed per stream along the whole stream."""
    from fiberlab.distill.segments import boundaries, segment_mask

    mask = segment_mask(probs, cfg.on_policy_threshold, cfg.compression_window, cfg.mask_rule)
    start, end = boundaries(mask)
    return np.ascontiguousarray(np.asarray(start, bool).T), np.ascontiguousarray(np.asarray(end, bool).T)


def _read_goals(h: Any, goals: Sequence[int], cfg: ADConfig, n_streams: int | None, with_markers: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Streams (and real markers) of ``goals``, goal by goal (one goal's arrays in memory at a time)."""
    parts, starts, ends = [], [], []
    fields = FIELDS + (("action_probs",) if with_markers else ())
    for g in goals:
        a = {k: v[0] for k, v in h.stack([g], fields).items()}  # [T, S, ...]
        if n_streams is not None:
            a = {k: v[:, :n_streams] for k, v in a.items()}
        parts.append(pack_streams(a["states"], a["actions"], a["rewards"], a["next_states"], where=f"{h.path}: goal {g}"))
        if with_markers:
            s, e = stream_markers(a["action_probs"], cfg)
            starts.append(torch.from_numpy(s))
            ends.append(torch.from_numpy(e))
    dtype = torch.uint8 if all(p.dtype == torch.uint8 for p in parts) else torch.int64
    streams = torch.cat([p.to(dtype) for p in parts])
    if not with_markers:
        return streams, None, None
    return streams, torch.cat(starts), torch.cat(ends)


def load_windows(cfg: ADConfig, dataset: str | Path, device: torch.device | str = "cpu", test_streams: int = TEST_STREAMS) -> ADData:
    """The train windows (every stream of every train goal in the file) and test windows (the first
    ``test_streams`` streams of every test goal) of ``dataset`` under ``cfg``'s split and segment
    settings. Train/test goals: ``task_split(env, cfg.env_split_seed)``, restricted to the goals the
    file holds (BadInput when it holds none of either)."""
    from fiberlab.distill.histories import open_history
    from fiberlab.envs.darkroom import task_split

    path = Path(dataset)
    with_markers = cfg.model != "ad"
    with open_history(path) as h:
        env = h.env
        split_train, split_test = task_split(env, cfg.env_split_seed)
        held = set(h.goals)
        train_goals = [g for g in split_train if g in held]
        test_goals = [g for g in split_test if g in held]
        for name, goals, split in (("train", train_goals, split_train), ("test", test_goals, split_test)):
            if not goals:
                raise BadInput(f"{path}: holds none of the {len(split)} {name} goals of {env} under env_split_seed={cfg.env_split_seed} "
                               f"(it holds goals {sorted(held)[:12]}{' ...' if len(held) > 12 else ''})")
        if h.steps < cfg.n_transit:
            raise BadInput(f"{path}: streams of {h.steps} steps are shorter than n_transit={cfg.n_transit}")
        if with_markers and "action_probs" not in h.fields:
            raise BadInput(f"{path}: has no action_probs: model={cfg.model} places its markers from them "
                           f"(use model=ad, or a history collected by fiberlab ad collect)")
        attrs = dict(h.attrs)
        train, t_start, t_end = _read_goals(h, train_goals, cfg, None, with_markers)
        test, v_start, v_end = _read_goals(h, test_goals, cfg, test_streams, with_markers)
    rates = ratio = None
    if with_markers:
        assert t_start is not None and t_end is not None and v_start is not None and v_end is not None
        rates = {"start": float(t_start.double().mean()), "end": float(t_end.double().mean())}
        # in-segment fraction from the boundaries: starts open segments, ends close them
        inside = torch.cumsum(t_start.to(torch.int32) - t_end.to(torch.int32), dim=1)
        ratio = float(inside.double().mean())
        if cfg.model == "random_markers":
            t_start, t_end = _bernoulli(t_start.shape, rates, RANDOM_MARKER_SEEDS["train"])
            v_start, v_end = _bernoulli(v_start.shape, rates, RANDOM_MARKER_SEEDS["test"])
            rates = {"start": float(t_start.double().mean()), "end": float(t_end.double().mean())}
    data = ADData(path=path, env=env, train_goals=train_goals, test_goals=test_goals,
                  train=Windows(train, cfg.n_transit, t_start, t_end).to(device),
                  test=Windows(test, cfg.n_transit, v_start, v_end).to(device),
                  marker_rates=rates, compression_ratio=ratio, attrs=attrs)
    return data


def _bernoulli(shape: torch.Size, rates: dict[str, float], seed: int) -> tuple[Tensor, Tensor]:
    """The random-marker control: independent Bernoulli(rate) markers per position (segments.py's
    draw), with a fixed seed."""
    from fiberlab.distill.segments import bernoulli_markers

    s, e = bernoulli_markers(tuple(shape), rates["start"], rates["end"], np.random.default_rng(seed))
    return torch.from_numpy(np.asarray(s, bool)), torch.from_numpy(np.asarray(e, bool))
