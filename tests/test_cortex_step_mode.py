"""Step mode (one step per call, how a rollout acts) against sequence mode, on the acting code paths.

Why a file of its own: ``test_cortex_cells_*`` and ``test_cortex_structure`` already compare step
loops with sequence calls, but with autograd on. Acting runs under ``torch.inference_mode()``,
and there several cells take other paths: X appends its memory window in place
(``kernels/window.py``) and caches its key-side tables, AGaLiTe runs a compiled step, and a
column hands its cells ``[B, 1, H]`` instead of ``[B, H]``. Here every cell is stepped that way
and compared with one sequence call (outputs and final state), with carried state and resets;
X also across many window-buffer refills, with state handed from sequence to step mode and
back, with branches from old states, and with weights changed between steps.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import assert_states_close as shared_assert_states_close

from fiberlab.cortex.base import detach_state
from fiberlab.cortex.cells.agalite import AGaLiTeCell, AGaLiTeConfig
from fiberlab.cortex.cells.axon import AxonCell, AxonConfig
from fiberlab.cortex.cells.conv import CausalConvCell, CausalConvConfig
from fiberlab.cortex.cells.lstm import LSTMCell, LSTMConfig
from fiberlab.cortex.cells.mlstm import MLSTMCell, MLSTMConfig
from fiberlab.cortex.cells.slstm import SLSTMCell, SLSTMConfig
from fiberlab.cortex.cells.xl import XLCell, XLConfig
from fiberlab.cortex.kernels.cpu_loops import AVAILABLE as NUMBA
from fiberlab.cortex.kernels.window import append_row
from fiberlab.cortex.pattern import build_stack

torch.set_num_threads(1)
H, B = 16, 3
MEM = 6  # X's mem_len: the sequences below are several windows (and window-buffer refills) long
F64 = torch.float64
TIGHT = {"atol": 1e-10, "rtol": 1e-9}

CELLS = {
    "Ag": lambda: AGaLiTeCell(AGaLiTeConfig(d_hidden=H, n_heads=4, eta=3, r=2)),
    "X": lambda: XLCell(XLConfig(d_hidden=H, n_heads=4, mem_len=MEM)),
    "X^": lambda: XLCell(XLConfig(d_hidden=H, n_heads=4, mem_len=MEM, axonify=True)),
    "M": lambda: MLSTMCell(MLSTMConfig(d_hidden=H, num_heads=4, chunk_size=4)),
    "S": lambda: SLSTMCell(SLSTMConfig(d_hidden=H, num_heads=4)),
    "A": lambda: AxonCell(AxonConfig(d_hidden=H)),
    "L": lambda: LSTMCell(LSTMConfig(d_hidden=H)),
    "C": lambda: CausalConvCell(CausalConvConfig(d_hidden=H)),
}
MODES = {"inference": torch.inference_mode, "no_grad": torch.no_grad, "grad": contextlib.nullcontext}


def make(name: str, seed: int = 0) -> torch.nn.Module:
    """A float64 cell with every parameter moved off its init (zero-initialised paths would hide bugs)."""
    torch.manual_seed(seed)
    cell = CELLS[name]().to(F64)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cell


def inputs(steps: int, seed: int = 1, p_reset: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, steps, H, generator=g, dtype=F64)
    resets = torch.rand(B, steps, generator=g) < p_reset
    resets[0, 0] = resets[1, steps // 2] = True
    resets[2, 3] = resets[2, 4] = True  # two in a row
    return x, resets


def assert_states_close(a: dict, b: dict, **tol) -> None:
    shared_assert_states_close(a, b, **(tol or TIGHT))


def step_loop(module, x, state, resets, as_column: bool = False):
    """Step ``module`` over ``x`` as a rollout does; ``as_column``: one-step sequences ``[B, 1, H]``."""
    ys = []
    for t in range(x.shape[1]):
        xt, rt = (x[:, t:t + 1], resets[:, t:t + 1]) if as_column else (x[:, t], resets[:, t])
        y, state = module(xt, state, resets=rt)
        ys.append(y[:, 0] if as_column else y)
    return torch.stack(ys, 1), state


def carried(cell, seed: int = 7):
    """A non-zero state from an earlier sequence call (X: memory partly filled and partly reset)."""
    x, r = inputs(MEM + 3, seed=seed)
    with torch.no_grad():
        return detach_state(cell(x, resets=r)[1])


@pytest.mark.parametrize("as_column", [False, True], ids=["x[B,H]", "x[B,1,H]"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(CELLS))
def test_acting_step_loop_equals_one_sequence_call(name, mode, as_column):
    """Outputs and final state of a step loop == one sequence call, with carried state and resets."""
    cell = make(name)
    x, resets = inputs(4 * MEM + 5)  # X: the window buffer (2 mem_len + 1 rows) refills several times
    state = carried(cell)
    with torch.no_grad():
        y_seq, s_seq = cell(x, state, resets=resets)
    with MODES[mode]():
        y_step, s_step = step_loop(cell, x, state, resets, as_column)
    torch.testing.assert_close(y_step, y_seq, **TIGHT)
    assert_states_close(s_step, s_seq)


@pytest.mark.parametrize("mode", ["inference", "no_grad"])
def test_agsa_column_acting_equals_its_sequence_call(mode):
    """A column hands its cells [B, 1, H]: the acting paths (Ag's compiled step, S's fused step) run inside it."""
    torch.manual_seed(0)
    stack = build_stack("AgSA,X", H, 2, XLConfig={"mem_len": MEM}).to(F64)
    x, resets = inputs(2 * MEM + 3)
    with torch.no_grad():
        y_seq, s_seq = stack(x, resets=resets)
    with MODES[mode]():
        y_step, s_step = step_loop(stack, x, None, resets)
    torch.testing.assert_close(y_step, y_seq, **TIGHT)
    assert_states_close(s_step, s_seq)


@pytest.mark.parametrize("mode", ["inference", "no_grad", "grad"])
def test_xl_state_handed_from_sequence_to_steps_and_back(mode):
    """sequence -> steps -> sequence == one sequence call, with resets inside each part."""
    cell = make("X")
    x, resets = inputs(5 * MEM, seed=3)
    state = carried(cell, seed=4)
    with torch.no_grad():
        y_all, s_all = cell(x, state, resets=resets)
        a, b = MEM + 1, 3 * MEM + 2  # boundaries inside a window
        y1, s1 = cell(x[:, :a], state, resets=resets[:, :a])
    with MODES[mode]():
        y2, s2 = step_loop(cell, x[:, a:b], s1, resets[:, a:b])
    with torch.no_grad():
        y3, s3 = cell(x[:, b:], s2, resets=resets[:, b:])
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), y_all, **TIGHT)
    assert_states_close(s3, s_all)


def test_xl_memory_is_truncated_to_mem_len_in_step_mode():
    """After many steps the state holds exactly the last mem_len inputs, oldest first, all valid."""
    cell = make("X")
    x, _ = inputs(3 * MEM + 4, seed=5)
    none = torch.zeros(B, x.shape[1], dtype=torch.bool)
    with torch.inference_mode():
        _, s = step_loop(cell, x, None, none)
    assert s["mem"].shape == (B, MEM, H)
    torch.testing.assert_close(s["mem"], x[:, -MEM:], atol=0, rtol=0)
    assert torch.equal(s["mem_valid"], torch.ones(B, MEM, dtype=F64))
    # an input more than mem_len steps back does not reach this step; one mem_len back does
    x_far, x_near = x.clone(), x.clone()
    x_far[:, -MEM - 2] += 1.0
    x_near[:, -MEM - 1] += 1.0
    with torch.inference_mode():
        y = step_loop(cell, x, None, none)[0][:, -1]
        y_far = step_loop(cell, x_far, None, none)[0][:, -1]
        y_near = step_loop(cell, x_near, None, none)[0][:, -1]
    torch.testing.assert_close(y_far, y, atol=0, rtol=0)
    assert (y_near - y).abs().max() > 1e-6


def test_xl_acting_never_changes_an_earlier_state():
    """The in-place window append must leave every state handed out before it as it was, also when
    a second step starts from an old state (a branch, as the rollout's bootstrap step does)."""
    cell = make("X")
    x, resets = inputs(3 * MEM, seed=6)
    with torch.inference_mode():
        states, ys = [None], []
        for t in range(x.shape[1]):
            y, s = cell(x[:, t], states[-1], resets=resets[:, t])
            ys.append(y)
            states.append(s)
        frozen = [None] + [{k: v.clone() for k, v in s.items()} for s in states[1:]]
        # branch from every old state with other inputs: each branch must give what a fresh copy gives
        for t in range(1, len(states) - 1):
            x_other = x[:, t] + 1.0
            y_branch, _ = cell(x_other, states[t], resets=resets[:, t])
            y_copy, _ = cell(x_other, {k: v.clone() for k, v in states[t].items()}, resets=resets[:, t])
            torch.testing.assert_close(y_branch, y_copy, atol=0, rtol=0)
        for s, f in zip(states[1:], frozen[1:]):
            for k in s:
                assert torch.equal(s[k], f[k]), k
        # and stepping on from the latest state after all those branches still matches the sequence call
        y_next, _ = cell(x[:, 0], states[-1])
        y_seq, _ = cell(torch.cat([x, x[:, :1]], 1), resets=torch.cat([resets, torch.zeros(B, 1, dtype=torch.bool)], 1))
        torch.testing.assert_close(y_next, y_seq[:, -1], **TIGHT)


def test_append_row_writes_in_place_only_when_it_is_safe():
    """Unit test of the window: one row written per step, a branch copies, autograd always copies."""
    mem = torch.zeros(2, 4, 3)
    with torch.no_grad():
        _, s1 = append_row(mem, torch.full((2, 3), 1.0), slack=4)  # untagged input: a fresh buffer
        w2, s2 = append_row(s1, torch.full((2, 3), 2.0), slack=4)
        assert s2.untyped_storage().data_ptr() == s1.untyped_storage().data_ptr()  # appended in place
        torch.testing.assert_close(w2, torch.cat([s1, torch.full((2, 1, 3), 2.0)], 1))
        _, sb = append_row(s1, torch.full((2, 3), 9.0), slack=4)  # branch from s1: must not touch s2
        assert sb.untyped_storage().data_ptr() != s1.untyped_storage().data_ptr()
        assert torch.equal(s2[:, -1], torch.full((2, 3), 2.0)) and torch.equal(sb[:, -1], torch.full((2, 3), 9.0))
        s = s2
        for i in range(10):  # past the slack: refills into new buffers, values unchanged
            _, s = append_row(s, torch.full((2, 3), 10.0 + i), slack=4)
        assert torch.equal(s[0, :, 0], torch.tensor([16.0, 17.0, 18.0, 19.0]))
    m = torch.zeros(2, 4, 3, requires_grad=True)
    w, s = append_row(m, torch.ones(2, 3), slack=4)  # autograd on: plain cat, gradients flow
    (w.sum() + s.sum()).backward()
    assert torch.equal(m.grad[:, 0], torch.ones(2, 3)) and torch.equal(m.grad[:, 1:], 2 * torch.ones(2, 3, 3))


def test_xl_invalid_memory_slots_do_not_matter():
    """Slots before a reset keep their values (they are not zeroed, see xl.py) but are masked exactly."""
    cell = make("X")
    state = carried(cell)
    x, resets = inputs(2 * MEM, seed=8)
    garbage = {k: v.clone() for k, v in state.items()}
    garbage["mem"] = torch.where(garbage["mem_valid"].unsqueeze(-1) > 0.5, garbage["mem"], torch.randn_like(garbage["mem"]) * 100)
    assert not torch.equal(garbage["mem"], state["mem"])  # the carried state has invalid slots to perturb
    for ctx in (torch.inference_mode, contextlib.nullcontext):
        with ctx():
            torch.testing.assert_close(step_loop(cell, x, garbage, resets)[0], step_loop(cell, x, state, resets)[0], **TIGHT)
            torch.testing.assert_close(cell(x, garbage, resets=resets)[0], cell(x, state, resets=resets)[0], **TIGHT)


def test_xl_step_does_not_reproject_the_memory():
    """A step touches the memory only through the two attention products: k_proj and v_proj are never
    applied to it, and the step's multiply-adds are far below re-projecting M+1 rows (2 (M+1) H^2)."""
    from torch.utils.flop_counter import FlopCounterMode

    Hb, M, Bb = 64, 128, 4
    cell = XLCell(XLConfig(d_hidden=Hb, mem_len=M))
    calls = []
    for proj in (cell.k_proj, cell.v_proj):
        proj.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    state = cell.init_state(Bb)
    with torch.inference_mode():
        _, state = cell(torch.randn(Bb, Hb), state)  # fills the key-side cache
        with FlopCounterMode(display=False) as counter:
            cell(torch.randn(Bb, Hb), state)
    assert calls == []
    reprojection = 2 * (2 * (M + 1) * Hb * Hb) * Bb  # flops of k_proj and v_proj over [mem; x]
    assert counter.get_total_flops() < reprojection / 4, (counter.get_total_flops(), reprojection)


def test_xl_step_cache_follows_the_weights():
    """The cached key-side tables are rebuilt after an optimizer step, load_state_dict and no_grad edits,
    and after clear_step_cache() for a .data write (which no version counter sees)."""
    cell = make("X")
    x, resets = inputs(MEM + 2, seed=9)
    state = carried(cell)

    def acting() -> torch.Tensor:
        with torch.inference_mode():
            return cell(x[:, 0], state, resets=resets[:, 0])[0]

    def reference() -> torch.Tensor:  # autograd on: never cached
        return cell(x[:, 0], state, resets=resets[:, 0])[0].detach()

    before = acting()
    torch.testing.assert_close(before, reference(), **TIGHT)
    opt = torch.optim.SGD(cell.parameters(), lr=0.5)
    cell(x, state, resets=resets)[0].pow(2).sum().backward()
    opt.step()
    after = acting()
    assert (after - before).abs().max() > 1e-6
    torch.testing.assert_close(after, reference(), **TIGHT)
    other = make("X", seed=1)
    cell.load_state_dict(other.state_dict())
    torch.testing.assert_close(acting(), reference(), **TIGHT)
    with torch.no_grad():
        cell.r_proj.weight.mul_(2.0)
        cell.u_bias.add_(1.0)
    torch.testing.assert_close(acting(), reference(), **TIGHT)
    cell.k_proj.weight.data.mul_(0.5)  # invisible to the version counter ...
    cell.clear_step_cache()  # ... hence the documented call
    torch.testing.assert_close(acting(), reference(), **TIGHT)


@pytest.mark.parametrize("name", ["X", "M", "S"])
def test_step_loop_gradients_equal_sequence_gradients(name):
    """Autograd through a step loop (the rewritten step paths) gives the sequence call's gradients."""
    cell = make(name)
    x, resets = inputs(2 * MEM + 1, seed=10)
    state = carried(cell)
    w = torch.linspace(-1, 1, B * x.shape[1] * H, dtype=F64).view(B, x.shape[1], H)
    grads = []
    for run in ("sequence", "steps"):
        cell.zero_grad(set_to_none=True)
        y = cell(x, state, resets=resets)[0] if run == "sequence" else step_loop(cell, x, state, resets)[0]
        (y * w).sum().backward()
        grads.append({n: p.grad.clone() for n, p in cell.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], **TIGHT, msg=n)


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_agalite_acting_runs_the_compiled_step(monkeypatch):
    """Guard against acting silently falling back to the slower tensor-op step."""
    from fiberlab.cortex.cells import agalite

    calls = []
    original = agalite.agalite_step
    monkeypatch.setattr(agalite, "agalite_step", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    cell = make("Ag")
    with torch.inference_mode():
        cell(torch.randn(B, H, dtype=F64))
        cell(torch.randn(B, 1, H, dtype=F64))
    cell(torch.randn(B, H, dtype=F64))  # autograd on: the tensor-op step
    assert len(calls) == 2
