"""The front door: ``fiberlab.train/evaluate/load/find_fibers/collapse`` take what a researcher has
in hand, read overrides with the CLI's parser and fail with the CLI's one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fiberlab
from conftest import ROOT, run_cli, tiny
from fiberlab.config import ConfigError, apply_overrides, override_strings
from fiberlab.errors import BadInput
from fiberlab.recipes import get_recipe


def test_import_is_light_and_lists_the_verbs():
    code = "import sys, fiberlab; print('torch' in sys.modules, sorted(fiberlab.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")}).stdout
    loaded, names = out.split(" ", 1)
    assert loaded == "False"
    for verb in ("train", "evaluate", "load", "find_fibers", "collapse", "Callback"):
        assert verb in names and callable(getattr(fiberlab, verb)) and getattr(fiberlab, verb).__doc__


def test_dict_keywords_and_strings_are_one_override_language():
    base = get_recipe("demo")
    as_strings = apply_overrides(base, ["trainer.total_timesteps=100000", "policy.linear=[64, 64]", "run=x1", "wandb.enabled=true"])
    as_dict = apply_overrides(base, override_strings({"trainer.total_timesteps": 1e5, "policy.linear": [64, 64], "run": "x1", "wandb.enabled": True}))
    assert as_dict == as_strings
    assert apply_overrides(base, override_strings({"run": "123"})).run == "123"  # a Python string stays a string


@pytest.mark.parametrize("call, cli_args", [
    (lambda: fiberlab.train("demo", {"trainer.bogus": 1}), ["train", "demo", "trainer.bogus=1"]),
    (lambda: fiberlab.train("demo", ["trainer.total_timesteps=-5"]), ["train", "demo", "trainer.total_timesteps=-5"]),
    (lambda: fiberlab.train("nope"), ["train", "nope"]),
])
def test_bad_overrides_raise_the_cli_message(call, cli_args):
    with pytest.raises(ConfigError) as e:
        call()
    r = run_cli(*cli_args)
    assert r.returncode == 2 and r.stderr.strip() == f"fiberlab: error: {e.value}"


def test_bad_arguments_are_one_line_bad_input(tmp_path):
    with pytest.raises(BadInput, match="recipe_or_config"):
        fiberlab.train(42)
    with pytest.raises(BadInput, match="needs env="):
        fiberlab.evaluate(fiberlab.load(_tiny_run(tmp_path)).policy)
    with pytest.raises(BadInput, match="episodes"):
        fiberlab.evaluate(_tiny_run(tmp_path), episodes=0)
    with pytest.raises(BadInput, match="a policy, a TrainResult"):
        fiberlab.collapse(3.5)
    with pytest.raises(BadInput, match="no such|not found|does not exist|No such"):
        fiberlab.load(tmp_path / "missing.safetensors")


_RUNS: dict = {}


def _tiny_run(tmp_path):
    if "path" not in _RUNS:
        _RUNS["path"] = fiberlab.train("demo", tiny(tmp_path / "runs", epochs=2)[1:]).last_checkpoint
    return _RUNS["path"]


def test_one_evaluation_gives_one_number_from_python_and_the_cli(tmp_path):
    result = fiberlab.train("demo", tiny(tmp_path, epochs=2)[1:])
    from_result = fiberlab.evaluate(result, episodes=6)
    from_path = fiberlab.evaluate(result.last_checkpoint, episodes=6)
    from_checkpoint = fiberlab.evaluate(fiberlab.load(result.last_checkpoint), episodes=6)
    from_policy = fiberlab.evaluate(result.policy, env="popgym.RepeatPreviousEasy", overrides={"env.num_envs": 8}, episodes=6)
    r = run_cli("eval", str(result.last_checkpoint), "episodes=6")
    from_cli = json.loads(r.stdout.strip().splitlines()[-1])
    numbers = {d["mean_return"] for d in (from_result, from_path, from_checkpoint, from_policy, from_cli)}
    assert len(numbers) == 1, numbers
    assert from_cli["episodes"] == 6 and from_cli["ci95_return"] > 0


def test_find_fibers_and_collapse_take_a_path(tmp_path):
    path = _tiny_run(tmp_path)
    fibers = fiberlab.find_fibers(path, {"linear": 1.5, "lstm": 1.5})
    small = fiberlab.collapse(path, fibers)
    big = fiberlab.load(path).policy
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    assert fiberlab.collapse(big, thresholds={"linear": 1.5, "lstm": 1.5}).config == small.config
