"""Compatibility levels, by-name remapping on load, checksums, and the ckpt inspect/check CLI."""
import json
import warnings

import pytest
import torch

from fiberlab.checkpoint import CheckpointError, load, read_manifest, save
from fiberlab.checkpoint.compat import check_compatibility
from fiberlab.checkpoint.reader import check_file
from fiberlab.checkpoint.format import read_header, read_tensors, write_checkpoint
from fiberlab.config import PolicyConfig
from fiberlab.envs.base import EnvSpec
from fiberlab.policies import build_policy

FEATURES = ("hp", "x", "y", "goal", "key")
ACTIONS = ("noop", "up", "down", "left")


def spec(features=FEATURES, actions=ACTIONS, shape=None, dtype="float32"):
    return EnvSpec(name="toy", obs_shape=shape or (len(features),), obs_dtype=dtype, num_actions=len(actions), feature_names=tuple(features), action_names=tuple(actions))


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[5], num_actions=4, linear=[16], core_hidden=8))
    with torch.no_grad():  # make the actor's rows distinct enough that a wrong mapping shows
        p.actor[-1].weight.normal_()
    path = save(tmp_path / "c__e1__s10.safetensors", p, env_spec=spec().to_dict(), progress={"epoch": 1, "agent_step": 10}, run="c", seed=0)
    return p, path


def rewrite(path, out, **changes):
    m = read_header(path)
    for k, v in changes.items():
        m[k] = v
    t = read_tensors(path)
    return write_checkpoint(out, m, t)


def test_same_spec_is_full(ckpt):
    _, path = ckpt
    r = check_compatibility(read_manifest(path), spec())
    assert r.level == "FULL" and not r.errors and not r.warnings and r.remap is None


def test_permuted_features_and_actions_act_identically(ckpt):
    policy, path = ckpt
    f_perm, a_perm = [3, 0, 4, 1, 2], [2, 0, 3, 1]
    env = spec([FEATURES[i] for i in f_perm], [ACTIONS[i] for i in a_perm])
    with pytest.warns(UserWarning, match="partially compatible"):
        ck = load(path, env_spec=env)
    assert ck.report.level == "PARTIAL"
    obs = torch.randn(3, 7, 5)
    resets = torch.zeros(3, 7, dtype=torch.bool)
    resets[1, 4] = True
    with torch.no_grad():
        logits, values, _ = policy(obs, None, resets)
        logits2, values2, _ = ck.policy(obs[..., f_perm], None, resets)
    torch.testing.assert_close(logits2, logits[..., a_perm])
    torch.testing.assert_close(values2, values)


def test_renamed_feature_maps_by_position_with_warning(ckpt):
    _, path = ckpt
    r = check_compatibility(read_manifest(path), spec(("hp", "x", "y", "target", "key")))
    assert r.level == "PARTIAL" and any("goal->target" in w for w in r.warnings)


def test_action_subset_and_superset(ckpt):
    policy, path = ckpt
    obs = torch.randn(2, 3, 5)
    with torch.no_grad():
        ref, _, _ = policy(obs)
    with pytest.warns(UserWarning):
        sub = load(path, env_spec=spec(actions=("down", "noop"))).policy
    with torch.no_grad():
        torch.testing.assert_close(sub(obs)[0], ref[..., [2, 0]])
    with pytest.warns(UserWarning, match="never chosen: jump"):
        sup = load(path, env_spec=spec(actions=("noop", "up", "jump", "down", "left"))).policy
    with torch.no_grad():
        logits = sup(obs)[0]
    torch.testing.assert_close(logits[..., [0, 1, 3, 4]], ref)
    assert torch.softmax(logits, -1)[..., 2].max() == 0.0


@pytest.mark.parametrize(
    "env, fragment",
    [
        (spec(features=FEATURES + ("extra",)), "observation shape"),
        (spec(dtype="uint8"), "observation dtype"),
        (spec(actions=("a", "b", "c", "d", "e")), "cannot be mapped"),
    ],
)
def test_incompatible_env_is_refused_unless_forced(ckpt, env, fragment):
    _, path = ckpt
    r = check_compatibility(read_manifest(path), env)
    assert r.level == "INCOMPATIBLE" and any(fragment in e for e in r.errors) and r.recommendations
    with pytest.raises(CheckpointError, match=fragment):
        load(path, env_spec=env)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load(path, env_spec=env, force=True).policy is not None


def test_versions_and_architecture_rules(ckpt, tmp_path):
    _, path = ckpt
    m = read_header(path)
    newer = check_compatibility({**m, "format_version": 99})
    assert newer.level == "INCOMPATIBLE" and any("upgrade fiberlab" in r for r in newer.recommendations)
    older = check_compatibility({**m, "format_version": 1}, path=path)
    assert older.level == "PARTIAL" and any(f"fiberlab ckpt migrate {path}" in r for r in older.recommendations)
    unknown = check_compatibility({**m, "architecture": "transformer_9000"})
    assert unknown.level == "INCOMPATIBLE"
    cfg = dict(m["policy_config"])
    del cfg["core"]  # as if written before the field existed
    added = check_compatibility({**m, "policy_config": cfg})
    assert added.level == "PARTIAL" and any("core='lstm'" in w for w in added.warnings)
    future = check_compatibility({**m, "policy_config": {**m["policy_config"], "quantum": True}})
    assert future.level == "INCOMPATIBLE"


def test_checksum_detects_a_flipped_tensor_byte(ckpt, tmp_path):
    _, path = ckpt
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    r = check_file(bad)
    assert r.level == "INCOMPATIBLE" and any("checksum mismatch" in e for e in r.errors)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load(bad)
    good = check_file(path)
    assert good.level == "FULL"


def test_cli_inspect_reads_only_the_header(cli, ckpt, tmp_path):
    _, path = ckpt
    r = cli("ckpt", "inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["policy_parameters"] == sum(p.numel() for p in ckpt[0].parameters())
    assert any(t["name"] == "policy/core.lstm.weight_ih_l0" and t["shape"] == [32, 16] for t in info["tensors"])
    # with the tensor data cut away, inspect still works (header only) while loading fails
    n = int.from_bytes(path.read_bytes()[:8], "little")
    cut = tmp_path / "headeronly.safetensors"
    cut.write_bytes(path.read_bytes()[: 8 + n + 4])
    r = cli("ckpt", "inspect", str(cut))
    assert r.returncode == 0 and "architecture mlp_lstm" in r.stdout
    assert "will not load: tensor data is" in r.stdout  # and it says why loading fails
    with pytest.raises(CheckpointError):
        load(cut)


def test_cli_check_levels_and_exit_codes(cli, tmp_path):
    from conftest import tiny

    assert cli("train", *tiny(tmp_path, epochs=1)).returncode == 0
    ck = next((tmp_path / "t" / "checkpoints").iterdir())
    r = cli("ckpt", "check", str(ck), "--env", "demo", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["level"] == "FULL"
    r = cli("ckpt", "check", str(ck), "--env", "popgym.RepeatFirstEasy")  # same interface, other task
    assert r.returncode == 0 and "PARTIAL" in r.stdout and "trained on popgym.RepeatPreviousEasy" in r.stdout
    r = cli("ckpt", "check", str(ck), "--env", "beam_rider")
    assert r.returncode == 1 and "INCOMPATIBLE" in r.stdout and "observation shape" in r.stdout
    junk = tmp_path / "model_000050.pt"
    junk.write_bytes(b"\x80\x04not really a pickle")
    r = cli("ckpt", "check", str(junk), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["level"] == "UNKNOWN" and any("fiberlab ckpt migrate" in x for x in out["recommendations"])
    r = cli("ckpt", "check", str(ck), "--env", "nonsense")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_eval_of_a_migrated_file_needs_the_env_named(cli, tmp_path):
    from fiberlab.checkpoint.migrate import migrate

    torch.manual_seed(0)
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=4))
    src = tmp_path / "model_000050.pt"
    torch.save(p.state_dict(), src)
    (res,) = migrate(src).results
    assert res.status == "migrated", res.reason
    r = cli("eval", res.output, "episodes=2")
    assert r.returncode == 2 and "env.name=" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("eval", res.output, "episodes=2", "env.name=popgym.RepeatPreviousEasy", "env.num_envs=2")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["episodes"] == 2
