"""find_fibers' fast path (Gram-matrix distances, LSTM Gram kept in pieces, cached rounds) finds
exactly the fibers of the straightforward scipy reference in benchmarks/fibration.py, and the
benchmark's --quick run works. Absolute times are not asserted: the machine is shared and noisy."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fiberlab.config import PolicyConfig
from fiberlab.fibration import find_fibers
from fiberlab.fibration.fibers import Thresholds
from fiberlab.fibration.partition import canonical, cluster_rows, one_hot, sum_columns
from fiberlab.policies import build_policy

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fibration.py"


def _bench():
    if str(SCRIPT.parent) not in sys.path:  # the script imports benchmarks/bench_common.py, as when run
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_fibration", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench()
CONFIGS = {
    "fast": PolicyConfig(name="fast", obs_shape=[6, 11, 11], num_actions=5, conv_channels=[12, 10], linear=[24, 20], core_hidden=24, actor_hidden=[16], critic_hidden=[12]),
    "atari": PolicyConfig(name="atari", obs_shape=[1, 36, 36], num_actions=6, conv_channels=[8, 10, 8], linear=[40], core_hidden=32),
    "mlp_lstm": PolicyConfig(name="mlp_lstm", obs_shape=[10], num_actions=4, linear=[30, 20], core_hidden=24, actor_hidden=[12], critic_hidden=[8]),
}
THRESHOLDS = [
    Thresholds(linear=0.0, cnn=0.0, lstm=0.0, critic=0.0),
    Thresholds(),
    Thresholds(linear=0.95, cnn=0.9, lstm=0.9, critic=1.0),
    Thresholds(linear=1.0, cnn=1.0, lstm=1.0, critic=1.2),
]


def _policy(cfg: PolicyConfig, seed: int, duplicate: bool) -> torch.nn.Module:
    """Random weights and biases; with ``duplicate``, some LSTM units and linear rows copied or
    scaled so that exact merges (distance ~1e-16) happen too."""
    torch.manual_seed(seed)
    p = build_policy(cfg)
    with torch.no_grad():
        for name, param in p.named_parameters():
            param.normal_(0.0, 0.5)
        if duplicate:
            lstm = p.core.lstm
            H = lstm.hidden_size
            for w in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0):
                w.view(4, H, -1)[:, 1] = w.view(4, H, -1)[:, 0]
            for m in p.modules():
                if isinstance(m, torch.nn.Linear) and m.out_features > 4:
                    m.weight[2] = 3.0 * m.weight[1]
                    m.bias[2] = 3.0 * m.bias[1]
                    m.weight[3] = 0.0
                    m.bias[3] = 0.0
    return p


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_find_fibers_matches_reference(arch: str, seed: int) -> None:
    policy = _policy(CONFIGS[arch], seed, duplicate=seed == 1)
    for thr in THRESHOLDS:
        ours = find_fibers(policy, thr)
        ref = BENCH.reference_fibers(policy, thr, lstm_rounds=None)
        assert ours.lstm_report() == ref.lstm_report(), thr  # rounds, converged, cycle, refinement
        for name in ref.labels:
            assert np.array_equal(ours.labels[name], ref.labels[name]), (name, thr)


def test_cluster_rows_matches_reference() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, d = int(rng.integers(2, 60)), int(rng.integers(1, 20))
        rows = rng.normal(size=(n, d))
        rows[rng.integers(0, n, n // 4)] = 0.0  # dead units
        src, dst = rng.integers(0, n, (2, n // 4))
        rows[dst] = rows[src] * rng.uniform(0.1, 5.0, (len(src), 1))  # parallel rows
        for thr in (0.0, 0.3, 0.7, 1.0, 1.5, 2.0):
            assert np.array_equal(cluster_rows(rows, thr), BENCH._ref_cluster(rows, thr)), (trial, thr)
    assert np.array_equal(cluster_rows(np.zeros((1, 3)), 0.5), [0])
    assert np.array_equal(cluster_rows(np.zeros((4, 3)), 0.5), [0, 0, 0, 0])


def test_sum_columns_and_canonical() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(7, 12))
    for colors in (rng.permutation(12), rng.integers(0, 5, 12), np.zeros(12, dtype=np.int64), np.r_[np.arange(6), np.arange(6)]):
        np.testing.assert_allclose(sum_columns(w, colors), w @ one_hot(colors).T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sum_columns(w, np.array([0, 3] * 6), 5), w @ one_hot(np.array([0, 3] * 6), 5).T, atol=1e-12)
    labels = rng.integers(0, 9, 40)
    assert np.array_equal(canonical(labels), BENCH._ref_canonical(labels))
    assert canonical(labels).dtype == np.int64


def test_quick_benchmark_prints_ratios(tmp_path: Path) -> None:
    out_json = tmp_path / "fib.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out_json)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("atari/init/default", "fast/init/default"):
        assert re.search(re.escape(name) + r": ours \d+\.\d+ s, reference \d+\.\d+ s, reference / ours: \d+\.\d+", proc.stdout), proc.stdout
    assert "same fibers as reference: True" in proc.stdout
    data = json.loads(out_json.read_text())
    assert {r["arch"] for r in data["rows"]} == {"atari", "fast"}
    assert all(r["same_fibers"] and r["ours_s"] > 0 and r["reference_s"] > 0 for r in data["rows"])
