import json

import pytest

from fiberlab.config import ConfigError, TrainConfig, apply_overrides
from fiberlab.recipes import get_recipe, list_recipes


def test_nested_override_is_typed():
    cfg = apply_overrides(TrainConfig(), ["trainer.total_timesteps=1234", "env.num_envs=7", "run=x", "policy.linear=[32,16]", "wandb.enabled=true"])
    assert cfg.trainer.total_timesteps == 1234 and cfg.env.num_envs == 7 and cfg.run == "x"
    assert cfg.policy.linear == [32, 16] and cfg.wandb.enabled is True


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.bogus=1", "unknown key 'trainer.bogus'"),
        ("nope=1", "unknown key 'nope'"),
        ("trainer.total_timesteps=lots", "'trainer.total_timesteps'"),
        ("env.num_envs=0", "'env.num_envs'"),
        ("seed.x=1", "seed has no sub-keys"),
        ("policy.name=resnet", "'policy.name'"),
        ("run=../../etc", "'run'"),
    ],
)
def test_bad_override_is_one_clear_line(override, fragment):
    with pytest.raises(ConfigError) as e:
        apply_overrides(TrainConfig(), [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError, match="allowed keys under trainer are .*total_timesteps"):
        apply_overrides(TrainConfig(), ["trainer.total_steps=5"])


def test_recipes_resolve_and_families():
    names = [n for n, _ in list_recipes()]
    for n in ("demo", "arena", "navigation", "assembly_lines", "beam_rider", "atari.<Name>", "popgym.<Name>"):
        assert n in names
    assert get_recipe("atari.Breakout").env.name == "atari.Breakout"
    assert get_recipe("popgym.RepeatFirstEasy").env.name == "popgym.RepeatFirstEasy"
    assert get_recipe("beam_rider").policy.name == "atari"
    with pytest.raises(ConfigError, match="unknown recipe 'nonsense'"):
        get_recipe("nonsense")
    with pytest.raises(ConfigError, match="unknown popgym env 'Nope'"):
        get_recipe("popgym.Nope")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "nonsense"], "unknown recipe 'nonsense'"),
        (["train", "demo", "trainer.bogus=3"], "unknown key 'trainer.bogus'"),
        (["train", "demo", "trainer.total_timesteps=abc"], "trainer.total_timesteps"),
        (["train", "demo", "env.name=foo.Bar"], "unknown env 'foo.Bar'"),
        (["train", "demo", "device=cuda:3"] , "cuda"),
    ],
)
def test_cli_errors_exit_2_and_write_nothing(cli, tmp_path, args, fragment):
    td = tmp_path / "td"
    r = cli(*args, f"train_dir={td}", "run=r")
    if "cuda" in fragment:
        import torch

        if torch.cuda.is_available():
            pytest.skip("machine has CUDA")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], r.stderr
    assert not td.exists()


def test_cli_recipes_lists_one_line_each(cli):
    r = cli("recipes")
    assert r.returncode == 0
    lines = r.stdout.strip().splitlines()
    assert any(line.startswith("demo ") for line in lines) and len(lines) == len(list_recipes())


def test_saved_config_round_trips(cli, tmp_path):
    from conftest import tiny

    r = cli("train", *tiny(tmp_path, epochs=1, seed=5))
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg = TrainConfig.model_validate(saved)
    assert cfg.seed == 5 and cfg.run == "t" and cfg.policy.obs_shape == [4] and cfg.policy.core_hidden == 128
