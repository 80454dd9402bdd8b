"""LSTM fibers when the hidden-partition iteration cycles (issue 11, section 5): the cycle is
detected, the returned partition is the stable refinement of the meet of its phases (the same for
any round cap), it is recorded in Fibers / fibers.json, and the collapse stays exact.

The networks are built so that only the output gate o tells hidden units apart: every unit's i, f
and g rows are the same input weight (so those gates, and c, stay one block), and the o rows take
only recurrent weights M (and a bias), which makes them orthogonal to the i/f/g rows (cosine
distance 1, above the threshold 0.5 used here). The iteration is then h <- o(h): the clustering
of the rows [M P_h^T, bias] of the current h partition.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fiberlab.config import PolicyConfig
from fiberlab.fibration import Fibers, collapse, find_fibers
from fiberlab.fibration import fibers as F
from fiberlab.fibration.partition import meet
from fiberlab.policies import build_policy
from test_fibration_perf import BENCH

THR = 0.5
# Two units: o rows (1, -0.9) and (1, -1.1) are 0.005 apart (one o fiber), their sums over one
# h block, 0.1 and -0.1, are 2 apart (two o fibers): h alternates between one block and two.
PAIR = dict(M=[[1, -0.9], [1, -1.1]], bias=[0, 0])
# Five units, small integer weights from a search over such networks: h after rounds 1, 2, 3 is
# {0}{1234}, {0134}{2}, {01234} (= round 0): period 3. The meet of the phases {0}{134}{2} is not
# stable (o computed from it splits unit 4 off); one refinement round gives {0}{13}{2}{4}.
PERIOD3 = dict(M=[[1, 0, -2, -1, 2], [2, 0, -2, 0, 1], [2, 0, 2, -1, 2], [2, -1, -1, 0, 2], [2, 2, 0, -2, -1]], bias=[1, 0, 0, 1, 0])
# Five units, found the same way: four rounds of transient, then a period-2 cycle between
# {014}{23} and {0124}{3} (rounds 4 and 5); their meet {014}{2}{3} refines to {01}{2}{3}{4}.
TRANSIENT = dict(M=[[1, -2, 1, 2, 2], [-1, 1, 1, 2, 2], [0, 0, 0, 1, -1], [1, -2, -1, 1, -1], [1, -1, 1, 0, 0]], bias=[-1] * 5)
CASES = {  # name: (network, rounds until a state repeats, period, refinement rounds, returned h)
    "pair": (PAIR, 2, 2, 1, [0, 1]),
    "period3": (PERIOD3, 3, 3, 2, [0, 1, 2, 1, 3]),
    "transient": (TRANSIENT, 6, 2, 2, [0, 0, 1, 2, 3]),
}


def _o_gate_lstm(M: list[list[float]], bias: list[float]) -> torch.nn.LSTM:
    """nn.LSTM(1, H): i, f, g rows = input weight 1 for every unit; o rows = recurrent M, bias."""
    H = len(bias)
    lstm = torch.nn.LSTM(1, H)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.weight_ih_l0[: 3 * H] = 1.0
        lstm.weight_hh_l0[3 * H :] = torch.tensor(M)
        lstm.bias_ih_l0[3 * H :] = torch.tensor(bias, dtype=torch.float32)
    return lstm


def _plain(gates: F.LstmGates, rounds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """States (h, c) of the plain iteration after rounds 0..rounds."""
    h = c = np.zeros(gates.hidden, dtype=np.int64)
    states = [(h, c)]
    for _ in range(rounds):
        h, c = F.lstm_step(gates, h, c)
        states.append((h, c))
    return states


def _assert_stable(gates: F.LstmGates, h: np.ndarray, c: np.ndarray) -> None:
    """One more update from (h, c), met with h, changes nothing; so every gate computed from h
    puts the units of one fiber of h together."""
    h1, c1 = F.lstm_step(gates, h, c, refine=True)
    assert np.array_equal(h1, h) and np.array_equal(c1, c)
    g = gates(h)
    for k in range(4):
        assert np.array_equal(meet(h, g[k]), h), k


@pytest.mark.parametrize("name", list(CASES))
def test_cycle_is_detected_and_refined_to_a_stable_partition(name: str) -> None:
    net, rounds, period, refine, expected = CASES[name]
    lstm = _o_gate_lstm(**net)
    r = F._lstm_fibers(lstm, np.arange(1), THR)
    assert (r.rounds, r.converged, r.cycle, r.refine_rounds) == (rounds, False, period, refine)
    assert r.h.tolist() == expected
    gates = F.LstmGates(lstm, np.arange(1), THR)
    states = _plain(gates, rounds)
    first = rounds - period
    assert np.array_equal(states[rounds][0], states[first][0]) and np.array_equal(states[rounds][1], states[first][1])
    assert len({s[0].tobytes() + s[1].tobytes() for s in states[:rounds]}) == rounds  # no earlier repeat
    phases = [h for h, _ in states[first:rounds]]
    assert all(np.array_equal(c, r.c) for _, c in states[first:rounds])  # c is constant on the cycle
    q = meet(*phases)
    assert np.array_equal(meet(q, r.h), r.h)  # refines every phase: merges only what all agree on
    assert (refine > 1) == (not np.array_equal(q, r.h))  # PERIOD3, TRANSIENT: the meet itself is not stable
    _assert_stable(gates, r.h, r.c)


@pytest.mark.parametrize("name", list(CASES))
def test_result_does_not_depend_on_the_round_cap(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net, rounds, period, _, expected = CASES[name]
    lstm = _o_gate_lstm(**net)
    states = _plain(F.LstmGates(lstm, np.arange(1), THR), 51)
    assert not np.array_equal(states[50][0], states[51][0])  # what a plain stop at the cap returned
    for cap in (rounds, rounds + 1, rounds + period - 1, 50, 51):
        monkeypatch.setattr(F, "LSTM_MAX_ROUNDS", cap)
        r = F._lstm_fibers(lstm, np.arange(1), THR)
        assert r.h.tolist() == expected and r.cycle == period and r.rounds == rounds, cap


def test_cap_without_a_repeat_still_returns_a_stable_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    lstm = _o_gate_lstm(**TRANSIENT)
    monkeypatch.setattr(F, "LSTM_MAX_ROUNDS", 3)  # the cycle starts at round 4
    r = F._lstm_fibers(lstm, np.arange(1), THR)
    assert (r.rounds, r.converged, r.cycle) == (3, False, None) and r.refine_rounds >= 1
    _assert_stable(F.LstmGates(lstm, np.arange(1), THR), r.h, r.c)


def test_converging_lstm_reports_converged() -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 6)
    for thr in (0.0, 0.5, 1.0):
        r = F._lstm_fibers(lstm, np.arange(3), thr)
        assert (r.converged, r.cycle, r.refine_rounds) == (True, None, 0)
        gates = F.LstmGates(lstm, np.arange(3), thr)
        h, c = _plain(gates, r.rounds)[-1]
        assert np.array_equal(h, r.h) and np.array_equal(c, r.c)
        assert all(np.array_equal(a, b) for a, b in zip(F.lstm_step(gates, h, c), (h, c)))  # a fixed point
        _assert_stable(gates, r.h, r.c)
    # at threshold 0 the PAIR network does not cycle: it converges to the partition the refinement returns at 0.5
    r = F._lstm_fibers(_o_gate_lstm(**PAIR), np.arange(1), 0.0)
    assert (r.converged, r.cycle, r.h.tolist()) == (True, None, [0, 1])


CONFIG = PolicyConfig(name="mlp_lstm", obs_shape=[6], num_actions=4, linear=[5], core_hidden=4, actor_hidden=[4], critic_hidden=[3])
COPIES = np.array([0, 1, 0, 1])  # hidden units a1, b1, a2, b2: two copies of each PAIR unit
SHARES = np.array([0.3, 0.6, 0.7, 0.4])  # each copy's share of its original's outgoing weights


@torch.no_grad()
def _cycling_policy(seed: int = 0) -> torch.nn.Module:
    """An mlp_lstm whose LSTM is PAIR with each unit copied twice, planted style (incoming rows
    equal, outgoing weights split into shares): it cycles at threshold 0.5 with period 2, and the
    refinement returns the copy groups, so the collapse must give back the 2-unit network exactly."""
    torch.manual_seed(seed)
    p = build_policy(CONFIG)
    for name, param in p.named_parameters():
        if "bias" in name:
            param.normal_(0.0, 0.5)
    lstm, H = p.core.lstm, 4
    for w in lstm.parameters():
        w.zero_()
    ifg_in, ifg_bias = torch.randn(3, lstm.input_size), torch.randn(3)
    for k in range(3):  # i, f, g: the same row for every unit
        lstm.weight_ih_l0[k * H : (k + 1) * H] = ifg_in[k]
        lstm.bias_ih_l0[k * H : (k + 1) * H] = ifg_bias[k]
    M = np.array(PAIR["M"])
    lstm.weight_hh_l0[3 * H :] = torch.from_numpy(M[COPIES][:, COPIES] * SHARES[None, :]).float()
    return p


def _rollout(policy: torch.nn.Module, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(3, 9, *CONFIG.obs_shape, generator=g)
    resets = torch.zeros(3, 9, dtype=torch.bool)
    resets[0, 4] = resets[2, 6] = True
    with torch.no_grad():
        logits, values, state = policy(obs, None, resets)
    return logits.double(), values.double(), state


def test_cycling_policy_collapses_exactly() -> None:
    big = _cycling_policy()
    thr = dict(linear=0.0, cnn=0.0, lstm=THR, critic=0.0)
    fibers = find_fibers(big, thr)
    assert fibers.lstm_report() == {"lstm_rounds": 2, "lstm_converged": False, "lstm_cycle": 2, "lstm_refine_rounds": 1}
    assert fibers.labels["core"].tolist() == [0, 1, 0, 1]
    small = collapse(big, fibers)
    assert small.config.core_hidden == 2
    lb, vb, sb = _rollout(big)
    ls, vs, ss = _rollout(small)
    torch.testing.assert_close(ls, lb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vs, vb, atol=1e-5, rtol=1e-5)
    h_fiber = torch.from_numpy(fibers.labels["core"])
    torch.testing.assert_close(ss["h"][:, h_fiber].double(), sb["h"].double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ss["c"][:, h_fiber].double(), sb["c"].double(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sb["h"][:, 0], sb["h"][:, 1])  # the two fibers really differ
    exact = find_fibers(big, {**thr, "lstm": 0.0})  # threshold 0 converges, to the same partition
    assert exact.lstm_converged and exact.labels["core"].tolist() == [0, 1, 0, 1]


def test_cycles_match_the_reference() -> None:
    """The plain reference (benchmarks/fibration.py, lstm_rounds=None) detects and refines the same."""
    big = _cycling_policy()
    thr = F.Thresholds(linear=0.0, cnn=0.0, lstm=THR, critic=0.0)
    ours, ref = find_fibers(big, thr), BENCH.reference_fibers(big, thr, lstm_rounds=None)
    assert ours.lstm_report() == ref.lstm_report()
    assert all(np.array_equal(ours.labels[k], ref.labels[k]) for k in ref.labels)
    for name, (net, rounds, period, refine, expected) in CASES.items():
        h, report = BENCH._ref_lstm(_o_gate_lstm(**net), np.arange(1), THR, None)
        assert h.tolist() == expected, name
        assert report == {"lstm_rounds": rounds, "lstm_converged": False, "lstm_cycle": period, "lstm_refine_rounds": refine}, name


def test_lstm_fields_in_fibers_json(tmp_path) -> None:
    from fiberlab.experiments.fibration_runs import save_fibers

    fibers = find_fibers(_cycling_policy(), dict(linear=0.0, cnn=0.0, lstm=THR, critic=0.0))
    d = json.loads(save_fibers(fibers, tmp_path / "fibers.json").read_text())
    assert {k: d[k] for k in F.LSTM_KEYS} == {"lstm_rounds": 2, "lstm_converged": False, "lstm_cycle": 2, "lstm_refine_rounds": 1}
    back = Fibers.from_dict(d)
    assert back.lstm_report() == fibers.lstm_report() and back.meta == {}
    assert back.to_dict() == d
    old = {k: v for k, v in d.items() if k not in ("lstm_converged", "lstm_cycle", "lstm_refine_rounds")}  # a file from before
    back = Fibers.from_dict(old)
    assert back.lstm_report() == {"lstm_rounds": 2, "lstm_converged": None, "lstm_cycle": None, "lstm_refine_rounds": 0}
    assert back.meta == {} and np.array_equal(back.labels["core"], fibers.labels["core"])
