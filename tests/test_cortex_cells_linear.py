"""Cells L (LSTM), C (causal conv), A (Axon, AxonLayer), Ag (AGaLiTe) and the parallel scan kernel.

Why these tests: sequence mode is a different code path from one step (a parallel scan, one conv1d,
cuDNN-style nn.LSTM), so each cell is checked against its own step loop, against a split call,
against resets, and (for the math) against a plain loop written from the spec's formulas.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from fiberlab.cortex.cells.agalite import AGaLiTeCell, AGaLiTeConfig
from fiberlab.cortex.cells.axon import AxonCell, AxonConfig, AxonLayer
from fiberlab.cortex.cells.conv import CausalConvCell, CausalConvConfig
from fiberlab.cortex.cells.lstm import LSTMCell, LSTMConfig
from fiberlab.cortex.kernels.decayed_readout import decayed_readout
from fiberlab.cortex.kernels.scan import linear_scan

torch.set_num_threads(1)
H, B, T = 16, 3, 29
DT = torch.float64

CELLS = {
    "L": lambda: LSTMCell(LSTMConfig(d_hidden=H)),
    "C": lambda: CausalConvCell(CausalConvConfig(d_hidden=H)),
    "A": lambda: AxonCell(AxonConfig(d_hidden=H)),
    "A_layer": lambda: AxonLayer(H, H),
    "Ag": lambda: AGaLiTeCell(AGaLiTeConfig(d_hidden=H, n_heads=4, eta=3, r=2)),
}


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return CELLS[name]().to(DT)


def inputs(seed: int = 1, t: int = T):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, t, H, generator=g, dtype=DT)


def random_resets(seed: int = 2, t: int = T, p: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(B, t, generator=g) < p
    r[0, 5] = r[1, 11] = r[2, 0] = True  # a reset at the first step too
    return r


def carried_state(cell, seed: int = 3):
    """A realistic non-zero state: the one left by a random prefix."""
    return cell(inputs(seed, t=9))[1]


def step_loop(cell, x, state, resets):
    ys = []
    for t in range(x.shape[1]):
        y, state = cell(x[:, t], state, resets=None if resets is None else resets[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


def assert_states_close(a, b, tol=1e-10):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=tol, rtol=tol, msg=k)


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("case", ["fresh", "carried", "resets"])
def test_sequence_equals_step_loop(name, case):
    cell, x = make(name), inputs()
    state = None if case == "fresh" else carried_state(cell)
    resets = random_resets() if case == "resets" else None
    y_seq, s_seq = cell(x, state, resets=resets)
    y_loop, s_loop = step_loop(cell, x, state, resets)
    assert y_seq.shape == (B, T, H)
    torch.testing.assert_close(y_seq, y_loop, atol=1e-10, rtol=1e-10)
    assert_states_close(s_seq, s_loop)
    # the carried state matters (so "carried" tests something)
    if case == "carried":
        assert not torch.allclose(y_seq[:, 0], cell(x, None)[0][:, 0])


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("split", [1, 2, 13])
def test_split_call_equals_one_call(name, split):
    """Two calls carrying the state == one call (the reference conv ignores its buffer here)."""
    cell, x, resets = make(name), inputs(), random_resets()
    s0 = carried_state(cell)
    y_all, s_all = cell(x, s0, resets=resets)
    y1, s1 = cell(x[:, :split], s0, resets=resets[:, :split])
    y2, s2 = cell(x[:, split:], s1, resets=resets[:, split:])
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, atol=1e-10, rtol=1e-10)
    assert_states_close(s2, s_all)


@pytest.mark.parametrize("name", list(CELLS))
def test_reset_forgets_everything_before_it(name):
    cell = make(name)
    x, t_reset = inputs(), 10
    x2 = x.clone()
    x2[:, :t_reset] = inputs(seed=7)[:, :t_reset]  # other past inputs ...
    s_a, s_b = carried_state(cell, 3), carried_state(cell, 4)  # ... and another carried state
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, t_reset] = True
    y_a, _ = cell(x, s_a, resets=resets)
    y_b, _ = cell(x2, s_b, resets=resets)
    assert not torch.allclose(y_a[:, :t_reset], y_b[:, :t_reset])  # the past did matter before the reset
    torch.testing.assert_close(y_a[:, t_reset:], y_b[:, t_reset:], atol=1e-12, rtol=0)
    # and after the reset the cell behaves exactly as a fresh one
    y_fresh, _ = cell(x[:, t_reset:], None)
    torch.testing.assert_close(y_a[:, t_reset:], y_fresh, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(CELLS))
def test_reset_state_is_init_state(name):
    cell = make(name)
    s = carried_state(cell)
    assert any(bool(v.abs().sum() > 0) for v in s.values())
    mask = torch.tensor([True, False, True])
    zeroed = cell.reset_state(s, mask)
    init = cell.init_state(B, dtype=DT)
    for k in s:
        torch.testing.assert_close(zeroed[k][mask], init[k][mask], atol=0, rtol=0)
        torch.testing.assert_close(zeroed[k][~mask], s[k][~mask], atol=0, rtol=0)
    # a one-step reset from a full state gives the fresh output
    y_reset, _ = cell(inputs()[:, 0], s, resets=torch.ones(B, dtype=torch.bool))
    torch.testing.assert_close(y_reset, cell(inputs()[:, 0], None)[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(CELLS))
def test_gradients_reach_every_parameter_and_the_carried_state(name):
    cell = make(name)
    s0 = {k: v.detach().requires_grad_(k != "tick") for k, v in carried_state(cell).items()}
    y, _ = cell(inputs(), s0, resets=random_resets(p=0.05))
    y.square().mean().backward()
    for pname, p in cell.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    for k, v in s0.items():  # the returned state is not detached: gradient flows into the carried one
        if k != "tick":
            assert v.grad is not None and v.grad.abs().sum() > 0, k


@pytest.mark.parametrize("name", list(CELLS))
def test_bad_shapes_raise_value_error(name):
    cell = make(name)
    with pytest.raises(ValueError, match="last dim"):
        cell(torch.zeros(B, T, H + 1, dtype=DT))
    with pytest.raises(ValueError, match=r"\[B, T"):
        cell(torch.zeros(B, 2, T, H, dtype=DT))
    with pytest.raises(ValueError, match="resets"):
        cell(torch.zeros(B, T, H, dtype=DT), resets=torch.zeros(B, T + 1, dtype=torch.bool))
    bad = {k: v[:1] for k, v in cell.init_state(B, dtype=DT).items()}  # state of another batch size
    with pytest.raises(ValueError, match="state"):
        cell(torch.zeros(B, T, H, dtype=DT), bad)


# ----- the math, against plain loops written from the spec -----


@pytest.mark.parametrize("t", [1, 2, 7, 16, 37])
@pytest.mark.parametrize("complex_", [False, True])
def test_linear_scan_matches_a_loop(t, complex_):
    g = torch.Generator().manual_seed(t)
    dt = torch.complex128 if complex_ else DT
    a = torch.rand(2, t, 1, 5, generator=g, dtype=DT).to(dt)  # decay broadcast over the 3 traces
    a[0, t // 2] = 0  # a reset
    b = torch.randn(2, t, 3, 5, generator=g, dtype=DT).to(dt)
    h0 = torch.randn(2, 3, 5, generator=g, dtype=DT).to(dt)
    h, expected = h0, []
    for i in range(t):
        h = a[:, i] * h + b[:, i]
        expected.append(h)
    expected = torch.stack(expected, 1)
    for chunk in (None, 1, 3, 64):
        got, last = linear_scan(a, b, h0, chunk_size=chunk)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(last, expected[:, -1], atol=1e-12, rtol=1e-12)
    # a decay constant over time ([1, 1, ...]) is broadcast, not materialised
    got, _ = linear_scan(a[:1, :1], b, h0)
    h, ref = h0, []
    for i in range(t):
        h = a[0, 0] * h + b[:, i]
        ref.append(h)
    torch.testing.assert_close(got, torch.stack(ref, 1), atol=1e-12, rtol=1e-12)


def _readout_loop(q, w, a, coef, resets, k0):
    K, out = k0, []
    for t in range(q.shape[1]):
        keep = (~resets[:, t]).to(q.dtype).view(-1, 1, 1)
        K = keep * a[:, t, None] * K + coef[:, t, :, None] * w[:, t, None]  # K_j,t = δ a K_j,t-1 + c_tj w_t
        out.append((K * q[:, t, None]).sum(-1))  # q_t · K_j,t
    return torch.stack(out, 1), K


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decayed_readout_matches_a_loop_even_with_extreme_decays(dtype):
    g = torch.Generator().manual_seed(5)
    N, t, Fd, J = 4, 21, 6, 3
    q, w = (torch.randn(N, t, Fd, generator=g, dtype=DT) for _ in range(2))
    a = torch.rand(N, t, Fd, generator=g, dtype=DT)
    a[0, 3] = 0.0  # a decay of exactly 0 (log = -inf) ...
    a[1, 4:12] = 1e-30  # ... and tiny ones, whose exponentials would overflow unguarded
    coef, k0 = torch.randn(N, t, J, generator=g, dtype=DT), torch.randn(N, J, Fd, generator=g, dtype=DT)
    resets = torch.rand(N, t, generator=g) < 0.15
    expected, k_expected = _readout_loop(q, w, a, coef, resets, k0)
    args = [v.to(dtype).requires_grad_() for v in (q, w, torch.log(a), coef)]
    got, k_last = decayed_readout(*args, resets, k0.to(dtype))
    # float32 floors decays below ~6e-6 (documented): the 1e-30 steps keep up to 6e-6 |K| of the past
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.to(DT), expected, atol=tol, rtol=tol)
    torch.testing.assert_close(k_last.to(DT), k_expected, atol=tol, rtol=tol)
    (got.square().sum() + k_last.sum()).backward()
    for v in (args[0], args[1], args[3]):
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    assert torch.isfinite(args[2].grad[torch.isfinite(args[2])]).all()


def test_conv_is_a_causal_depthwise_conv_with_zero_history():
    cell, x = make("C"), inputs()
    w, bias = cell.conv.weight, cell.conv.bias
    expected = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), w, bias, groups=H).transpose(1, 2)
    torch.testing.assert_close(cell(x)[0], expected, atol=1e-12, rtol=1e-12)
    # with a reset at t, output t sees only x_t
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 6] = True
    y, _ = cell(x, resets=resets)
    torch.testing.assert_close(y[:, 6], w[:, 0, -1] * x[:, 6] + bias, atol=1e-12, rtol=0)


def test_axon_follows_the_rtu_equations():
    cell, x = make("A"), inputs()
    rtu = cell.rtu
    r = torch.exp(-torch.exp(rtu.nu_log))
    theta = torch.exp(rtu.theta_log)
    g, phi, gamma = r * torch.cos(theta), r * torch.sin(theta), torch.sqrt(1 - r**2)
    u = cell.input_proj(x)
    c1 = c2 = torch.zeros(B, H, dtype=DT)
    ys = []
    for t in range(T):  # c1 = g c1 - phi c2 + gamma w1 x; c2 = g c2 + phi c1 + gamma w2 x (old c1)
        c1, c2 = g * c1 - phi * c2 + gamma * rtu.w1 * u[:, t], g * c2 + phi * c1 + gamma * rtu.w2 * u[:, t]
        ys.append(cell.out_proj(torch.stack([c1, c2], -1).flatten(-2)))
    y, s = cell(x)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s["c1"], c1, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s["c2"], c2, atol=1e-12, rtol=1e-12)


def test_axon_init_respects_r_bounds():
    torch.manual_seed(0)
    cell = AxonCell(AxonConfig(d_hidden=256, r_min=0.5, r_max=0.9, max_phase=1.0))
    r = torch.exp(-torch.exp(cell.rtu.nu_log))
    theta = torch.exp(cell.rtu.theta_log)
    assert 0.5 - 1e-6 <= r.min() and r.max() <= 0.9 + 1e-6 and r.max() - r.min() > 0.2
    assert theta.max() <= 1.0 and theta.min() >= 0
    assert cell.input_proj is not None and AxonCell(AxonConfig(d_hidden=8, use_input_proj=False)).input_proj is None


def test_axon_layer_maps_d_in_to_d_out():
    torch.manual_seed(0)
    layer = AxonLayer(6, 10).to(DT)
    x = torch.randn(B, T, 6, dtype=DT)
    y, s = layer(x)
    assert y.shape == (B, T, 10) and s["c1"].shape == (B, 6)
    # the Linear path plus the recurrent path: y - Linear(x) depends on the past
    rec = y - layer.linear(x)
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.allclose((layer(x2)[0] - layer.linear(x2))[:, 5], rec[:, 5])


def test_agalite_follows_the_spec_equations():
    cell, x, resets = make("Ag"), inputs(), random_resets()
    NH, d, eta, r, eps = 4, 4, 3, 2, cell.cfg.eps
    K = torch.zeros(B, r, NH, d * eta, dtype=DT)
    V = torch.zeros(B, r, NH, d, dtype=DT)
    s = torch.zeros(B, NH, d * eta, dtype=DT)
    tick = torch.zeros(B, dtype=DT)
    omega = torch.linspace(-math.pi, math.pi, r, dtype=DT)
    outer = lambda a, b: (a[..., :, None] * b[..., None, :]).flatten(-2)  # noqa: E731
    ys = []
    for t in range(T):
        delta = (~resets[:, t]).to(DT)
        tick = tick * delta
        k, q, v, be, ga = cell.kqvbg(x[:, t]).view(B, 5, NH, d).unbind(1)
        p1, p2, p3 = cell.p123(x[:, t]).view(B, 3, NH, eta).unbind(1)
        phi_k, phi_q = outer(k.relu(), p1.relu()), outer(q.relu(), p2.relu())
        gamma, beta = outer(ga.sigmoid(), p3.sigmoid()), be.sigmoid()
        c = torch.cos(tick[:, None] * omega)  # [B, r]
        dd = delta.view(B, 1, 1, 1)
        K = dd * (1 - gamma[:, None]) * K + c[:, :, None, None] * (phi_k * gamma)[:, None]
        V = dd * (1 - beta[:, None]) * V + c[:, :, None, None] * (v * beta)[:, None]
        s = dd[:, 0] * (1 - gamma) * s + phi_k * gamma
        kq = (K * phi_q[:, None]).sum(-1)  # [B, r, NH]
        o = (V * kq[..., None]).sum(1) / (2 * r * (s * phi_q).sum(-1) + eps)[..., None]
        ys.append(cell.out(o.reshape(B, NH * d)))
        tick = tick + 1
    y, state = cell(x, resets=resets)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-10, rtol=1e-10)
    assert_states_close(state, {"tilde_k": K, "tilde_v": V, "s": s, "tick": tick})


def test_configs_round_trip_and_reject_typos():
    for cfg in (LSTMConfig(d_hidden=8), CausalConvConfig(d_hidden=8), AxonConfig(d_hidden=8), AGaLiTeConfig(d_hidden=16)):
        assert type(cfg)(**cfg.model_dump()) == cfg
        with pytest.raises(ValueError):
            type(cfg)(**cfg.model_dump(), d_hiden=3)
    assert (LSTMConfig().bias_init, LSTMConfig().forget_bias) == (0.0, 1.0) and CausalConvConfig().kernel_size == 4
    assert (AGaLiTeConfig().n_heads, AGaLiTeConfig().eta, AGaLiTeConfig().r, AGaLiTeConfig().eps) == (8, 6, 2, 1e-5)
    with pytest.raises(ValueError, match="divisible"):
        AGaLiTeCell(AGaLiTeConfig(d_hidden=10, n_heads=4))


def test_lstm_cell_init_and_policy_core_keeps_its_parameter_names():
    from fiberlab.policies.cores import LSTMCore

    cell = LSTMCell(LSTMConfig(d_hidden=8))
    b = cell.lstm.bias_ih_l0 + cell.lstm.bias_hh_l0  # gate order i, f, g, o: only the forget gate starts at 1
    assert torch.all(b[8:16] == 1.0) and torch.all(b[:8] == 0.0) and torch.all(b[16:] == 0.0)
    w = cell.lstm.weight_hh_l0.detach()  # [4H, H]
    torch.testing.assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)  # orthogonal (orthonormal columns)
    core = LSTMCore(6, 8)  # input_size != hidden_size
    assert set(core.state_dict()) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"}
    y, s = core(torch.zeros(2, 5, 6))
    assert y.shape == (2, 5, 8) and s["h"].shape == (2, 8)
