"""Smoke test of benchmarks/train_throughput.py: the demo rows run and the ratio lines print.

Absolute speeds are not asserted: the machine is shared and noisy.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"


def test_quick_demo_rows_print_ratios(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("sb3_contrib")
    out_json = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    baseline = tmp_path / "tree"  # a second source tree: a copy of this one, so its row must import from there
    shutil.copytree(ROOT / "src", baseline / "src", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "demo", "--device", "cpu", "--json", str(out_json), "--baseline", str(baseline)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for line in ("demo: ours / SB3 PPO:", "demo: ours / RecurrentPPO:", "demo: ours / env-only ceiling:", "demo: ours / limit:",
                 "demo: ours / baseline code:"):
        assert re.search(re.escape(line) + r" \d+\.\d+", out), f"missing {line!r} in:\n{out}"
    assert "beam_rider" not in out and "arena" not in out  # --only demo runs the demo rows only

    data = json.loads(out_json.read_text())
    rows = {r["kind"]: r for r in data["rows"]}
    assert set(rows) == {"env", "forward", "arith", "baseline", "ours", "sb3_ppo", "sb3_rppo"}
    for r in data["rows"]:
        assert r["sps"] > 0 and r["peak_rss_mb"] > 0, r
    assert rows["baseline"]["runs"][0]["fiberlab_from"] == str((baseline / "src" / "fiberlab").resolve())
    assert rows["ours"]["runs"][0]["fiberlab_from"] == str((ROOT / "src" / "fiberlab").resolve())
    assert set(data["ratios"]) == {"demo: ours / env-only ceiling", "demo: ours / SB3 PPO", "demo: ours / RecurrentPPO",
                                   "demo: ours / limit", "demo: ours / baseline code"}
    # the limit: env and network one after the other, their times per step add up
    by = {k: r["sps"] for k, r in rows.items()}
    assert data["ratios"]["demo: ours / limit"] == pytest.approx(by["ours"] * (1 / by["env"] + 1 / by["arith"]))


def test_unknown_group_is_rejected() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "nope"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 2 and "unknown group" in proc.stderr


def test_checkpoint_io_quick_prints_ratios(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out_json = tmp_path / "io.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "checkpoint_io.py"), "--quick", "--json", str(out_json)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Manifest read vs full load" in proc.stdout and "Compression, atari" in proc.stdout
    assert out_json.stat().st_size > 0


def _run_bench(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_darkroom_env_prints_ratios_against_the_reference_and_the_limit(tmp_path: Path) -> None:
    out = _run_bench("darkroom_env.py", "--streams", "4", "--steps", "40", cwd=tmp_path)
    assert re.search(r"batched is \d+x the reference", out) and re.search(r"batched is at \d+% of the limit", out), out


def test_ad_training_step_quick_prints_the_ratio_and_the_limit(tmp_path: Path) -> None:
    out = _run_bench("ad.py", "--quick", cwd=tmp_path)
    assert re.search(r"ours / reference speed-up: \d+\.\dx", out) and "machine limit:" in out, out


def test_cortex_cells_quick_prints_the_acting_step_table(tmp_path: Path) -> None:
    """benchmarks/cortex_cells.py: the acting-step rows (one step, inference mode) against nn.LSTMCell."""
    out_json = tmp_path / "cells.json"
    out = _run_bench("cortex_cells.py", "--quick", "--only", "X,Ag,C", "--steps", "0", "--json", str(out_json), cwd=tmp_path)
    assert re.search(r"acting step: B=\d+ H=\d+", out) and "vs nn.LSTMCell" in out, out
    for name in ("X", "Ag", "C"):
        assert re.search(rf"^\s*{re.escape(name)}\s+[\d,]+\s+[\d,]+\s+\d+\.\d+x .*(met|NOT met)$", out, re.MULTILINE), out
    data = json.loads(out_json.read_text())
    assert data["rows"] == []  # --steps 0: no forward+backward table
    assert [r["name"] for r in data["acting_rows"]] == ["X", "Ag", "C"] and data["acting_target"] == 0.3
    for r in data["acting_rows"]:
        assert r["step_us"] > 0 and r["lstmcell_step_us"] > 0 and r["vs_lstmcell"] > 0, r
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cortex_cells.py"), "--step-batch", "-1"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


def test_ppo_minibatch_prints_every_part_and_the_ratio() -> None:
    script = ROOT / "benchmarks" / "ppo_minibatch.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(script), "--minibatches", "20", "--threads", "1"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for part in ("forward", "loss", "zero", "backward", "clip", "step", "total"):
        assert re.search(rf"^{part} +\d+\.\d +\d+\.\d +\d+\.\d\dx", proc.stdout, re.M), f"no {part} row in:\n{proc.stdout}"
    assert "20 minibatches per variant" in proc.stdout
    bad = subprocess.run([sys.executable, str(script), "--recipe", "nope"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "unknown recipe 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, str(script), "--minibatches", "0"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--minibatches" in bad.stderr and "Traceback" not in bad.stderr
