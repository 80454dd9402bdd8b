"""Synthetic memory tasks: token sequences whose label can only be read off by remembering the past.

Why these: each task isolates one memory skill (hold one symbol for a long time, count, match
brackets, combine two distant bits, look up a key) and has a known chance level, so a memory
backbone that beats chance has provably carried information across time. They are evaluation
data, not part of the backbone library (:mod:`fiberlab.cortex`): :mod:`fiberlab.experiments.cortex_eval`
and ``fiberlab cortex eval`` train on them. The readout is always at the LAST step of the sequence
(``embedding -> stack -> linear(y[:, -1])``).

Every generator takes a seeded ``numpy.random.Generator`` and returns ``tokens`` ``[N, T]`` int64
(ids in ``[0, vocab_size)``) and ``labels`` ``[N]`` int64 (in ``[0, num_classes)``). Token 0 is
always the blank filler. The same seed gives the same data. Defaults follow the reference harness
(cortex spec section 7); every parameter can be overridden by name::

    data = make_task("majority", 2000, seed=0, length=64)
    data.tokens.shape, data.labels.shape, data.chance   # (2000, 64), (2000,), 0.333...
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fiberlab.errors import BadInput


@dataclass(frozen=True)
class TaskData:
    """One generated dataset and what a model needs to know about it."""

    task: str
    tokens: np.ndarray  # [N, T] int64
    labels: np.ndarray  # [N] int64
    vocab_size: int
    num_classes: int
    chance: float  # expected accuracy of a uniform random guess (every task's classes are balanced)
    params: dict[str, Any] = field(default_factory=dict)


# ============================================================================ generators
def delayed_recall(rng: np.random.Generator, n: int, delay: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Hold one symbol for ``delay`` steps.

    Sequence length ``T = delay + 1``. Vocabulary: 0 blank, 1..3 cue. Step 0 holds the cue
    ``1 + c`` with ``c`` uniform in {0, 1, 2}; steps 1..delay are blank. Label: ``c``, read at the
    last step, ``delay`` steps after the cue. Chance 1/3.
    """
    labels = rng.integers(0, 3, size=n)
    tokens = np.zeros((n, delay + 1), dtype=np.int64)
    tokens[:, 0] = 1 + labels
    return tokens, labels.astype(np.int64)


def _majority_rows(rng: np.random.Generator, n: int, length: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of ``length`` steps: each step is a symbol 1..3 (uniform) with probability p, else
    blank; rows whose most frequent symbol is tied (including rows with no symbol) are redrawn, so
    every label is unambiguous."""
    rows, labels, have = [], [], 0
    while have < n:
        m = max(64, 2 * (n - have))
        present = rng.random((m, length)) < p
        symbols = rng.integers(1, 4, size=(m, length))
        tok = np.where(present, symbols, 0).astype(np.int64)
        counts = np.stack([(tok == s).sum(1) for s in (1, 2, 3)], 1)  # [m, 3]
        top = counts.max(1, keepdims=True)
        unique = (counts == top).sum(1) == 1
        rows.append(tok[unique])
        labels.append(counts[unique].argmax(1))
        have += int(unique.sum())
    return np.concatenate(rows)[:n], np.concatenate(labels)[:n].astype(np.int64)


def majority(rng: np.random.Generator, n: int, length: int = 1024, p: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Count three symbols over the whole sequence.

    ``T = length``. Vocabulary: 0 blank, 1..3 symbols. Each step holds a symbol (uniform among
    1..3) with probability ``p``, else blank. Label: ``s - 1`` for the symbol ``s`` that occurs
    most often (ties never occur: tied rows are redrawn). Chance 1/3.
    """
    return _majority_rows(rng, n, length, p)


def majority_headpad(rng: np.random.Generator, n: int, length: int = 1024, pad: int = 256, p: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """:func:`majority` over the first ``length - pad`` steps, then ``pad`` steps of padding.

    ``T = length``. Vocabulary: 0 blank, 1..3 symbols, 4 pad. The last ``pad`` steps are token 4,
    so the count must be held, unchanged, for ``pad`` steps after the evidence ends. Label and
    chance as in :func:`majority`.
    """
    head, labels = _majority_rows(rng, n, length - pad, p)
    return np.concatenate([head, np.full((n, pad), 4, dtype=np.int64)], 1), labels


OPEN, CLOSE = (1, 3), (2, 4)  # Dyck-2 tokens: "(" 1, ")" 2, "[" 3, "]" 4


def is_balanced(row: np.ndarray) -> bool:
    """Whether a token row is a well-nested Dyck-2 word (tokens 1..4 = ( ) [ ]); the plain stack
    check, used by the tests to recompute labels independently of the generator."""
    stack: list[int] = []
    for tok in row.tolist():
        if tok in OPEN:
            stack.append(tok)
        elif not stack or stack.pop() != tok - 1:
            return False
    return not stack


def dyck(rng: np.random.Generator, n: int, pairs: int = 50, corrupt: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Decide whether a bracket sequence with two bracket types is well nested (Dyck-2).

    ``T = 2 * pairs``. Vocabulary: 1 "(", 2 ")", 3 "[", 4 "]" (no blank). A balanced word is drawn
    by a random walk: at each step open a bracket (type uniform) with probability 1/2 unless the
    depth is 0 (must open) or all ``pairs`` are open (must close); a close matches the innermost
    open bracket. With probability ``corrupt`` one position (uniform) is then replaced by one of the
    three other tokens (uniform). Any such single substitution breaks the word: an open <-> close
    swap changes the bracket count, a type swap mismatches the partner. Label: 1 balanced,
    0 corrupted. Chance 1/2 (at ``corrupt = 0.5``; the majority-class rate otherwise).
    """
    T = 2 * pairs
    tokens = np.zeros((n, T), dtype=np.int64)
    stack = np.zeros((n, pairs), dtype=np.int64)  # open-bracket types (0 or 1) per row, innermost at depth-1
    depth = np.zeros(n, dtype=np.int64)
    opened = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    for t in range(T):
        must_open = depth == 0
        must_close = opened == pairs
        do_open = np.where(must_open, True, np.where(must_close, False, rng.random(n) < 0.5))
        kind = rng.integers(0, 2, size=n)
        top = stack[rows, np.maximum(depth - 1, 0)]
        tokens[:, t] = np.where(do_open, 1 + 2 * kind, 2 + 2 * top)  # "(" 1 / "[" 3, ")" 2 / "]" 4
        stack[rows[do_open], depth[do_open]] = kind[do_open]
        depth = depth + np.where(do_open, 1, -1)
        opened = opened + do_open
    labels = np.ones(n, dtype=np.int64)
    bad = rng.random(n) < corrupt
    where = rng.integers(0, T, size=n)
    shift = rng.integers(1, 4, size=n)  # a different token among the 4: (tok - 1 + shift) mod 4 + 1
    old = tokens[rows, where]
    tokens[rows[bad], where[bad]] = ((old - 1 + shift) % 4 + 1)[bad]
    labels[bad] = 0
    return tokens, labels


def two_needle_xor(rng: np.random.Generator, n: int, length: int = 256, tail: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """XOR of two bits placed at random times.

    ``T = length + tail``. Vocabulary: 0 blank, 1 bit 0, 2 bit 1. Two distinct positions
    (uniform) among the first ``length`` steps hold the needles ``1 + b1`` and ``1 + b2``; every
    other step, including the final ``tail`` steps, is blank. Label: ``b1 XOR b2``. Neither bit
    alone says anything about the label, so both must be held. Chance 1/2.
    """
    pos = np.argsort(rng.random((n, length)), axis=1)[:, :2]
    bits = rng.integers(0, 2, size=(n, 2))
    tokens = np.zeros((n, length + tail), dtype=np.int64)
    rows = np.arange(n)[:, None]
    tokens[rows, pos] = 1 + bits
    return tokens, (bits[:, 0] ^ bits[:, 1]).astype(np.int64)


def assoc_recall(rng: np.random.Generator, n: int, length: int = 384, pairs: int = 8, tail: int = 128,
                 n_keys: int = 256, n_values: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Look up the value stored under a key (associative recall).

    ``T = length + tail + 1``. Vocabulary: 0 blank, key ``k`` -> ``1 + k``, value ``v`` ->
    ``1 + n_keys + v``, query of key ``k`` -> ``1 + n_keys + n_values + k`` (so the query is not
    mistaken for a stored key). The first ``length`` steps hold ``pairs`` non-overlapping
    (key, value) pairs at random positions, a key token immediately followed by its value token;
    keys are distinct within a row, values uniform (repeats allowed); other steps are blank. Then
    ``tail`` blank steps, then the query of one of the stored keys (uniform). Label: the value
    stored under the queried key, in ``[0, n_values)``. Chance ``1 / n_values`` (a model that only
    learns which values are present gets about ``1 / pairs``).
    """
    k = pairs
    # k sorted distinct slots among length - k, shifted by their rank: non-overlapping 2-step pairs
    slots = np.sort(np.argsort(rng.random((n, length - k)), axis=1)[:, :k], axis=1) + np.arange(k)
    keys = np.argsort(rng.random((n, n_keys)), axis=1)[:, :k]
    values = rng.integers(0, n_values, size=(n, k))
    asked = rng.integers(0, k, size=n)
    tokens = np.zeros((n, length + tail + 1), dtype=np.int64)
    rows = np.arange(n)[:, None]
    tokens[rows, slots] = 1 + keys
    tokens[rows, slots + 1] = 1 + n_keys + values
    r = np.arange(n)
    tokens[:, -1] = 1 + n_keys + n_values + keys[r, asked]
    return tokens, values[r, asked].astype(np.int64)


# ============================================================================ registry
@dataclass(frozen=True)
class TaskSpec:
    """A task's generator, defaults (the reference harness's), and how to size its model."""

    make: Callable[..., tuple[np.ndarray, np.ndarray]]
    defaults: dict[str, Any]
    length_param: str  # what ``--length`` sets
    vocab_size: Callable[[dict[str, Any]], int]
    num_classes: Callable[[dict[str, Any]], int]
    description: str


TASKS: dict[str, TaskSpec] = {
    "delayed_recall": TaskSpec(delayed_recall, {"delay": 512}, "delay", lambda p: 4, lambda p: 3,
                               "recall the cue shown `delay` steps before the end"),
    "majority": TaskSpec(majority, {"length": 1024, "p": 0.3}, "length", lambda p: 4, lambda p: 3,
                         "most frequent of three sparse symbols"),
    "majority_headpad": TaskSpec(majority_headpad, {"length": 1024, "pad": 256, "p": 0.3}, "length", lambda p: 5, lambda p: 3,
                                 "majority, then `pad` steps of padding"),
    "dyck": TaskSpec(dyck, {"pairs": 50, "corrupt": 0.5}, "pairs", lambda p: 5, lambda p: 2,
                     "is a Dyck-2 bracket word well nested (half are corrupted)"),
    "two_needle_xor": TaskSpec(two_needle_xor, {"length": 256, "tail": 64}, "length", lambda p: 3, lambda p: 2,
                               "XOR of two bits at random times, then a blank tail"),
    "assoc_recall": TaskSpec(assoc_recall, {"length": 384, "pairs": 8, "tail": 128, "n_keys": 256, "n_values": 256}, "length",
                             lambda p: 1 + 2 * p["n_keys"] + p["n_values"], lambda p: p["n_values"],
                             "value stored under the queried key"),
}


def task_params(task: str, **overrides: Any) -> dict[str, Any]:
    """The task's defaults with ``overrides`` merged in, checked; BadInput names a bad one."""
    if task not in TASKS:
        raise BadInput(f"unknown task {task!r}: allowed are {', '.join(TASKS)}")
    spec = TASKS[task]
    params = dict(spec.defaults)
    for key, value in overrides.items():
        if key not in params:
            raise BadInput(f"unknown parameter {key!r} for task {task}: allowed are {', '.join(params)}")
        params[key] = value
    for key, value in params.items():
        if key in ("p", "corrupt"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise BadInput(f"bad value {value!r} for {task} {key}: a number in [0, 1] is allowed")
        elif key == "tail" or key == "pad":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadInput(f"bad value {value!r} for {task} {key}: an integer >= 0 is allowed")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"bad value {value!r} for {task} {key}: a positive integer is allowed")
    if task == "majority_headpad" and params["pad"] >= params["length"]:
        raise BadInput(f"bad value {params['pad']} for {task} pad: less than length ({params['length']}) is allowed")
    if task == "two_needle_xor" and params["length"] < 2:
        raise BadInput(f"bad value {params['length']} for {task} length: at least 2 (two needles) is allowed")
    if task == "assoc_recall":
        if 2 * params["pairs"] > params["length"]:
            raise BadInput(f"bad value {params['pairs']} for {task} pairs: at most length / 2 ({params['length'] // 2}) is allowed")
        if params["pairs"] > params["n_keys"]:
            raise BadInput(f"bad value {params['pairs']} for {task} pairs: at most n_keys ({params['n_keys']}) is allowed")
    return params


def make_task(task: str, n: int, seed: int = 0, **overrides: Any) -> TaskData:
    """Generate ``n`` samples of ``task`` with ``numpy.random.default_rng(seed)``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadInput(f"bad value {n!r} for the number of samples: a positive integer is allowed")
    params = task_params(task, **overrides)
    spec = TASKS[task]
    tokens, labels = spec.make(np.random.default_rng(seed), n, **params)
    return TaskData(task, tokens, labels, spec.vocab_size(params), spec.num_classes(params), _chance(task, params), params)


def chance_accuracy(task: str, **overrides: Any) -> float:
    """Expected accuracy of guessing, without generating data."""
    return _chance(task, task_params(task, **overrides))


def _chance(task: str, params: dict[str, Any]) -> float:
    if task == "dyck":  # the majority-class rate (1/2 at the default corrupt = 0.5)
        return max(params["corrupt"], 1.0 - params["corrupt"])
    return 1.0 / TASKS[task].num_classes(params)
