#!/usr/bin/env python
"""Fibration: time of find_fibers + collapse against a straightforward per-layer scipy reference.

Policies: ``atari`` (PufferLib's network, obs 1x105x80, 9 actions, 3,948,202 parameters) and
``fast`` (Metta's, obs 34x11x11, 5 actions). Weights: freshly initialised ("init") and, unless
``--quick``, after a few SGD steps on random observations ("sgd"). Thresholds: the defaults
(``Thresholds()``) and a merging setting (``MERGE``) where most layers shrink a lot.

The reference, measured in the same run, is the method written the plain way (fibration spec
sections 1-2): per layer the fiber-summed rows via one-hot matmuls, the full square cosine
distance matrix (``scipy.spatial.distance.cdist``), ``squareform``, ``linkage(method="average")``,
``fcluster``; the LSTM's 4H gate rows recomputed and reclustered for a fixed 5 rounds, as the
original did (``reference_fibers(..., lstm_rounds=None)`` instead iterates as find_fibers does,
cycle detection and refinement included: the tests compare the two that way). Its time includes
the same ``collapse`` call. Lines printed per setting:

    <arch>/<weights>/<thresholds>: ours <s> s, reference <s> s, reference / ours: <x>  target <s> s: met|MISSED

plus whether both found the same fibers (they must, whenever our fixed point is reached within
the reference's 5 rounds) and how our LSTM iteration ended (converged, or cycle period and
refinement rounds). Targets (2 cores): atari under 3 s, fast under 1 s. Median of
``--repeats`` runs, ours and reference interleaved.

Usage::

    .venv/bin/python benchmarks/fibration.py              # ~1-2 min on 2 cores
    .venv/bin/python benchmarks/fibration.py --quick      # smoke test, init weights, 1 repeat
    .venv/bin/python benchmarks/fibration.py --json fib.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

# imported before fiberlab: puts src/ on the path when fiberlab is not installed
from bench_common import machine, machine_line, median_time, reference_policies
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import cdist, squareform

from fiberlab.config import PolicyConfig
from fiberlab.fibration import collapse, find_fibers, layer_graph
from fiberlab.fibration.fibers import Fibers, Thresholds
from fiberlab.fibration.graph import conv_output_positions

CONFIGS = reference_policies()
TARGETS = {"atari": 3.0, "fast": 1.0}  # seconds, find_fibers + collapse, 2 cores
MERGE = Thresholds(linear=1.0, cnn=1.0, lstm=1.2, critic=1.2)
THRESHOLDS = {"default": Thresholds(), "merge": MERGE}
REFERENCE_LSTM_ROUNDS = 5


# =============================================================================== the reference
def _ref_canonical(labels: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.ravel()].astype(np.int64)


def _ref_one_hot(labels: np.ndarray) -> np.ndarray:
    p = np.zeros((int(labels.max()) + 1, len(labels)))
    p[labels, np.arange(len(labels))] = 1.0
    return p


def _ref_cluster(rows: np.ndarray, thr: float) -> np.ndarray:
    """Square cosine distances (cdist), squareform, average linkage, cut; zero rows apart."""
    n = rows.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    zero = np.linalg.norm(rows, axis=1) == 0
    live = np.flatnonzero(~zero)
    if len(live) > 1:
        d = np.clip(cdist(rows[live], rows[live], metric="cosine"), 0.0, 2.0)
        np.fill_diagonal(d, 0.0)
        d = (d + d.T) / 2
        z = linkage(squareform(d, checks=False), method="average")
        labels[live] = fcluster(z, t=max(thr, 1e-10), criterion="distance")
    elif len(live) == 1:
        labels[live] = 1
    if zero.any():
        labels[zero] = labels.max() + 1 if len(live) else 0
    return _ref_canonical(labels)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _ref_meet(*labels: np.ndarray) -> np.ndarray:
    return _ref_canonical(np.unique(np.stack(labels, 1), axis=0, return_inverse=True)[1].ravel())


def _ref_lstm(lstm: torch.nn.LSTM, colors: np.ndarray, thr: float, rounds: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows [W_ih P_in^T | W_hh P_h^T | b_ih + b_hh] rebuilt and reclustered every round; a fixed
    number of rounds, or (``rounds=None``) as find_fibers does: until h and c stop changing, and
    when a state (h, c) repeats an earlier one (a cycle), rounds of h <- meet(h, o, c'),
    c <- c' = meet(i, f, g, c) from the meet of the cycle's h until nothing changes.
    Returns h and the ``Fibers`` LSTM fields."""
    H = lstm.hidden_size
    bias = (_np(lstm.bias_ih_l0) + _np(lstm.bias_hh_l0))[:, None]

    def gates(h: np.ndarray) -> np.ndarray:
        rows = np.hstack([_np(lstm.weight_ih_l0) @ _ref_one_hot(colors).T, _np(lstm.weight_hh_l0) @ _ref_one_hot(h).T, bias])
        return _ref_cluster(rows, thr).reshape(4, H)

    h = c = np.zeros(H, dtype=np.int64)
    states = [(h, c)]
    cycle = None
    for r in range(1, (rounds or 50) + 1):
        g = gates(h)
        c = _ref_meet(g[0], g[1], g[2], c)
        h = _ref_meet(g[3], c)
        seen = [j for j, (hj, cj) in enumerate(states) if np.array_equal(hj, h) and np.array_equal(cj, c)]
        if rounds is None and seen:
            cycle = r - seen[0]
            break
        states.append((h, c))
    if rounds is not None:
        return h, {"lstm_rounds": rounds, "lstm_converged": None, "lstm_cycle": None, "lstm_refine_rounds": 0}
    if cycle == 1:
        return h, {"lstm_rounds": r, "lstm_converged": True, "lstm_cycle": None, "lstm_refine_rounds": 0}
    if cycle:
        h = _ref_meet(*[hj for hj, _ in states[seen[0]:]])
    for k in range(1, 2 * H + 1):
        g = gates(h)
        c_new = _ref_meet(g[0], g[1], g[2], c)
        h_new = _ref_meet(h, g[3], c_new)
        if np.array_equal(h_new, h) and np.array_equal(c_new, c):
            break
        h, c = h_new, c_new
    return h, {"lstm_rounds": r, "lstm_converged": False, "lstm_cycle": cycle, "lstm_refine_rounds": k}


def reference_fibers(policy: torch.nn.Module, thresholds: Thresholds, lstm_rounds: int | None = REFERENCE_LSTM_ROUNDS) -> Fibers:
    """find_fibers written the straightforward way (see the module docstring)."""
    graph = layer_graph(policy)
    kinds = {layer.name: layer.kind for layer in graph}
    positions = conv_output_positions(policy)
    labels: dict[str, np.ndarray] = {}
    lstm: dict[str, Any] = {}
    for layer in graph:
        thr = getattr(thresholds, layer.threshold)
        m = layer.module
        fan_in = m.input_size if layer.kind == "lstm" else m.weight.shape[1]
        if layer.source is None:
            colors = np.arange(fan_in)
        elif kinds[layer.source] == "conv" and layer.kind != "conv":
            src = labels[layer.source]
            colors = (src[:, None] * positions + np.arange(positions)[None, :]).reshape(-1)
        else:
            colors = labels[layer.source]
        if layer.kind == "lstm":
            labels[layer.name], lstm = _ref_lstm(m, colors, thr, lstm_rounds)
            continue
        if layer.kind == "out":
            labels[layer.name] = np.arange(m.weight.shape[0])
            continue
        w, p = _np(m.weight), _ref_one_hot(colors)
        summed = np.einsum("oiab,ki->okab", w, p).reshape(w.shape[0], -1) if layer.kind == "conv" else w @ p.T
        labels[layer.name] = _ref_cluster(np.hstack([summed, _np(m.bias)[:, None]]), thr)
    return Fibers(labels, thresholds, policy.config.name, positions, **lstm)


# =============================================================================== policies
def make_policy(cfg: PolicyConfig, weights: str, seed: int = 0) -> torch.nn.Module:
    """``init``: the registry's initialisation; ``sgd``: then a few SGD steps on random inputs."""
    from fiberlab.policies import build_policy

    torch.manual_seed(seed)
    policy = build_policy(cfg)
    if weights == "sgd":
        opt = torch.optim.SGD(policy.parameters(), lr=0.05)
        for _ in range(8):
            obs = torch.randint(0, 256, (4, 8, *cfg.obs_shape)).float() if cfg.name == "atari" else (torch.rand(4, 8, *cfg.obs_shape) < 0.05).float() * 3
            logits, values, _ = policy(obs)
            actions = torch.randint(0, logits.shape[-1], logits.shape[:2])
            logp = torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
            loss = -(logp * torch.randn_like(logp)).mean() + 0.5 * (values - torch.randn_like(values)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return policy


def same_fibers(a: Fibers, b: Fibers) -> bool:
    return set(a.labels) == set(b.labels) and all(np.array_equal(a.labels[k], b.labels[k]) for k in a.labels)


# =============================================================================== timing
def bench(arch: str, weights: str, thr_name: str, repeats: int) -> dict[str, Any]:
    policy = make_policy(CONFIGS[arch], weights)
    thr = THRESHOLDS[thr_name]

    found: dict[str, Fibers] = {}

    def ours() -> None:
        found["ours"] = find_fibers(policy, thr)
        collapse(policy, found["ours"])

    def ref() -> None:
        found["ref"] = reference_fibers(policy, thr)
        collapse(policy, found["ref"])

    ours()  # warm-up (first BLAS / scipy calls)
    t_ours, t_ref = [], []
    for _ in range(repeats):  # interleaved, so drifts of the machine hit both alike
        t_ours.append(median_time(ours, 1))
        t_ref.append(median_time(ref, 1))
    f_ours, f_ref = found["ours"], found["ref"]
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    n_params = sum(p.numel() for p in policy.parameters())
    small = collapse(policy, f_ours)
    return {
        "arch": arch, "weights": weights, "thresholds": thr_name, "threshold_values": thr.model_dump(),
        "ours_s": mo, "reference_s": mr, "ratio": mr / mo, "ours_all_s": t_ours, "reference_all_s": t_ref,
        "target_s": TARGETS[arch], "met": mo < TARGETS[arch], "same_fibers": same_fibers(f_ours, f_ref),
        **f_ours.lstm_report(), "widths": {k: list(v) for k, v in f_ours.widths().items()},
        "params": n_params, "params_after": sum(p.numel() for p in small.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="init weights, default thresholds + merge on fast, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="runs per setting (median); default 3, 1 with --quick")
    ap.add_argument("--json", type=Path, default=None, help="write all rows here")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.quick:
        settings = [("atari", "init", "default"), ("fast", "init", "default"), ("fast", "init", "merge")]
    else:
        settings = [(a, w, t) for a in ("atari", "fast") for w in ("init", "sgd") for t in ("default", "merge")]
    print(f"fibration benchmark: find_fibers + collapse, median of {repeats}")
    print(machine_line())
    rows = []
    for arch, weights, thr_name in settings:
        r = bench(arch, weights, thr_name, repeats)
        rows.append(r)
        name = f"{arch}/{weights}/{thr_name}"
        fibers = ", ".join(f"{k} {u}->{f}" for k, (u, f) in r["widths"].items() if not k.endswith("_out"))
        print(f"{name}: ours {r['ours_s']:.3f} s, reference {r['reference_s']:.3f} s, reference / ours: {r['ratio']:.2f}  "
              f"target {r['target_s']:.0f} s: {'met' if r['met'] else 'MISSED'}")
        reached = r["lstm_converged"] and r["lstm_rounds"] <= REFERENCE_LSTM_ROUNDS
        note = "" if r["same_fibers"] or reached else f" (the reference stops after {REFERENCE_LSTM_ROUNDS} LSTM rounds)"
        lstm = "converged" if r["lstm_converged"] else f"cycle {r['lstm_cycle']}, refined in {r['lstm_refine_rounds']}"
        print(f"    same fibers as reference: {r['same_fibers']}{note}; LSTM rounds {r['lstm_rounds']} ({lstm}); params "
              f"{r['params']:,} -> {r['params_after']:,}; {fibers}")
    all_met = all(r["met"] for r in rows)
    print(f"targets (atari < {TARGETS['atari']:.0f} s, fast < {TARGETS['fast']:.0f} s): {'all met' if all_met else 'NOT all met'}")
    if args.json:
        m = machine()
        args.json.write_text(json.dumps({"machine": m["platform"], "python": m["python"], "machine_info": m, "repeats": repeats,
                                         "rows": rows, "all_met": all_met}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
