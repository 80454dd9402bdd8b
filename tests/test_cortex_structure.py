"""Blocks, columns, stacks and the pattern language of fiberlab.cortex.

Structure is tested with a tiny diagonal recurrence (``DiagCell``) so it does not depend on any one
real cell; the pattern tests then build every token whose cell module exists.
"""
import json

import pytest
import torch
from torch import nn

from fiberlab.cortex.base import MemoryModule, as_sequence, map_state
from fiberlab.cortex.blocks.adapter import AdapterBlock, AdapterBlockConfig
from fiberlab.cortex.blocks.passthrough import PassThroughBlockConfig
from fiberlab.cortex.blocks.postup import PostUpBlock, PostUpBlockConfig
from fiberlab.cortex.blocks.postup_gated import PostUpGatedBlockConfig
from fiberlab.cortex.blocks.preup import PreUpBlockConfig
from fiberlab.cortex.column import Column, ColumnConfig, RouterConfig
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.pattern import TOKENS, build_stack, parse_pattern, stack_config
from fiberlab.cortex.registry import build_block, register_cell
from fiberlab.cortex.stack import Stack, StackConfig

torch.set_num_threads(1)
H = 8


class DiagConfig(CellConfig):
    decay: float = 0.7


class DiagCell(MemoryModule):
    """h_t = a ⊙ h_{t-1} + W x_t, y_t = tanh(h_t): a cell whose state really carries the past."""

    def __init__(self, cfg: DiagConfig) -> None:
        super().__init__()
        self.d_hidden = cfg.d_hidden
        self.log_a = nn.Parameter(torch.full((cfg.d_hidden,), float(cfg.decay)).log())
        self.w = nn.Linear(cfg.d_hidden, cfg.d_hidden)

    def init_state(self, batch, device="cpu", dtype=torch.float32):
        return {"h": torch.zeros(batch, self.d_hidden, device=device, dtype=dtype)}

    def forward(self, x, state=None, *, resets=None):
        x, resets, single = as_sequence(x, resets)
        h = torch.zeros_like(x[:, 0]) if state is None else state["h"]
        ys = []
        for t in range(x.shape[1]):
            if resets is not None:
                h = h * (~resets[:, t]).to(h.dtype).unsqueeze(-1)
            h = self.log_a.exp() * h + self.w(x[:, t])
            ys.append(torch.tanh(h))
        y = torch.stack(ys, 1)
        return (y[:, 0] if single else y), {"h": h}


register_cell(DiagConfig, DiagCell)


def diag(width=H):
    return DiagConfig(d_hidden=width)


BLOCKS = {
    "passthrough": lambda: PassThroughBlockConfig(cell=diag()),
    "preup": lambda: PreUpBlockConfig(d_hidden=H, cell=diag(2 * H)),
    "postup": lambda: PostUpBlockConfig(cell=diag()),
    "postup_gated": lambda: PostUpGatedBlockConfig(cell=diag()),
    "adapter": lambda: AdapterBlockConfig(base=PostUpBlockConfig(cell=diag())),
}


def column(n_experts, **router):
    names = list(BLOCKS)
    return ColumnConfig(experts=[BLOCKS[names[i % len(names)]]() for i in range(n_experts)], router=RouterConfig(**router))


def stack_cfg():
    return StackConfig(layers=[column(3), column(1)])


MODULES = {
    **{f"block_{k}": (lambda v=v: build_block(v())) for k, v in BLOCKS.items()},
    "column_E1": lambda: Column(column(1)),
    "column_E3": lambda: Column(column(3)),
    "column_E3_top2": lambda: Column(column(3, top_k=2)),
    "column_E5_every_block": lambda: Column(column(5)),
    "stack_2_layers": lambda: Stack(stack_cfg()),
}


def perturb_(module, seed=0):
    """Move every parameter off its init so zero-initialised paths (W_out, adapters) are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def step_loop(module, x, state, resets):
    ys = []
    for t in range(x.shape[1]):
        y, state = module(x[:, t], state, resets=resets[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


def flat(state):
    out = []
    map_state(state, out.append)
    return out


def inputs(B=3, T=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 4] = resets[2, 0] = resets[1, 7] = True
    return x, resets


@pytest.mark.parametrize("name", list(MODULES))
def test_step_loop_equals_sequence_with_resets(name):
    torch.manual_seed(0)
    m = MODULES[name]().double()
    perturb_(m)
    x, resets = inputs()
    s0 = map_state(m.init_state(3, dtype=torch.float64), lambda t: t + 0.1 * torch.randn_like(t))
    y_seq, s_seq = m(x, s0, resets=resets)
    y_step, s_step = step_loop(m, x, s0, resets)
    assert y_seq.shape == x.shape
    torch.testing.assert_close(y_step, y_seq, atol=1e-12, rtol=1e-12)
    for a, b in zip(flat(s_step), flat(s_seq), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    # split in two calls carrying the state: same as one call
    y1, s1 = m(x[:, :5], s0, resets=resets[:, :5])
    y2, _ = m(x[:, 5:], s1, resets=resets[:, 5:])
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_seq, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", list(MODULES))
def test_reset_cuts_the_past(name):
    """After a reset at t0, row 0's outputs depend neither on earlier inputs nor on the initial state."""
    torch.manual_seed(0)
    m = MODULES[name]().double()
    perturb_(m)
    x, _ = inputs()
    resets = torch.zeros(3, 9, dtype=torch.bool)
    resets[0, 4] = True
    s0 = m.init_state(3, dtype=torch.float64)
    s1 = map_state(s0, lambda t: t + torch.randn_like(t))
    x2 = x.clone()
    x2[:, :4] += torch.randn(3, 4, H, dtype=torch.float64)
    y_a, _ = m(x, s0, resets=resets)
    y_b, _ = m(x2, s1, resets=resets)
    torch.testing.assert_close(y_a[0, 4:], y_b[0, 4:], atol=1e-12, rtol=1e-12)
    assert (y_a[1, 4:] - y_b[1, 4:]).abs().max() > 1e-6  # no reset in row 1: the past matters


def test_state_layout_is_nested_and_named():
    m = Stack(stack_cfg())
    s = m.init_state(2)
    assert set(s) == {"layer_0", "layer_1"}
    assert set(s["layer_0"]) == {"expert_0", "expert_1", "expert_2"} and set(s["layer_1"]) == {"expert_0"}
    assert s["layer_0"]["expert_2"] == {"cell": {"h": s["layer_0"]["expert_2"]["cell"]["h"]}}
    assert all(t.shape == (2, 2 * H) for t in flat(s["layer_0"]["expert_1"]))  # PreUp's cell at width 2H
    assert all(float(t.abs().sum()) == 0 for t in flat(s))
    y, _ = m(torch.randn(2, H))  # one step from state None
    assert y.shape == (2, H)


# init-time zero gradients by design: the mixer's inputs reach the output only through W_out = 0, the
# global prior's keys and projections only through context = 0, an adapter's branch only through up = 0
MIXER_AND_PRIOR = {"mixer.w_q.weight", "mixer.w_k.weight", "mixer.w_v.weight", "mixer.q_bias", "router.keys", "router.w_k.weight", "router.w_q.weight"}
ZERO_AT_INIT = {
    "column_E3": MIXER_AND_PRIOR,
    "stack_2_layers": {f"layers.0.{k}" for k in MIXER_AND_PRIOR},
    "block_adapter": {"norm.weight", "down.weight", "down.bias", "gate.weight", "gate.bias"},
}
ZERO_AT_INIT["column_E5_every_block"] = MIXER_AND_PRIOR | {f"experts.4.{k}" for k in ZERO_AT_INIT["block_adapter"]}


@pytest.mark.parametrize("name", ["column_E3", "column_E5_every_block", "stack_2_layers", *[f"block_{k}" for k in BLOCKS]])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    m = MODULES[name]().double()
    x, resets = inputs()

    def grads():
        m.zero_grad(set_to_none=False)
        y, s = m(x, m.init_state(3, dtype=torch.float64), resets=resets)
        (y.square().sum() + sum(t.sum() for t in flat(s))).backward()
        return {k: float(p.grad.abs().sum()) for k, p in m.named_parameters()}

    g0 = grads()
    assert {k for k, v in g0.items() if v == 0} == ZERO_AT_INIT.get(name, set())
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    opt.step()
    g1 = grads()
    assert [k for k, v in g1.items() if v == 0] == []


def test_adapter_is_the_identity_of_its_base_at_init():
    torch.manual_seed(0)
    adapter = AdapterBlock(AdapterBlockConfig(base=PostUpBlockConfig(cell=diag()))).double()
    base = PostUpBlock(PostUpBlockConfig(cell=diag())).double()
    base.load_state_dict(adapter.base.state_dict())
    x, resets = inputs()
    y_a, s_a = adapter(x, resets=resets)
    y_b, s_b = base(x, resets=resets)
    assert torch.equal(y_a, y_b) and torch.equal(s_a["cell"]["h"], s_b["cell"]["h"])
    perturb_(adapter)  # once trained it is no longer the identity: the test can fail
    assert not torch.allclose(adapter(x, resets=resets)[0], base(x, resets=resets)[0])


def test_single_expert_column_is_exactly_its_expert():
    torch.manual_seed(0)
    col = Column(column(1)).double()
    assert [k for k, _ in col.named_parameters() if not k.startswith("experts.0.")] == []
    x, resets = inputs()
    torch.testing.assert_close(col(x, resets=resets)[0], col.experts[0](x, resets=resets)[0], atol=0, rtol=0)


def test_column_at_init_is_the_router_weighted_expert_average():
    """x + r = Σ α_i Expert_i(u) at init (W_out = 0): the column's output is that plus α_col ρ(r)."""
    torch.manual_seed(0)
    col = Column(column(3, lambda_local=0.0)).double()
    nn.init.zeros_(col.rho[2].weight)
    nn.init.zeros_(col.rho[2].bias)
    x, _ = inputs()
    u = col.norm(x)
    mean = sum(e(u)[0] for e in col.experts) / 3  # λ = 0 and a zero context: uniform α
    torch.testing.assert_close(col(x)[0], mean, atol=1e-12, rtol=1e-12)


def test_top_k_keeps_k_experts():
    torch.manual_seed(0)
    col = Column(column(3, top_k=1)).double()
    with torch.no_grad():
        col.router.context.normal_()
    alpha = col.router(torch.randn(2, 5, H, dtype=torch.float64))
    assert ((alpha > 0).sum(-1) == 1).all()


# --------------------------------------------------------------------------- pattern language
def test_parse_pattern():
    assert parse_pattern("AgSA") == ["Ag", "S", "A"]
    assert parse_pattern("Ag,A,S") == ["Ag", "A", "S"]
    assert parse_pattern("M^") == ["M^"]
    assert parse_pattern("M^S^X^AgLC") == ["M^", "S^", "X^", "Ag", "L", "C"]
    assert parse_pattern("AAg") == ["A", "Ag"]


@pytest.mark.parametrize("bad, match", [("A^", "'A\\^' at position 0"), ("Q", "'Q' at position 0"), ("AgSQ", "'Q' at position 3"), ("Ag^", "'Ag\\^'"), ("", "empty pattern"), (",,", "empty pattern"), ("a", "'a'")])
def test_parse_errors_name_the_token_and_the_allowed(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_pattern(bad)
    assert "\n" not in str(e.value) and ("allowed tokens are A, Ag, X" in str(e.value) or "give at least one of" in str(e.value))


def test_layer_count_and_list_patterns():
    with pytest.raises(ValueError, match="num_layers=3 entries"):
        stack_config(["L", "L"], 16, 3)
    with pytest.raises(ValueError, match="num_layers"):
        stack_config("L", 16, 0)
    with pytest.raises(ValueError, match="position 0"):
        stack_config(["L", "A^"], 16, 2)


def test_pattern_builds_the_table_of_blocks_and_cells():
    cfg = stack_config(["A,L", "L"], 16, 2)
    assert [type(e).__name__ for e in cfg.layers[0].experts] == ["PostUpBlockConfig", "PassThroughBlockConfig"]
    assert [type(e.cell).__name__ for e in cfg.layers[0].experts] == ["AxonConfig", "LSTMConfig"]
    assert len(cfg.layers[1].experts) == 1 and cfg.layers[0].experts[0].cell.d_hidden == 16
    cfg3 = stack_config("A", 16, 3)
    assert len(cfg3.layers) == 3 and all(len(c.experts) == 1 for c in cfg3.layers)


def test_axonify_and_preup_flags():
    cfg = stack_config("M^S", 16, 1)
    m, s = cfg.layers[0].experts
    assert type(m).__name__ == "PreUpBlockConfig" and m.cell.d_hidden == 32 and m.silu_cell_input is False and m.cell.axonify is True
    assert type(s).__name__ == "PostUpBlockConfig" and s.cell.axonify is False


@pytest.mark.parametrize("token", list(TOKENS))
def test_every_token_builds_and_steps_like_its_sequence(token):
    torch.manual_seed(0)
    m = build_stack(f"{token},L" if token != "L" else "L", 16, 2, XLConfig={"mem_len": 8}).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    resets = torch.zeros(2, 12, dtype=torch.bool)
    resets[1, 6] = True
    y_seq, s_seq = m(x, resets=resets)
    ys, s = [], None
    for t in range(12):
        y, s = m(x[:, t], s, resets=resets[:, t])
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), y_seq, atol=1e-8, rtol=1e-8)
    for a, b in zip(flat(s), flat(s_seq), strict=True):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-8, rtol=1e-8)


def test_overrides_merge_only_given_fields():
    cfg = stack_config("A,A", 16, 2, RouterConfig={"temperature": 0.5}, StackConfig={"post_norm": False}, PostUpBlockConfig={"proj_factor": 2.0})
    r = cfg.layers[1].router
    assert r.temperature == 0.5 and r.top_k is None and r.lambda_local == 0.1
    assert cfg.post_norm is False and all(e.proj_factor == 2.0 for c in cfg.layers for e in c.experts)
    default_axon = type(cfg.layers[0].experts[0].cell)(d_hidden=16)
    assert cfg.layers[0].experts[0].cell == default_axon


@pytest.mark.parametrize("over, match", [
    ({"QuantumConfig": {"x": 1}}, "unknown override type 'QuantumConfig'"),
    ({"RouterConfig": {"temprature": 0.5}}, "unknown field RouterConfig.temprature"),
    ({"RouterConfig": {"temperature": -1}}, "RouterConfig.temperature"),
    ({"RouterConfig": 0.5}, "must be a dict"),
    ({"PostUpBlockConfig": {"cell": {}}}, "unknown field PostUpBlockConfig.cell"),
])
def test_bad_overrides_are_one_line_errors(over, match):
    with pytest.raises(ValueError, match=match) as e:
        stack_config("A", 16, 1, **over)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- serialisation
def _round_trip(cfg):
    data = json.loads(json.dumps(cfg.model_dump(mode="json")))
    return StackConfig.model_validate(data)


def test_config_json_round_trip_rebuilds_an_identical_stack():
    cfg = StackConfig(layers=[column(5), ColumnConfig(experts=[AdapterBlockConfig(base=PreUpBlockConfig(d_hidden=H, proj_factor=1.5, cell=diag(12)), bottleneck=3)])], post_norm=False)
    back = _round_trip(cfg)
    assert back == cfg and type(back.layers[1].experts[0].base.cell) is DiagConfig
    torch.manual_seed(0)
    a = Stack(cfg).double()
    perturb_(a)
    b = Stack(back).double()
    b.load_state_dict(a.state_dict())
    x, resets = inputs()
    assert torch.equal(a(x, resets=resets)[0], b(x, resets=resets)[0])


def test_pattern_config_round_trip():
    cfg = stack_config("A,L", 16, 2, RouterConfig={"top_k": 1})
    assert _round_trip(cfg) == cfg
    torch.manual_seed(0)
    a = Stack(cfg)
    b = Stack(_round_trip(cfg))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 16)
    assert torch.equal(a(x)[0], b(x)[0])


def test_block_rejects_a_cell_of_the_wrong_width():
    with pytest.raises(ValueError, match="needs a cell of width 16"):
        build_block(PreUpBlockConfig(d_hidden=H, cell=diag(H)))
