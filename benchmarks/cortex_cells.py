#!/usr/bin/env python
"""Cortex cells: forward+backward tokens/s of every cell alone and of the AgSA stack, against
``torch.nn.LSTM`` of the same width measured in the same run.

Rows: the single cells Ag (AGaLiTe), X (Transformer-XL), M (mLSTM), S (sLSTM), A (Axon),
L (LSTM), C (causal conv), each built directly from its cell class at width H (so M here runs
at H, not at the 2H inner width its PreUp block gives it in a stack), and ``AgSA``: one layer of
``build_stack("AgSA", H, 1)`` (a column of three blocks with their norms, projections and router).
``X-tensor`` and ``M-tensor`` (acting table only) are X and M with their compiled acting passes
switched off, so what the passes buy is measured in the same run; ``A+traces`` is A with
eligibility traces on.
Two modes per row:

- sequence: one ``forward`` call on ``[B, T, H]``;
- step: a Python loop over T calling ``forward`` on ``[B, H]`` and carrying the state (how a
  policy acts in an environment).

Each measurement is forward plus ``backward`` of ``mean(y**2)`` over all T steps from a fresh
state, the median of ``--repeats`` runs after one warm-up, the two modes alternating (one sequence
call, then one step loop, per repeat). tokens/s = B * T / seconds. Columns: ``seq/step`` (what the
sequence form buys: the median over repeats of the step time over the sequence time of the same
repeat, with its range in the JSON), ``seq vs nn.LSTM`` and ``step vs nn.LSTM`` (the cell's
tokens/s over ``nn.LSTM(H, H)``'s in the same mode: one ``nn.LSTM`` call on the sequence, and
length-1 calls carrying ``(h, c)`` in step mode).

A second table, **acting step**, times what a rollout does: one ``forward`` on ``[B, H]`` under
``torch.inference_mode()``, carrying the state from the previous step and passing a ``resets``
mask (about one episode start per row every 128 steps), at the acting batch ``--step-batch``
(default 64). Its reference is ``torch.nn.LSTMCell(H, H)`` stepping the same inputs in the same
run: each repeat times ``--step-iters`` steps of the reference, then of the cell, and the column
``vs nn.LSTMCell`` is the median over repeats of (LSTMCell time / cell time) of one pair (1.0 =
as fast as an LSTM step; the issue's target is at least 0.3). Before timing, every module steps
``--step-iters`` times untimed, so memories are full (X's window, AGaLiTe's traces) and buffers
are allocated.

Usage::

    .venv/bin/python benchmarks/cortex_cells.py                      # B=32, T=256, H=128, CPU (+ CUDA if present)
    .venv/bin/python benchmarks/cortex_cells.py --only X --steps 0   # the acting-step table only (--steps 0 skips fwd+bwd)
    .venv/bin/python benchmarks/cortex_cells.py --quick --only L,C,AgSA  # smoke test
    .venv/bin/python benchmarks/cortex_cells.py --batch 8 --steps 64 --hidden 64 --json cells.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common  # the src/ fallback for a plain checkout, and the machine line
import torch
from torch import nn

# pattern token -> (module under fiberlab.cortex.cells, config class, cell class)
CELLS = {
    "Ag": ("agalite", "AGaLiTeConfig", "AGaLiTeCell"),
    "X": ("xl", "XLConfig", "XLCell"),
    "M": ("mlstm", "MLSTMConfig", "MLSTMCell"),
    "S": ("slstm", "SLSTMConfig", "SLSTMCell"),
    "A": ("axon", "AxonConfig", "AxonCell"),
    "L": ("lstm", "LSTMConfig", "LSTMCell"),
    "C": ("conv", "CausalConvConfig", "CausalConvCell"),
}
STACKS = {"AgSA": "AgSA"}  # row name -> pattern, one layer
# row name -> cell: the cell with Axon eligibility traces on (trainer.axon_traces; docs/training.md),
# so their cost shows against the plain "A" row of the same run
TRACED = {"A+traces": "A"}
# acting table only: X and M with their compiled acting passes switched off (FIBERLAB_NATIVE=0), so
# what the passes buy is measured in the same run (kernels/xl_window.py, kernels/mlstm_native.py)
TENSOR_FORM = {"X-tensor": "X", "M-tensor": "M"}
ALL = [*CELLS, *TRACED, *TENSOR_FORM, *STACKS]


def build(name: str, hidden: int) -> nn.Module:
    """A cell alone from its class, or a one-layer stack from the pattern language."""
    if name in TRACED:
        from fiberlab.cortex.cells.axon import set_eligibility_traces

        cell = build(TRACED[name], hidden)
        set_eligibility_traces(cell, True)
        return cell
    if name in TENSOR_FORM:
        return TensorForm(build(TENSOR_FORM[name], hidden))
    if name in CELLS:
        module, cfg_name, cell_name = CELLS[name]
        mod = importlib.import_module(f"fiberlab.cortex.cells.{module}")
        return getattr(mod, cell_name)(getattr(mod, cfg_name)(d_hidden=hidden))
    from fiberlab.cortex.pattern import build_stack

    return build_stack(STACKS[name], hidden, 1)


class TensorForm(nn.Module):
    """A cell run with fiberlab's compiled kernels switched off (``FIBERLAB_NATIVE=0`` around each call)."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        before = os.environ.get("FIBERLAB_NATIVE")
        os.environ["FIBERLAB_NATIVE"] = "0"
        try:
            return self.cell(*args, **kwargs)
        finally:
            if before is None:
                del os.environ["FIBERLAB_NATIVE"]
            else:
                os.environ["FIBERLAB_NATIVE"] = before


class LSTMReference(nn.Module):
    """``torch.nn.LSTM(H, H)`` behind the cortex calling convention, for the same timing code."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        step = x.dim() == 2
        y, state = self.lstm(x.unsqueeze(1) if step else x, state)
        return (y.squeeze(1) if step else y), state


class LSTMCellReference(nn.Module):
    """``torch.nn.LSTMCell(H, H)`` carrying ``(h, c)``: the acting-step reference (no resets)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(hidden, hidden)

    def forward(self, x: torch.Tensor, state: tuple | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
        h, c = self.cell(x, state)
        return h, (h, c)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_sequence(m: nn.Module, x: torch.Tensor) -> None:
    y, _ = m(x)
    y.pow(2).mean().backward()


def run_steps(m: nn.Module, x: torch.Tensor) -> None:
    state, ys = None, []
    for t in range(x.shape[1]):
        y, state = m(x[:, t], state)
        ys.append(y)
    torch.stack(ys, 1).pow(2).mean().backward()


def timed(fn: Callable[[nn.Module, torch.Tensor], None], m: nn.Module, x: torch.Tensor) -> float:
    _sync(x.device)
    t0 = time.perf_counter()
    fn(m, x)
    _sync(x.device)
    m.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def bench(name: str, m: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Sequence and step mode, alternating: each repeat times one sequence call, then one step loop.

    Why alternate: this runs on shared, noisy machines, whose speed drifts over seconds; timed
    back to back, the two modes of a pair see the same machine, so their ratio (the figure the
    issue's target is about) is taken per pair, and we report the median of those ratios.
    """
    tokens = x.shape[0] * x.shape[1]
    for fn in (run_sequence, run_steps):  # warm-up: allocator, kernels, lazy init, JIT compiles
        fn(m, x)
        m.zero_grad(set_to_none=True)
    pairs = [(timed(run_sequence, m, x), timed(run_steps, m, x)) for _ in range(repeats)]
    seq = statistics.median(p[0] for p in pairs)
    step = statistics.median(p[1] for p in pairs)
    return {"name": name, "device": str(x.device), "params": sum(p.numel() for p in m.parameters()),
            "seq_s": seq, "step_s": step, "seq_tokens_per_s": tokens / seq, "step_tokens_per_s": tokens / step,
            "seq_over_step": statistics.median(st / sq for sq, st in pairs),
            "seq_over_step_range": [min(st / sq for sq, st in pairs), max(st / sq for sq, st in pairs)]}


def run_acting(m: nn.Module, xs: torch.Tensor, resets: torch.Tensor, state: Any) -> tuple[float, Any]:
    """Step ``m`` over ``xs`` ``[N, B, H]`` as a rollout does (inference mode, state carried, resets
    passed); return the seconds and the last state (the next run continues from it)."""
    _sync(xs.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for t in range(xs.shape[0]):
            _, state = m(xs[t], state, resets=resets[t])
    _sync(xs.device)
    return time.perf_counter() - t0, state


def bench_acting(name: str, m: nn.Module, ref: nn.Module, xs: torch.Tensor, resets: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Acting step of ``m`` against ``ref`` (nn.LSTMCell), timed in pairs, reference first.

    Why pairs: as in :func:`bench`, the machine's speed drifts, so the ratio is taken per pair and
    the median of the ratios reported. The first untimed run fills memories and buffers.
    """
    steps, batch = xs.shape[0], xs.shape[1]
    _, state = run_acting(m, xs, resets, None)
    _, ref_state = run_acting(ref, xs, resets, None)
    pairs = []
    for _ in range(repeats):
        t_ref, ref_state = run_acting(ref, xs, resets, ref_state)
        t_cell, state = run_acting(m, xs, resets, state)
        pairs.append((t_ref / steps, t_cell / steps))
    ratios = [r / c for r, c in pairs]
    return {"name": name, "device": str(xs.device), "batch": batch, "step_us": 1e6 * statistics.median(c for _, c in pairs),
            "lstmcell_step_us": 1e6 * statistics.median(r for r, _ in pairs), "vs_lstmcell": statistics.median(ratios),
            "vs_lstmcell_range": [min(ratios), max(ratios)]}


ACTING_TARGET = 0.3  # the target: every cell's acting step at least 0.3x an nn.LSTMCell step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=256, help="sequence length T")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-batch", type=int, default=64, help="acting-step table: batch (rows stepping together); 0 skips the table")
    ap.add_argument("--step-iters", type=int, default=256, help="acting-step table: steps per timed run")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated rows among {','.join(ALL)}")
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu, and cuda when present)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="B=4, T=16, H=32, 1 repeat; acting B=4, 8 steps: a smoke test")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.hidden, args.repeats = 4, min(args.steps, 16), 32, 1  # --steps 0 still skips
        args.step_batch, args.step_iters = min(args.step_batch, 4), 8
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in ALL]
    if (bad or min(args.batch, args.hidden, args.repeats, args.step_iters) < 1 or min(args.steps, args.step_batch) < 0
            or args.device not in ("cpu", "cuda", "auto")):
        print(f"cortex_cells: error: bad rows {bad} or sizes or device {args.device!r}: rows among {','.join(ALL)}, "
              "positive sizes (--steps and --step-batch may be 0: skip that table), device cpu|cuda|auto are allowed", file=sys.stderr)
        return 2
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else [args.device if args.device != "auto" else "cpu"]
    torch.set_num_threads(args.threads)
    if args.steps:
        print(f"cortex cells: forward+backward, B={args.batch} T={args.steps} H={args.hidden}, median of {args.repeats}")
    print(bench_common.machine_line())
    rows, missing, acting = [], [], []
    for dev in devices:
        device = torch.device(dev)
        if args.step_batch:
            acting.extend(acting_table(names, args, device, missing))
        if not args.steps:
            continue
        torch.manual_seed(0)
        x = torch.randn(args.batch, args.steps, args.hidden, device=device)
        ref = bench("nn.LSTM", LSTMReference(args.hidden).to(device), x, args.repeats)
        ref["vs_lstm"], ref["step_vs_lstm"] = 1.0, 1.0
        print(f"\n[{dev}] {'row':<8} {'params':>9} {'seq tok/s':>11} {'step tok/s':>11} {'seq/step':>9} {'seq vs nn.LSTM':>15} {'step vs nn.LSTM':>16}")
        table = [ref]
        for name in names:
            if name in TENSOR_FORM:  # the compiled passes are acting-only: this row would repeat its cell's
                continue
            try:
                m = build(name, args.hidden).to(device)
            except (ImportError, AttributeError) as e:  # a cell not written yet: say so, keep going
                if name not in missing:
                    missing.append(name)
                print(f"      {name:<8} not measured: {type(e).__name__}: {e}")
                continue
            r = bench(name, m, x, args.repeats)
            r["vs_lstm"] = r["seq_tokens_per_s"] / ref["seq_tokens_per_s"]
            r["step_vs_lstm"] = r["step_tokens_per_s"] / ref["step_tokens_per_s"]
            table.append(r)
        for r in table:
            print(f"      {r['name']:<8} {r['params']:>9,} {r['seq_tokens_per_s']:>11,.0f} {r['step_tokens_per_s']:>11,.0f} "
                  f"{r['seq_over_step']:>8.2f}x {r['vs_lstm']:>14.3f}x {r['step_vs_lstm']:>15.3f}x")
        rows.extend(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": bench_common.machine(), "torch": torch.__version__, "batch": args.batch,
                                         "steps": args.steps, "hidden": args.hidden, "repeats": args.repeats,
                                         "threads": torch.get_num_threads(), "rows": rows, "not_measured": missing,
                                         "step_batch": args.step_batch, "step_iters": args.step_iters, "acting_rows": acting,
                                         "acting_target": ACTING_TARGET}, indent=2))
    return 0


def acting_table(names: list[str], args: argparse.Namespace, device: torch.device, missing: list[str]) -> list[dict[str, Any]]:
    """The acting-step table on ``device``: one row per module, each against nn.LSTMCell."""
    torch.manual_seed(0)
    B, H, N = args.step_batch, args.hidden, args.step_iters
    xs = torch.randn(N, B, H, device=device)
    g = torch.Generator().manual_seed(1)
    resets = (torch.rand(N, B, generator=g) < 1 / 128).to(device)  # ~one episode start per row every 128 steps
    ref = LSTMCellReference(H).to(device)
    print(f"\n[{device.type}] acting step: B={B} H={H}, {N} steps per run, inference mode, median of {args.repeats} "
          f"(ref, cell) pairs; vs nn.LSTMCell = LSTMCell time / cell time, target >= {ACTING_TARGET}")
    print(f"      {'row':<8} {'us/step':>9} {'LSTMCell us':>12} {'vs nn.LSTMCell':>15} {'range':>13}  target")
    out = []
    for name in names:
        try:
            m = build(name, H).to(device)
        except (ImportError, AttributeError) as e:
            if name not in missing:
                missing.append(name)
            print(f"      {name:<8} not measured: {type(e).__name__}: {e}")
            continue
        r = bench_acting(name, m, ref, xs, resets, args.repeats)
        lo, hi = r["vs_lstmcell_range"]
        print(f"      {name:<8} {r['step_us']:>9,.0f} {r['lstmcell_step_us']:>12,.0f} {r['vs_lstmcell']:>14.2f}x "
              f"{f'[{lo:.2f}-{hi:.2f}]':>13}  {'met' if r['vs_lstmcell'] >= ACTING_TARGET else 'NOT met'}")
        out.append(r)
    if device.type == "cpu":
        for name, (source, compiled) in compiled_passes(H).items():
            if name in names:
                print(f"      {name} acts through " + (f"its compiled pass (kernels/{source})" if compiled else
                                                      "its tensor form: no C compiler, or FIBERLAB_NATIVE=0 (kernels/native.py)"))
    return out


def compiled_passes(H: int) -> dict[str, tuple[str, bool]]:
    """Cells with a compiled acting pass: row -> (C source, whether it builds and loads here)."""
    from fiberlab.cortex.kernels import mlstm_native, xl_window

    x, m = build("X", H), build("M", H)
    return {"X": ("xl_window.c", xl_window.KERNELS.get(x.n_heads, H, x.mem_len + 1) is not None),
            "M": ("mlstm_step.c", mlstm_native.KERNELS.get(m.num_heads, m.head_dim) is not None)}


if __name__ == "__main__":
    sys.exit(main())
