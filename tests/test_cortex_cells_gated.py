"""mLSTM (M), sLSTM (S) and Transformer-XL (X) cells, plain and axonified ("^").

What must hold for every variant: a step-by-step loop equals one whole-sequence call (outputs and final
state, also across mLSTM chunk boundaries and the XL memory window, with carried state and with
resets), a sequence split into two calls equals one call, a reset cuts the past off completely, and
every parameter gets gradient. Float64 and perturbed parameters (so zero-initialised gates and
recurrent kernels are exercised) keep the tolerances tight.
"""
from __future__ import annotations

import pytest
import torch
from conftest import assert_states_close, flat_state

from fiberlab.cortex.base import map_state
from fiberlab.cortex.cells.mlstm import MLSTMCell, MLSTMConfig
from fiberlab.cortex.cells.slstm import SLSTMCell, SLSTMConfig
from fiberlab.cortex.cells.xl import XLCell, XLConfig
from fiberlab.cortex.kernels.mlstm_chunkwise import mlstm_chunkwise, mlstm_step
from fiberlab.cortex.kernels.segment_conv import causal_depthwise_conv

torch.set_num_threads(1)
H, B, T = 16, 3, 13  # T > 3 mLSTM chunks of 4 and > 2 XL windows of 6
F64 = torch.float64
VARIANTS = ["M", "S", "X", "M^", "S^", "X^"]


def make_cell(name: str, seed: int = 0, perturb: float = 0.3):
    """A small float64 cell; ``perturb`` adds noise to every parameter (zero inits would hide paths)."""
    torch.manual_seed(seed)
    axonify = name.endswith("^")
    kind = name[0]
    if kind == "M":
        cell = MLSTMCell(MLSTMConfig(d_hidden=H, num_heads=4, chunk_size=4, axonify=axonify))
    elif kind == "S":
        cell = SLSTMCell(SLSTMConfig(d_hidden=H, num_heads=4, axonify=axonify))
    else:
        cell = XLCell(XLConfig(d_hidden=H, n_heads=4, mem_len=6, axonify=axonify))
    cell = cell.to(F64)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(perturb * torch.randn_like(p))
    return cell


def step_loop(cell, x, state, resets):
    ys = []
    for t in range(x.shape[1]):
        y, state = cell(x[:, t], state, resets=None if resets is None else resets[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), state


def inputs(seed: int = 1, steps: int = T):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, steps, H, generator=g, dtype=F64)
    resets = torch.rand(B, steps, generator=g) < 0.2
    if steps == T:
        resets[0, 0] = True  # a reset before the very first step
        resets[1, 5] = True  # one mid-sequence (inside a chunk / window)
        resets[2, 8] = resets[2, 9] = True  # two in a row
    return x, resets


TIGHT = dict(atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("case", ["fresh", "carried", "resets"])
@pytest.mark.parametrize("name", VARIANTS)
def test_step_loop_equals_sequence(name, case):
    cell = make_cell(name)
    x, resets = inputs()
    state = None
    if case != "fresh":  # a non-zero carried state from an earlier call
        _, state = cell(inputs(seed=7, steps=9)[0])
        assert any(t.abs().sum() > 0 for t in flat_state(state).values())
    r = resets if case == "resets" else None
    y_seq, s_seq = cell(x, state, resets=r)
    y_step, s_step = step_loop(cell, x, state, r)
    assert y_seq.shape == (B, T, H)
    torch.testing.assert_close(y_seq, y_step, **TIGHT)
    assert_states_close(s_seq, s_step, **TIGHT)


@pytest.mark.parametrize("name", VARIANTS)
def test_split_call_equals_one_call(name):
    cell = make_cell(name)
    x, resets = inputs(seed=2)
    _, state = cell(inputs(seed=3, steps=5)[0])
    y_all, s_all = cell(x, state, resets=resets)
    y1, s1 = cell(x[:, :6], state, resets=resets[:, :6])
    y2, s2 = cell(x[:, 6:], s1, resets=resets[:, 6:])
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_all, **TIGHT)
    assert_states_close(s2, s_all, **TIGHT)


@pytest.mark.parametrize("name", VARIANTS)
def test_reset_cuts_off_the_past(name):
    cell = make_cell(name)
    x, _ = inputs(seed=4)
    _, state = cell(inputs(seed=5, steps=8)[0])
    r = 7
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, r] = True
    x_other = x.clone()
    x_other[:, :r] += torch.randn(B, r, H, dtype=F64)  # change everything before the reset
    y, s = cell(x, state, resets=resets)
    y_other, s_other = cell(x_other, state, resets=resets)
    assert (y[:, :r] - y_other[:, :r]).abs().max() > 1e-3  # the perturbation does matter before r ...
    torch.testing.assert_close(y[:, r:], y_other[:, r:], **TIGHT)  # ... and not at all from r on
    assert_states_close(s, s_other, **TIGHT)
    # a reset at step r equals starting fresh at r
    y_fresh, s_fresh = cell(x[:, r:])
    torch.testing.assert_close(y[:, r:], y_fresh, **TIGHT)
    assert_states_close(s, s_fresh, **TIGHT)


@pytest.mark.parametrize("name", VARIANTS)
def test_reset_state_is_init_state(name):
    cell = make_cell(name)
    x, _ = inputs(seed=6)
    _, state = cell(x)
    mask = torch.tensor([True, False, True])
    cleared = cell.reset_state(state, mask)
    fresh = cell.init_state(B, dtype=F64)
    for k, v in flat_state(cleared).items():
        assert torch.equal(v[mask], flat_state(fresh)[k][mask]), k
        assert torch.equal(v[~mask], flat_state(state)[k][~mask]), k
    assert all(torch.count_nonzero(v) == 0 for v in flat_state(fresh).values())  # init_state is all zeros
    y_cleared, _ = cell(x, cleared)
    y_fresh, _ = cell(x)
    torch.testing.assert_close(y_cleared[mask], y_fresh[mask], **TIGHT)


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_reach_every_parameter(name):
    cell = make_cell(name, perturb=0.0)  # default init: zero-initialised gates must still learn
    x, resets = inputs(seed=8)
    _, state = cell(inputs(seed=9, steps=4)[0])
    state = map_state(state, torch.Tensor.detach)
    y, new_state = cell(x, state, resets=resets)
    loss = (y * torch.randn_like(y)).sum() + sum((t * torch.randn_like(t)).sum() for t in flat_state(new_state).values())
    loss.backward()
    for pname, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), pname


def test_mlstm_chunk_size_does_not_change_the_result():
    x, resets = inputs(seed=10, steps=40)
    outs = []
    for chunk in (1, 5, 16, 64):
        torch.manual_seed(0)
        cell = MLSTMCell(MLSTMConfig(d_hidden=H, chunk_size=chunk)).to(F64)
        with torch.no_grad():
            for p in cell.parameters():
                p.add_(0.5 * torch.randn_like(p))
        outs.append(cell(x, resets=resets))
    for y, s in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], **TIGHT)
        assert_states_close(s, outs[0][1], **TIGHT)


def test_mlstm_kernel_is_stable_for_extreme_gates():
    """Gate pre-activations of +-60 overflow exp() without the stabiliser; float32 must stay finite and match the step loop."""
    g = torch.Generator().manual_seed(11)
    Bk, NH, Tk, d = 2, 2, 24, 4
    q, k, v = (torch.randn(Bk, NH, Tk, d, generator=g) for _ in range(3))
    i_pre = 60 * torch.randn(Bk, NH, Tk, generator=g)
    f_pre = 60 * torch.randn(Bk, NH, Tk, generator=g)
    resets = torch.rand(Bk, Tk, generator=g) < 0.2
    zeros = (torch.zeros(Bk, NH, d, d), torch.zeros(Bk, NH, d, 1), torch.zeros(Bk, NH, 1, 1))
    for tensor in (q, i_pre, f_pre):
        tensor.requires_grad_(True)
    h, (c, n, m) = mlstm_chunkwise(q, k, v, i_pre, f_pre, *zeros, resets=resets, chunk_size=8)
    (h.sum() + c.sum()).backward()
    assert torch.isfinite(h).all() and torch.isfinite(c).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, i_pre, f_pre))
    state, hs = zeros, []
    for t in range(Tk):
        keep = (~resets[:, t]).view(Bk, 1, 1, 1).float()
        state = tuple(s * keep for s in state)
        ht, state = mlstm_step(*state, q[:, :, t], k[:, :, t], v[:, :, t], i_pre[:, :, t], f_pre[:, :, t])
        hs.append(ht)
    torch.testing.assert_close(h, torch.stack(hs, dim=2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m, state[2], atol=1e-4, rtol=1e-5)


def test_slstm_fresh_state_takes_m_from_the_input_gate():
    """From a fresh state (n == 0) m_1 = i~ exactly, so i' = 1 and n_1 = 1 even when log sigma(f~) >> i~."""
    cell = SLSTMCell(SLSTMConfig(d_hidden=H)).to(F64)
    with torch.no_grad():
        cell.bias[:, 0] = -30.0  # i~ = -30 (input weights are small), far below m_0 + log sigma(f~) ~ 0
    x, _ = inputs(seed=12, steps=1)
    _, s = cell(x[:, 0])
    torch.testing.assert_close(s["n"], torch.ones_like(s["n"]))
    assert (s["m"] < -25).all()
    _, s2 = cell(x[:, 0], s, resets=torch.ones(B, dtype=torch.bool))  # a reset state is fresh again
    torch.testing.assert_close(s2["n"], torch.ones_like(s2["n"]))


def test_conv_buffer_is_used_in_sequence_mode():
    """The reference ignores the carried conv buffer in sequence mode; here it must matter."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 5, 3, generator=g, dtype=F64)
    weight, bias = torch.randn(3, 4, generator=g, dtype=F64), torch.zeros(3, dtype=F64)
    buffer = torch.randn(2, 3, 3, generator=g, dtype=F64)
    y, new_buffer = causal_depthwise_conv(x, buffer, weight, bias)
    full = torch.cat([buffer, x], dim=1)
    expected = torch.stack([(full[:, t:t + 4] * weight.T).sum(dim=1) for t in range(5)], dim=1)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(new_buffer, x[:, -3:])
    resets = torch.zeros(2, 5, dtype=torch.bool)
    resets[:, 2] = True
    y_r, _ = causal_depthwise_conv(x, buffer, weight, bias, resets)
    y_fresh, _ = causal_depthwise_conv(x[:, 2:], torch.zeros_like(buffer), weight, bias)
    torch.testing.assert_close(y_r[:, 2:], y_fresh)


def test_xl_memory_is_a_window_of_mem_len_inputs():
    cell = make_cell("X")
    x, _ = inputs(seed=14)
    _, s = cell(x)
    torch.testing.assert_close(s["mem"], x[:, -6:])  # the last mem_len inputs, as they were
    assert torch.equal(s["mem_valid"], torch.ones(B, 6, dtype=F64))
    _, s_short = cell(x[:, :2])  # fewer steps than mem_len: the older slots stay invalid
    assert torch.equal(s_short["mem_valid"][0], torch.tensor([0, 0, 0, 0, 1, 1], dtype=F64))
    # an input more than mem_len steps back is out of reach
    x_other = x.clone()
    x_other[:, 0] += 1.0
    y, _ = cell(x)
    y_other, _ = cell(x_other)
    assert (y[:, 6] - y_other[:, 6]).abs().max() > 1e-6  # delta = 6 = mem_len: still seen
    torch.testing.assert_close(y[:, 7:], y_other[:, 7:], **TIGHT)  # delta > mem_len: not


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MLSTMCell(MLSTMConfig(d_hidden=10, num_heads=4)), "num_heads"),
        (lambda: SLSTMCell(SLSTMConfig(d_hidden=10, num_heads=4)), "num_heads"),
        (lambda: XLCell(XLConfig(d_hidden=10, n_heads=4)), "n_heads"),
    ],
)
def test_bad_configs_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_configs_round_trip_and_reject_typos():
    for cfg in (MLSTMConfig(axonify=True), SLSTMConfig(d_hidden=32), XLConfig(mem_len=8)):
        assert type(cfg).model_validate(cfg.model_dump()) == cfg
    assert (MLSTMConfig().num_heads, MLSTMConfig().chunk_size, XLConfig().mem_len, XLConfig().n_heads) == (4, 64, 128, 4)
    with pytest.raises(ValueError):
        XLConfig(mem_lenn=3)


@pytest.mark.parametrize("name", ["M", "S", "X"])
def test_bad_input_shapes_raise(name):
    cell = make_cell(name)
    with pytest.raises(ValueError, match="x"):
        cell(torch.randn(2, 5, H + 1, dtype=F64))
    with pytest.raises(ValueError, match="state"):
        cell(torch.randn(2, 5, H, dtype=F64), cell.init_state(3, dtype=F64))
