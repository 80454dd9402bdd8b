import json
import struct

import pytest
import torch

from fiberlab.checkpoint import FORMAT_VERSION, CheckpointError, load, read_manifest, save
from fiberlab.checkpoint.format import read_header
from fiberlab.config import PolicyConfig
from fiberlab.policies import build_policy


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3))
    opt = torch.optim.Adam(p.parameters(), lr=1e-3)
    loss = sum(x.sum() for x in p(torch.randn(2, 3, 4))[:2])
    loss.backward()
    opt.step()
    path = save(tmp_path / "r__e3__s99.safetensors", p, env_spec={"name": "x"}, progress={"epoch": 3, "agent_step": 99, "wall_time": 1.0}, run="r", seed=7, optimizer=opt, torch_rng=torch.get_rng_state())
    return p, opt, path


def test_round_trip_policy_optimizer_and_manifest(saved):
    p, opt, path = saved
    m = read_manifest(path)
    assert m.format_version == FORMAT_VERSION and m.checksum.startswith("sha256:") and m.architecture == "mlp_lstm" and m.progress.agent_step == 99 and m.seed == 7
    assert m.torch_version == torch.__version__.split("+")[0]
    ck = load(path)
    for (k, a), (_, b) in zip(p.state_dict().items(), ck.policy.state_dict().items()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.Adam(ck.policy.parameters(), lr=5.0)
    ck.load_optimizer(opt2)
    assert opt2.param_groups[0]["lr"] == 1e-3
    for s1, s2 in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])


def test_no_pickle_in_file(saved):
    _, _, path = saved
    data = path.read_bytes()
    assert b"\x80\x04" not in data[:16] and data[8:9] == b"{"  # safetensors: length then JSON header


def test_no_temp_file_left(saved):
    _, _, path = saved
    assert [f.name for f in path.parent.iterdir()] == [path.name]


def test_truncated_file_is_one_line_error(saved, tmp_path):
    _, _, path = saved
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as e:
            load(bad)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_header_that_lies_about_its_size(saved, tmp_path):
    _, _, path = saved
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 2**60)
    bad = tmp_path / "lie.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="header claims"):
        read_manifest(bad)


def test_not_a_checkpoint(tmp_path):
    f = tmp_path / "notes.safetensors"
    f.write_text("hello world, this is not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load(f)
    from safetensors.torch import save_file

    g = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(g))
    with pytest.raises(CheckpointError, match="no 'fiberlab' manifest"):
        load(g)


def test_unknown_architecture_in_file_is_refused(saved, tmp_path):
    _, _, path = saved
    from safetensors.torch import load_file, save_file

    m = read_header(path)
    m["architecture"] = m["policy_config"]["name"] = "evil.Module"
    bad = tmp_path / "evil.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"fiberlab": json.dumps(m)})
    with pytest.raises(CheckpointError, match="architecture 'evil.Module' is unknown"):
        load(bad)
    m["architecture"] = "mlp_lstm"
    save_file(load_file(str(path)), str(bad), metadata={"fiberlab": json.dumps(m)})
    with pytest.raises(CheckpointError, match="policy config is invalid: name='evil.Module'"):
        load(bad)


def test_newer_format_version_is_refused(saved, tmp_path):
    _, _, path = saved
    from safetensors.torch import load_file, save_file

    m = read_header(path)
    m["format_version"] = 99
    bad = tmp_path / "new.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={"fiberlab": json.dumps(m)})
    with pytest.raises(CheckpointError, match="upgrade fiberlab"):
        read_manifest(bad)


def test_cli_eval_on_corrupt_checkpoint(cli, saved, tmp_path):
    _, _, path = saved
    bad = tmp_path / "half.safetensors"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    r = cli("eval", str(bad))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "corrupt" in r.stderr


def test_deeply_nested_header_is_a_checkpoint_error(tmp_path):
    body = b"[" * 200_000 + b"]" * 200_000
    f = tmp_path / "nested.safetensors"
    f.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_manifest(f)
