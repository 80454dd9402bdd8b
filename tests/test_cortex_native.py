"""The compiled acting passes of X (``kernels/xl_window.c``) and M (``kernels/mlstm_step.c``)
against the tensor forms they replace, and the compile-and-cache machinery (``kernels/native.py``).

The step-mode tests in ``test_cortex_step_mode.py`` run in float64, where both cells take their
tensor forms; here cells are float32 (what rollouts use), so acting goes through the kernels. X runs
at shapes that take each of its code paths: 16 / NH slots reduced together (NH = 1, 2, 4, 8, 16), a
left-over tail of slots, NH not dividing 16 (per-slot sums), and windows shorter and longer than one
block. Results are held to a float64 run of the same steps: as accurate as the float32 tensor form
(the kernels sum in another order and have their own ``exp``), and states bit-exact where no
arithmetic is involved (X's window and validity).
"""
from __future__ import annotations

import copy
import os
import shutil
import warnings

import pytest
import torch

from fiberlab.cortex.cells.mlstm import MLSTMCell, MLSTMConfig
from fiberlab.cortex.cells.xl import XLCell, XLConfig
from fiberlab.cortex.kernels import mlstm_native, native, xl_window

HAVE_CC = shutil.which(os.environ.get("CC", "cc")) is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler: X acts through its tensor form")
B = 5
# (H, heads, mem_len): heads 4 / 2 / 8 / 1 / 16 group 4 / 8 / 2 / 16 / 1 slots; 3 heads take the per-slot path;
# mem_len 40 and 70 span two and three 32-slot blocks with a tail
SHAPES = [(32, 4, 6), (32, 2, 7), (64, 8, 40), (32, 1, 20), (16, 16, 3), (48, 3, 9), (32, 4, 70)]


def make(H: int, heads: int, mem_len: int, seed: int = 0, cell: torch.nn.Module | None = None) -> torch.nn.Module:
    """An X cell (or ``cell``) with every parameter moved off its init (zero-initialised u, v and gates)."""
    torch.manual_seed(seed)
    cell = cell or XLCell(XLConfig(d_hidden=H, n_heads=heads, mem_len=mem_len))
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))  # off the zero init of u and v
    return cell


def inputs(H: int, steps: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(B, steps, H, generator=g)
    resets = torch.rand(B, steps, generator=g) < 0.1
    resets[0, 0] = resets[1, steps // 2] = True
    resets[2, 3] = resets[2, 4] = True
    return x, resets


def act(cell: torch.nn.Module, x: torch.Tensor, resets: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
    """A rollout's acting loop: one ``[B, H]`` step at a time under inference mode."""
    ys = []
    with torch.inference_mode():
        state = state if state is not None else cell.init_state(B)
        for t in range(x.shape[1]):
            y, state = cell(x[:, t], state, resets=resets[:, t])
            ys.append(y)
    return torch.stack(ys, 1), state


@pytest.fixture
def kernel_calls(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes the compiled passes ran for (a guard against silently taking a tensor form)."""
    calls: list[tuple[int, ...]] = []
    for kernels in (xl_window.KERNELS, mlstm_native.KERNELS):
        def spy(*shape, _get=kernels.get):
            fn = _get(*shape)
            if fn is not None:
                calls.append(shape)
            return fn
        monkeypatch.setattr(kernels, "get", spy)
    return calls


def as_accurate(y: torch.Tensor, y_ref: torch.Tensor, y64: torch.Tensor, factor: float = 2.0) -> None:
    """``y`` is about as close to the float64 truth ``y64`` as the float32 tensor form ``y_ref`` is
    (within ``factor``: the kernel sums in another order and has its own ``exp``)."""
    err, err_ref = (y.double() - y64).abs().max().item(), (y_ref.double() - y64).abs().max().item()
    assert err <= factor * err_ref + 1e-7 * y64.abs().max().item(), (err, err_ref)
    assert err < 1e-5 * max(1.0, y64.abs().max().item()), err  # and float32-close in absolute terms


def in_float64(cell: torch.nn.Module, x: torch.Tensor, resets: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    """The same steps by a float64 copy of the cell (the tensor form): the truth both are held to."""
    c64 = copy.deepcopy(cell).double()
    state = None if state is None else {k: v.double() for k, v in state.items()}
    return act(c64, x.double(), resets, state)[0]


@needs_cc
@pytest.mark.parametrize("H,heads,mem_len", SHAPES)
def test_compiled_step_equals_the_tensor_step(H, heads, mem_len, monkeypatch, kernel_calls):
    """Outputs to float32 rounding, and the state (window and validity) exactly, over several window
    lengths of steps with resets."""
    cell = make(H, heads, mem_len)
    x, resets = inputs(H, 2 * mem_len + 9)
    y_fast, s_fast = act(cell, x, resets)
    assert len(kernel_calls) == x.shape[1] and set(kernel_calls) == {(heads, H, mem_len + 1)}
    monkeypatch.setenv("FIBERLAB_NATIVE", "0")
    y_ref, s_ref = act(cell, x, resets)
    assert len(kernel_calls) == x.shape[1]  # the reference never ran the kernel
    as_accurate(y_fast, y_ref, in_float64(cell, x, resets))
    assert torch.equal(s_fast["mem"], s_ref["mem"]) and torch.equal(s_fast["mem_valid"], s_ref["mem_valid"])


@needs_cc
@pytest.mark.parametrize("H,heads,mem_len", [(32, 4, 6), (32, 4, 70)])
def test_compiled_steps_equal_one_sequence_call(H, heads, mem_len, kernel_calls):
    """Acting step by step through the kernel == the sequence form training uses, from a carried state."""
    cell = make(H, heads, mem_len)
    x0, r0 = inputs(H, mem_len // 2 + 3, seed=5)
    with torch.no_grad():
        _, state = cell(x0, resets=r0)  # memory partly filled, partly cut off by resets
    x, resets = inputs(H, mem_len + 11, seed=6)
    with torch.no_grad():
        y_seq, s_seq = cell(x, state, resets=resets)
    y_steps, s_steps = act(cell, x, resets, state)
    assert kernel_calls
    as_accurate(y_steps, y_seq, in_float64(cell, x, resets, state))
    assert torch.equal(s_steps["mem_valid"], s_seq["mem_valid"])
    valid = s_seq["mem_valid"].unsqueeze(-1) > 0.5  # invalid slots keep stale values in either form
    assert torch.equal(torch.where(valid, s_steps["mem"], 0.0), torch.where(valid, s_seq["mem"], 0.0))


@needs_cc
def test_hidden_slots_are_never_read_even_if_they_hold_nan(kernel_calls):
    """Slots masked by a reset or marked invalid may hold anything (stale values, inf, nan): the
    output is bit-for-bit that of a clean memory, as in the tensor form (softmax weight exactly 0)."""
    H, heads, M = 32, 4, 40
    cell = make(H, heads, M)
    x, resets = inputs(H, M + 5, seed=2)
    _, state = act(cell, x, resets)
    assert 0 < state["mem_valid"].sum() < state["mem_valid"].numel()
    invalid = state["mem_valid"].unsqueeze(-1) < 0.5
    poisoned = dict(state, mem=torch.where(invalid, torch.tensor(float("nan")), state["mem"]))
    poisoned["mem"][:, 0, 0] = float("inf") if state["mem_valid"][0, 0] < 0.5 else poisoned["mem"][0, 0, 0]
    clean = dict(state, mem=torch.where(invalid, 0.0, state["mem"]))
    x2, r2 = inputs(H, 6, seed=3)
    y_poisoned, _ = act(cell, x2, r2, poisoned)
    y_clean, _ = act(cell, x2, r2, clean)
    assert torch.isfinite(y_poisoned).all()
    assert torch.equal(y_poisoned, y_clean)
    assert kernel_calls


@needs_cc
def test_kernel_runs_only_without_autograd_on_float32_cpu(kernel_calls):
    cell = make(32, 4, 6)
    x = torch.randn(B, 32)
    cell(x, cell.init_state(B))  # autograd on: the differentiable tensor form
    with torch.inference_mode():
        cell.double()(x.double(), cell.init_state(B, dtype=torch.float64))  # float64: the tensor form
        assert kernel_calls == []
        cell.float()(x, cell.init_state(B))
    assert kernel_calls == [(4, 32, 7)]
    with torch.no_grad():  # no_grad acts through it too
        cell(x, cell.init_state(B))
    assert len(kernel_calls) == 2


def make_m(H: int, heads: int, seed: int = 0) -> MLSTMCell:
    torch.manual_seed(seed)
    return make(H, heads, 0, seed, cell=MLSTMCell(MLSTMConfig(d_hidden=H, num_heads=heads, chunk_size=4)))


@needs_cc
@pytest.mark.parametrize("H,heads", [(128, 4), (32, 4), (48, 3), (24, 2)])
def test_compiled_mlstm_step_equals_the_tensor_step(H, heads, monkeypatch, kernel_calls):
    """M's outputs and its state (C, n, m) to float32 rounding, over steps with resets."""
    cell = make_m(H, heads)
    x, resets = inputs(H, 30)
    y_fast, s_fast = act(cell, x, resets)
    assert len(kernel_calls) == 30 and set(kernel_calls) == {(heads, H // heads)}
    monkeypatch.setenv("FIBERLAB_NATIVE", "0")
    y_ref, s_ref = act(cell, x, resets)
    assert len(kernel_calls) == 30
    as_accurate(y_fast, y_ref, in_float64(cell, x, resets), factor=4.0)
    for key in ("c", "n", "m"):
        torch.testing.assert_close(s_fast[key], s_ref[key], atol=1e-5, rtol=1e-5, msg=key)
    assert torch.equal(s_fast["conv"], s_ref["conv"])


@needs_cc
def test_compiled_mlstm_steps_equal_one_chunkwise_sequence_call(kernel_calls):
    """Acting step by step through the kernel == the chunkwise form training uses, from a carried state."""
    H = 32
    cell = make_m(H, 4)
    x0, r0 = inputs(H, 9, seed=5)
    with torch.no_grad():
        _, state = cell(x0, resets=r0)
    x, resets = inputs(H, 13, seed=6)
    with torch.no_grad():
        y_seq, s_seq = cell(x, state, resets=resets)
    y_steps, s_steps = act(cell, x, resets, state)
    assert kernel_calls
    as_accurate(y_steps, y_seq, in_float64(cell, x, resets, state), factor=4.0)
    torch.testing.assert_close(s_steps["c"], s_seq["c"], atol=1e-4, rtol=1e-4)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache folder and no library loaded in this process (forgotten again afterwards)."""
    monkeypatch.setenv("FIBERLAB_KERNEL_CACHE", str(tmp_path))
    native.forget()
    yield tmp_path
    native.forget()


def test_without_a_compiler_x_warns_once_and_acts_through_the_tensor_form(fresh_cache, monkeypatch):
    cell = make(32, 4, 6)
    x, resets = inputs(32, 6)
    monkeypatch.setenv("FIBERLAB_NATIVE", "0")
    y_ref, _ = act(cell, x, resets)
    monkeypatch.setenv("FIBERLAB_NATIVE", "1")
    monkeypatch.setenv("CC", str(fresh_cache / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match="no C compiler.*no-such-cc.*slower tensor form"):
        y, _ = act(cell, x, resets)
    assert torch.equal(y, y_ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning, no new attempt
        act(cell, x, resets)
    assert list(fresh_cache.iterdir()) == []


@needs_cc
@pytest.mark.parametrize("flags", native.FLAG_SETS, ids=["fast-math", "no-fast-math", "portable"])
def test_every_fallback_flag_set_builds_kernels_that_agree(flags, fresh_cache, monkeypatch, kernel_calls):
    """A machine where the first flag set fails (no libmvec, no -march=native) gets the next; each
    must build both kernels and give the tensor forms' numbers."""
    monkeypatch.setattr(native, "FLAG_SETS", (flags,))
    for cell, H in ((make(32, 4, 20), 32), (make_m(32, 4), 32)):
        x, resets = inputs(H, 25)
        y_fast, _ = act(cell, x, resets)
        monkeypatch.setenv("FIBERLAB_NATIVE", "0")
        y_ref, _ = act(cell, x, resets)
        monkeypatch.delenv("FIBERLAB_NATIVE")
        as_accurate(y_fast, y_ref, in_float64(cell, x, resets), factor=4.0)
    assert {len(shape) for shape in kernel_calls} == {2, 3}  # both kernels ran (M by (NH, d), X by (NH, H, M+1))
    assert len([p for p in fresh_cache.iterdir() if p.suffix == ".so"]) == 2


@needs_cc
def test_a_failed_compile_warns_with_the_compilers_message(fresh_cache, monkeypatch):
    monkeypatch.setattr(native, "FLAG_SETS", (("-fno-such-flag-for-fiberlab",),))
    with pytest.warns(RuntimeWarning, match="could not compile xl_window.c .*no-such-flag"):
        assert xl_window.KERNELS.get(4, 32, 7) is None
    assert [p for p in fresh_cache.iterdir() if p.suffix == ".so"] == []  # the temporary file is removed


@needs_cc
def test_compiled_library_is_cached_on_disk_per_shape_and_cpu(fresh_cache, monkeypatch):
    get = xl_window.KERNELS.get
    assert get(4, 32, 7) is not None
    assert get(4, 32, 7) is get(4, 32, 7)  # kept in memory
    built = sorted(p.name for p in fresh_cache.iterdir())
    assert len(built) == 1 and built[0].startswith("xl_window_") and built[0].endswith(".so")
    # a new process (nothing in memory) loads it from disk without running the compiler
    native.forget()
    compiles = []
    real_run = native._run
    monkeypatch.setattr(native, "_run", lambda cmd: (compiles.append(cmd), real_run(cmd))[1])
    assert get(4, 32, 7) is not None
    assert [c for c in compiles if "-o" in c] == []
    # another shape, or the same shape on another CPU, is another library
    assert get(2, 32, 7) is not None
    monkeypatch.setattr(native, "_cpu_fingerprint", lambda: "some other cpu")
    native.forget()
    assert get(4, 32, 7) is not None
    assert len([p for p in fresh_cache.iterdir() if p.suffix == ".so"]) == 3


def test_native_off_switch(monkeypatch, kernel_calls):
    monkeypatch.setenv("FIBERLAB_NATIVE", "0")
    assert xl_window.KERNELS.get(4, 32, 7) is None and mlstm_native.KERNELS.get(4, 8) is None
    act(make(32, 4, 6), *inputs(32, 6))
    act(make_m(32, 4), *inputs(32, 6))
    assert kernel_calls == []


@needs_cc
def test_an_unwritable_cache_warns_and_acts_through_the_tensor_form(fresh_cache, monkeypatch):
    blocker = fresh_cache / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FIBERLAB_KERNEL_CACHE", str(blocker / "kernels"))  # a folder under a file
    with pytest.warns(RuntimeWarning, match="cannot create the kernel cache .*set FIBERLAB_KERNEL_CACHE"):
        assert xl_window.KERNELS.get(4, 32, 7) is None
