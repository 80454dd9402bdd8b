"""The command line's one error path: every --help works, and every bad input is one line on
stderr, the right exit code, no traceback and nothing left behind.

Commands run in-process through ``fiberlab.cli.main.main`` (importing torch once, not per case);
a few run as real processes to check the console script and ``python -m fiberlab``.
"""
from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fiberlab.cli import Parser
from fiberlab.cli import main as cli_main
from fiberlab.cli.main import build_parser, main
from fiberlab.errors import BadInput
from fiberlab.rl.run_dir import make_run_dir, remove_made_dirs

ROOT = Path(__file__).resolve().parents[1]


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of the root and of every subcommand, nested ones included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


COMMANDS = [path for path, _ in _commands(build_parser())]


def test_the_tree_is_discovered():
    for expected in [(), ("train",), ("eval",), ("ckpt", "inspect"), ("ckpt", "migrate"), ("collapse",), ("pipeline",), ("cortex", "eval")]:
        assert expected in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "fiberlab")
def test_every_help_exits_0_with_usage(path, capsys):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr()
    assert "usage" in out.out.lower() and out.err == ""


def test_every_parser_is_the_one_line_parser():
    for path, parser in _commands(build_parser()):
        assert isinstance(parser, Parser), path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_line_error(rc: int, out: str, err: str, code: int, fragment: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, (rc, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, err
    assert lines[0].startswith("fiberlab") and fragment in lines[0], lines[0]
    return lines[0]


BAD = [
    # (argv, exit code, a fragment of the line)
    ([], 2, "required"),
    (["bogus"], 2, "invalid choice: 'bogus'"),
    (["train"], 2, "recipe"),
    (["train", "nonsense"], 2, "unknown recipe 'nonsense'"),
    (["train", "demo", "trainer.bogus=1"], 2, "trainer.bogus"),
    (["train", "demo", "run=r", "policy.core=cortex", "policy.pattern=Q"], 2, "unknown token 'Q'"),
    (["train", "demo", "run=r", "policy.name=atari"], 2, "conv encoder"),
    (["train", "demo", "run=r", "env.name=popgym.Nope"], 2, "Nope"),
    (["train", "demo", "run=r", "device=cuda:9"], 2, "device"),
    (["train", "demo", "--bogus"], 2, "unrecognized arguments: --bogus (see 'fiberlab train --help')"),
    (["train", "demo", "run=r", "train_dir=/proc/forbidden"], 2, "/proc/forbidden"),
    (["train", "demo", "run=r", "train_dir=afile"], 2, "afile"),
    (["train", "demo", "run=r", "--train-dir", "afile"], 2, "afile"),
    (["train", "demo", "--train-dir", "a", "train_dir=b"], 2, "train_dir given twice"),
    (["eval"], 2, "checkpoint"),
    (["eval", "x.safetensors", "episodes=-1"], 2, "'episodes'"),
    (["eval", "x.safetensors", "greedy=maybe"], 2, "'greedy'"),
    (["eval", "missing.safetensors"], 2, "missing.safetensors"),
    (["eval", "afile"], 2, "afile"),
    (["recipes", "extra"], 2, "unrecognized arguments: extra"),
    (["ckpt"], 2, "required"),
    (["ckpt", "bogus"], 2, "invalid choice: 'bogus'"),
    (["ckpt", "inspect"], 2, "path"),
    (["ckpt", "inspect", "missing.safetensors"], 2, "missing.safetensors"),
    (["ckpt", "inspect", "afile"], 2, "afile"),
    (["ckpt", "check", "missing.safetensors"], 2, "missing.safetensors"),
    (["ckpt", "check", "afile", "--env", "nonsense"], 2, "nonsense"),
    (["ckpt", "migrate"], 2, "INPUT"),
    (["ckpt", "migrate", "missing.pt"], 2, "missing.pt"),
    (["ckpt", "compress", "afile", "--method", "brotli"], 2, "invalid choice: 'brotli'"),
    (["ckpt", "compress", "afile"], 2, "--method"),
    (["ckpt", "compress", "missing", "--method", "zstd"], 2, "missing"),
    (["ckpt", "compress", "afile", "--method", "zstd", "--level", "99"], 2, "99"),
    (["ckpt", "decompress", "missing"], 2, "missing"),
    (["ckpt", "bench", "missing"], 2, "missing"),
    (["ckpt", "bench", "afile"], 2, "afile"),
    (["collapse"], 2, "--run"),
    (["collapse", "--run", "x", "--epoch", "-5"], 2, "--epoch"),
    (["collapse", "--run", "x", "--epoch", "five"], 2, "--epoch"),
    (["collapse", "--run", "x", "--eval-episodes", "-1"], 2, "--eval-episodes"),
    (["collapse", "--run", "x", "--threshold", "3"], 2, "--threshold"),
    (["collapse", "--run", "x"], 2, "unknown run 'x'"),
    (["collapse", "--run", "x", "train_dir=/proc/forbidden"], 2, "/proc/forbidden/x"),  # the source is read from it
    (["collapse", "--run", "x", "--train-dir", "a", "train_dir=b"], 2, "train_dir given twice"),
    (["ablate", "--run", "x", "--draws", "0"], 2, "--draws"),
    (["ablate", "--run", "x", "--epoch", "-1"], 2, "--epoch"),
    (["continue", "--run", "x", "--eval-episodes", "-3"], 2, "--eval-episodes"),
    (["continue", "--run", "x", "--threshold", "0.5"], 2, "--threshold"),
    (["scratch", "--like", "x"], 2, "not a collapsed run"),
    (["scratch", "--like", "x", "train_dir=afile"], 2, "afile"),
    (["fibers", "--run", "x"], 2, "x"),
    (["fibers", "--run", "x", "foo=1"], 2, "foo=1"),
    (["fibers", "--run", "x", "--lstm-thr", "-1"], 2, "--lstm-thr"),
    (["compare", "--out", "x.png"], 2, "runs"),
    (["compare", "a", "--out", "x.txt"], 2, "--out"),
    (["compare", "a", "--out", "x.png"], 2, "a"),
    (["compare", "a", "--out", "x.png", "train_dir=q"], 2, "q/a"),
    (["compare", "a", "--out", "x.png", "--random-episodes", "-1"], 2, "--random-episodes"),
    (["pipeline", "other", "demo"], 2, "unknown pipeline 'other'"),
    (["pipeline", "fibration", "demo", "--seeds", "0"], 2, "--seeds"),
    (["pipeline", "fibration", "demo", "--jobs", "0"], 2, "--jobs"),
    (["pipeline", "fibration", "demo", "--eval-episodes", "-1"], 2, "--eval-episodes"),
    (["pipeline", "fibration", "demo", "--retrain-fraction", "0"], 2, "--retrain-fraction"),
    (["pipeline", "fibration", "nonsense"], 2, "unknown recipe 'nonsense'"),
    (["pipeline", "fibration", "demo", "--train-dir", "a", "train_dir=b"], 2, "train_dir given twice"),
    (["cortex"], 2, "required"),
    (["cortex", "eval", "--task", "majority"], 2, "--pattern"),
    (["cortex", "eval", "--task", "nope", "--pattern", "L"], 2, "unknown task 'nope'"),
    (["cortex", "eval", "--task", "majority", "--pattern", "L", "--seeds", "0"], 2, "--seeds"),
    (["cortex", "eval", "--task", "majority", "--pattern", "Q"], 2, "'Q'"),
]


@pytest.mark.parametrize("argv, code, fragment", BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_and_leaves_nothing(argv, code, fragment, tmp_path, monkeypatch, capsys):
    if any("/proc/forbidden" in a for a in argv) and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    monkeypatch.delenv("FIBERLAB_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a checkpoint, not a folder\n")
    before = _tree(tmp_path)
    rc = main(argv)
    out = capsys.readouterr()
    _one_line_error(rc, out.out, out.err, code, fragment)
    assert _tree(tmp_path) == before


def test_usage_errors_name_the_subcommand_help(capsys):
    assert main(["ckpt", "compress", "x", "--method", "brotli"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage" not in err and "(see 'fiberlab ckpt compress --help')" in err


@pytest.mark.parametrize("exc, code, fragment", [
    (KeyError("boom"), 1, "internal error: KeyError: 'boom' (set FIBERLAB_DEBUG=1 for the traceback)"),
    (RuntimeError(""), 1, "internal error: RuntimeError (set FIBERLAB_DEBUG=1"),
    (BadInput("bad thing\nsecond line"), 2, "fiberlab: error: bad thing"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.json"), 1, "error: /data/x.json: No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x"), 2, "error: /data/x: Permission denied"),
    (KeyboardInterrupt(), 130, "fiberlab: interrupted"),
])
def test_the_handler_maps_every_kind(exc, code, fragment, monkeypatch, capsys):
    def broken(_args):
        raise exc

    monkeypatch.delenv("FIBERLAB_DEBUG", raising=False)
    monkeypatch.setattr(cli_main, "cmd_recipes", broken)
    rc = main(["recipes"])
    out = capsys.readouterr()
    line = _one_line_error(rc, out.out, out.err, code, fragment)
    assert "second line" not in line


@pytest.mark.parametrize("exc", [KeyError("boom"), BadInput("bad"), KeyboardInterrupt()])
def test_debug_raises_everything(exc, monkeypatch):
    def broken(_args):
        raise exc

    monkeypatch.setenv("FIBERLAB_DEBUG", "1")
    monkeypatch.setattr(cli_main, "cmd_recipes", broken)
    with pytest.raises(type(exc)):
        main(["recipes"])


def test_make_run_dir_takes_back_what_it_made(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    made = make_run_dir(run, tmp_path / "a")
    assert made == [tmp_path / "a", tmp_path / "a" / "b", run] and run.is_dir()
    remove_made_dirs(made)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput, match="bad value .* for train_dir"):
        make_run_dir(tmp_path / "f" / "sub" / "run", tmp_path / "f" / "sub")
    assert _tree(tmp_path) == ["f"]


def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FIBERLAB_DEBUG"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), **extra}


def test_console_script_one_line_and_help(tmp_path):
    script = Path(sys.executable).parent / "fiberlab"
    if not script.exists():
        pytest.skip("console script not installed")
    r = subprocess.run([str(script), "ckpt", "compress", "x", "--method", "brotli"], check=False, capture_output=True, text=True, cwd=tmp_path, env=_script_env(), timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid choice: 'brotli'" in r.stderr, r.stderr
    r = subprocess.run([str(script), "cortex", "--help"], check=False, capture_output=True, text=True, cwd=tmp_path, env=_script_env(), timeout=120)
    assert r.returncode == 0 and "usage" in r.stdout, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_python_m_one_line_and_debug_traceback(tmp_path):
    if Path("/proc").is_dir():  # the example: was a 31-line FileNotFoundError traceback
        r = subprocess.run([sys.executable, "-m", "fiberlab", "train", "demo", "train_dir=/proc/forbidden"], check=False, capture_output=True, text=True, cwd=tmp_path, env=_script_env(), timeout=300)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "/proc/forbidden" in r.stderr, r.stderr
    cmd = [sys.executable, "-m", "fiberlab", "fibers", "--run", "x", "foo=1"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=tmp_path, env=_script_env(), timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=tmp_path, env=_script_env(FIBERLAB_DEBUG="1"), timeout=300)
    assert r.returncode != 0 and "Traceback" in r.stderr and "BadInput" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
