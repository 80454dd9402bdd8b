"""``fiberlab cortex eval`` and its harness: chunked streaming equals the plain forward and cuts the
gradient, a small stack learns, per-seed JSON and the summary are written, bad input writes nothing;
plus a smoke run of benchmarks/cortex_cells.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fiberlab.cli.main import main
from fiberlab.cortex.pattern import build_stack
from fiberlab.experiments.cortex_eval import EvalConfig, SequenceClassifier, summarize, train_seed
from fiberlab.intervals import t_interval

ROOT = Path(__file__).resolve().parents[1]
PATTERN = "L"  # nn.LSTM-backed: the cheapest cell on CPU


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(pattern: str = PATTERN, vocab: int = 6, dtype: torch.dtype = torch.float64) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(build_stack(pattern, 16, 2), vocab, 3, 16).to(dtype)


@pytest.mark.parametrize("chunk", [4, 5, 7, 19])
def test_chunked_forward_equals_the_whole_sequence(chunk: int) -> None:
    model = _model()
    tokens = torch.randint(0, 6, (3, 19), generator=torch.Generator().manual_seed(1))
    whole = model(tokens)
    chunked = model(tokens, chunk_size=chunk)
    assert whole.shape == (3, 3)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_chunking_backpropagates_through_the_last_chunk_only() -> None:
    model = _model()
    # token 5 occurs only in the first 12 steps, tokens 1..4 only in the last chunk of 8
    tokens = torch.cat([torch.full((2, 12), 5), torch.randint(1, 5, (2, 8), generator=torch.Generator().manual_seed(2))], 1)
    model(tokens, chunk_size=8).sum().backward()
    assert model.embed.weight.grad[5].abs().max() == 0
    assert model.embed.weight.grad[1:5].abs().max() > 0
    model.zero_grad()
    model(tokens).sum().backward()  # unchunked: the early steps get gradient
    assert model.embed.weight.grad[5].abs().max() > 0


def test_t_interval_matches_the_textbook_formula() -> None:
    mean, half = t_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.302652729911275 * 0.1 / 3 ** 0.5)  # t_{0.975, 2} * s / sqrt(n)
    assert t_interval([0.4])[1] != t_interval([0.4])[1]  # nan: one seed has no interval


def test_a_small_lstm_stack_learns_delayed_recall_above_chance() -> None:
    cfg = EvalConfig(task="delayed_recall", pattern=PATTERN, d_hidden=16, num_layers=1, epochs=6, samples=600,
                     task_overrides={"delay": 6}, lr=1e-2)
    result = train_seed(cfg, seed=0)
    assert result["chance"] == pytest.approx(1 / 3)
    assert result["test_acc"] >= 0.9, result["history"]
    assert result["tokens_per_s"] > 0 and result["parameters"] > result["stack_parameters"] > 0
    assert 1 <= result["best_epoch"] <= 6


def _cli(tmp_path: Path, *args: str) -> list[str]:
    return ["cortex", "eval", "--d-hidden", "8", "--num-layers", "1", "--epochs", "1", "--samples", "40", "--out", str(tmp_path / "out"), *args]


def test_cli_writes_one_json_per_seed_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(_cli(tmp_path, "--task", "delayed_recall", "--length", "3", "--pattern", PATTERN, "C", "--seeds", "2"))
    out = capsys.readouterr().out
    assert rc == 0, out
    for pattern in (PATTERN, "C"):
        folder = tmp_path / "out" / f"delayed_recall-delay3_{pattern}_d8_l1"
        seeds = [json.loads((folder / f"seed_{s}.json").read_text()) for s in (0, 1)]
        assert [r["seed"] for r in seeds] == [0, 1]
        assert all(r["config"]["pattern"] == pattern and r["task_params"] == {"delay": 3} and r["seq_len"] == 4 for r in seeds)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["acc_mean"] == pytest.approx((seeds[0]["test_acc"] + seeds[1]["test_acc"]) / 2)
        assert summary == summarize(seeds)
        assert re.search(rf"delayed_recall\s.*{re.escape(pattern)}\s.*±.*0\.333", out)  # one table row per pattern
    # the same command again reads the seeds back instead of training
    mtime = (tmp_path / "out" / "delayed_recall-delay3_C_d8_l1" / "seed_0.json").stat().st_mtime_ns
    assert main(_cli(tmp_path, "--task", "delayed_recall", "--length", "3", "--pattern", "C", "--seeds", "2")) == 0
    assert "read back" in capsys.readouterr().out
    assert (tmp_path / "out" / "delayed_recall-delay3_C_d8_l1" / "seed_0.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(("args", "needle"), [
    (["--task", "nope", "--pattern", "L"], "unknown task 'nope'"),
    (["--task", "majority", "--pattern", "L", "Q"], "unknown token 'Q'"),
    (["--task", "majority", "--pattern", "L", "--d-hidden", "0"], "--d-hidden"),
    (["--task", "majority", "--pattern", "L", "--seeds", "-2"], "--seeds"),
    (["--task", "majority", "--pattern", "L", "--length", "0"], "--length"),
    (["--task", "majority", "--pattern", "L", "--chunk-size", "x"], "--chunk-size"),
    (["--task", "majority", "--pattern", "L", "--task-arg", "lenght=3"], "unknown parameter 'lenght'"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], needle: str) -> None:
    assert main(_cli(tmp_path, *args)) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_benchmark_quick_prints_ratios(tmp_path: Path) -> None:
    out_json = tmp_path / "cells.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cortex_cells.py"), "--quick", "--only", "L,C,AgSA",
                           "--json", str(out_json)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("L", "C", "AgSA"):
        assert re.search(rf"^\s*{name}\s.*\d", proc.stdout, re.MULTILINE), proc.stdout
    rows = json.loads(out_json.read_text())["rows"]
    assert {r["name"] for r in rows} == {"L", "C", "AgSA", "nn.LSTM"}
    for r in rows:
        assert r["seq_tokens_per_s"] > 0 and r["step_tokens_per_s"] > 0
        assert r["vs_lstm"] > 0
