"""The compiled CPU loops (numba) against the tensor-op kernels the GPU path uses, and against plain loops.

Why these tests: on the CPU, A and Ag run their sequences through hand-written forward AND backward
passes (``kernels.rtu_loop``, ``kernels.agalite_loop``), while a GPU runs the tensor-op forms
(``rtu_scan``; ``decayed_readout`` and ``linear_scan``) under autograd. A
sign error in a hand-written gradient would train silently wrong, so every gradient is compared
with autograd's through the other form, in float64, with resets, carried states and lengths that
are not multiples of the chunk/checkpoint sizes. The cells are also run with the loops switched
off, so the GPU path is exercised on this CPU-only machine too.
"""
from __future__ import annotations

import pytest
import torch

from fiberlab.cortex.cells import agalite, axon
from fiberlab.cortex.cells.agalite import AGaLiTeCell, AGaLiTeConfig
from fiberlab.cortex.cells.axon import AxonCell, AxonConfig, AxonLayer
from fiberlab.cortex.kernels import rtu_loop as rtu_loop_mod
from fiberlab.cortex.kernels.agalite_loop import agalite_loop
from fiberlab.cortex.kernels.rtu_loop import rtu_loop
from fiberlab.cortex.kernels.rtu_scan import rtu_scan

pytestmark = pytest.mark.skipif(not rtu_loop_mod.AVAILABLE, reason="numba is not installed")
DT = torch.float64
TOL = dict(atol=1e-11, rtol=1e-11)


def grads(outputs, inputs, seed=0):
    """d(sum_i <random_i, output_i>)/d inputs: every output and every input gradient is checked."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs)


def rtu_inputs(t, seed=0, resets=True):
    g = torch.Generator().manual_seed(seed)
    B, W = 3, 5
    u = torch.randn(B, t, W, generator=g, dtype=DT, requires_grad=True)
    log_r = (-torch.rand(W, generator=g, dtype=DT) * 2 - 0.01).requires_grad_()
    theta = (torch.rand(W, generator=g, dtype=DT) * 6).requires_grad_()
    beta = torch.randn(W, generator=g, dtype=torch.complex128, requires_grad=True)
    h0 = torch.randn(B, W, generator=g, dtype=torch.complex128, requires_grad=True)
    r = torch.rand(B, t, generator=g) < 0.15 if resets else None
    if resets:
        r[0, 0] = r[1, t // 2] = True  # a reset at the start and one mid-sequence, for sure
    return u, log_r, theta, beta, h0, r


@pytest.mark.parametrize("t", [2, 31, 70])
@pytest.mark.parametrize("with_resets", [False, True])
def test_rtu_loop_and_rtu_scan_match_the_recurrence_and_each_other(t, with_resets):
    u, log_r, theta, beta, h0, resets = rtu_inputs(t, resets=with_resets)
    lam = torch.polar(torch.exp(log_r), theta)
    h, ref = h0, []
    for i in range(t):  # h_t = δ_t λ h_{t-1} + β u_t
        keep = 1.0 if resets is None else (~resets[:, i]).to(DT).unsqueeze(-1)
        h = keep * lam * h + beta * u[:, i]
        ref.append(h)
    ref = torch.stack(ref, 1)
    ins = (u, log_r, theta, beta, h0)
    outs = {}
    for name, fn in (("loop", rtu_loop), ("scan", lambda *a: rtu_scan(*a, chunk_size=16))):
        got, last = fn(u, log_r, theta, beta, h0, resets)
        torch.testing.assert_close(got, ref, **TOL)
        torch.testing.assert_close(last, ref[:, -1], **TOL)
        outs[name] = grads([torch.view_as_real(got), torch.view_as_real(last)], ins)
    expected = grads([torch.view_as_real(ref), torch.view_as_real(ref[:, -1])], ins)
    for name, got in outs.items():
        for x, g_got, g_ref in zip(("u", "log_r", "theta", "beta", "h0"), got, expected):
            torch.testing.assert_close(g_got, g_ref, **TOL, msg=f"{name}: d/d{x}")


@pytest.mark.parametrize("t", [1, 17, 40])
def test_agalite_loop_matches_the_tensor_ops_values_and_gradients(t):
    """The fused loop against the GPU path's tensor ops (chunked read-out, linear scan, o = n / z),
    from raw projections (negative values too: the loop applies the relus itself)."""
    cell = AGaLiTeCell(AGaLiTeConfig(d_hidden=8, n_heads=2, eta=3, r=2)).to(DT)
    g = torch.Generator().manual_seed(t)
    B, NH, d, E, r = 2, 2, 4, 3, 2
    randn = lambda *s: torch.randn(*s, generator=g, dtype=DT, requires_grad=True)  # noqa: E731
    rand = lambda *s: torch.rand(*s, generator=g, dtype=DT, requires_grad=True)  # noqa: E731
    slots = randn(B, t, 2, NH, d)  # strided inputs, as views of a projection
    q, kr = slots[:, :, 0], slots[:, :, 1]
    gk, v, beta = rand(B, t, NH, d), randn(B, t, NH, d), rand(B, t, NH, d)
    p2, p1, gp = randn(B, t, NH, E), randn(B, t, NH, E), rand(B, t, NH, E)
    coef = randn(B, t, r + 1)
    resets = torch.rand(B, t, generator=g) < 0.1
    resets[1, t // 2] = True
    k0 = rand(B, NH, r + 1, d * E)
    v0 = randn(B, NH, r, d)
    got = agalite_loop(q, p2, kr, p1, gk, gp, v, beta, coef, resets, k0, v0, 1e-5)
    relu = torch.relu
    ref = cell._tensor_ops(relu(q), relu(p2), relu(kr) * gk, relu(p1) * gp, gk, gp, v, beta, coef, resets, k0, v0)
    for name, a, b in zip(("o", "K_last", "V_last"), got, ref):
        torch.testing.assert_close(a, b, **TOL, msg=name)
    ins = (slots, gk, v, beta, p2, p1, gp, coef, k0, v0)
    names = ("q/kr", "gk", "v", "beta", "p2", "p1", "gp", "coef", "k0", "v0")
    for name, g_got, g_ref in zip(names, grads(got, ins), grads(ref, ins)):
        torch.testing.assert_close(g_got, g_ref, atol=1e-10, rtol=1e-10, msg=f"d/d{name}")


CELLS = {
    "A": lambda: AxonCell(AxonConfig(d_hidden=8)),
    "A_layer": lambda: AxonLayer(8, 6),
    "Ag": lambda: AGaLiTeCell(AGaLiTeConfig(d_hidden=8, n_heads=2, eta=3)),
}


def _switch_loops(monkeypatch, on: bool) -> None:
    monkeypatch.setattr(axon, "rtu_loop_available", on)
    monkeypatch.setattr(agalite, "loop_available", on)


@pytest.mark.parametrize("name", list(CELLS))
def test_cells_give_the_same_outputs_states_and_gradients_with_and_without_the_cpu_loops(name, monkeypatch):
    torch.manual_seed(0)
    cell = CELLS[name]().to(DT)
    B, T = 3, 41
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, 8, generator=g, dtype=DT)
    resets = torch.rand(B, T, generator=g) < 0.1
    resets[0, 20] = True
    _, state = cell(torch.randn(B, 5, 8, generator=g, dtype=DT))  # a carried, non-zero state
    results = {}
    for on in (True, False):
        _switch_loops(monkeypatch, on)
        cell.zero_grad(set_to_none=True)
        y, new_state = cell(x, {k: v.detach() for k, v in state.items()}, resets=resets)
        (y * torch.linspace(-1, 1, y.numel(), dtype=DT).view_as(y)).sum().backward()
        results[on] = (y.detach(), {k: v.detach() for k, v in new_state.items()},
                       {n: p.grad.clone() for n, p in cell.named_parameters()})
    (y1, s1, g1), (y0, s0, g0) = results[True], results[False]
    torch.testing.assert_close(y1, y0, **TOL)
    for k in s1:
        torch.testing.assert_close(s1[k], s0[k], **TOL, msg=k)
    assert g1.keys() == g0.keys()
    for n in g1:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-10, rtol=1e-10, msg=n)


def test_the_loops_are_what_a_cpu_sequence_runs(monkeypatch):
    """Guard against the CPU silently falling back to the slower tensor-op forms."""
    calls = []
    for mod, fn in ((axon, "rtu_loop"), (agalite, "agalite_loop")):
        original = getattr(mod, fn)
        monkeypatch.setattr(mod, fn, lambda *a, _f=original, _n=fn, **k: (calls.append(_n), _f(*a, **k))[1])
    x = torch.randn(2, 7, 8)
    CELLS["A"]()(x)
    CELLS["Ag"]()(x)
    assert sorted(calls) == ["agalite_loop", "rtu_loop"]
