"""The ckpt compress / decompress / bench / migrate commands, end to end through the CLI."""
import json

import torch

from fiberlab.checkpoint import load, save
from fiberlab.config import PolicyConfig
from fiberlab.policies import build_policy


def _ckpt(path):
    torch.manual_seed(0)
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3))
    return save(path, p, env_spec={"name": "x"}, progress={"epoch": 1, "agent_step": 1}, run="r", seed=0)


def test_compress_decompress_directory_round_trip(cli, tmp_path):
    d = tmp_path / "ckpts"
    a = _ckpt(d / "a.safetensors")
    _ckpt(d / "b.safetensors")
    original = a.read_bytes()
    weights = load(a).policy.state_dict()
    r = cli("ckpt", "compress", str(d), "--method", "zstd", "--shuffle", "--remove-originals")
    assert r.returncode == 0, r.stderr
    assert sorted(f.name for f in d.iterdir()) == ["a.safetensors.zst", "b.safetensors.zst"]
    assert r.stdout.count("ok") == 2
    # loads straight from the compressed file
    loaded = load(d / "a.safetensors.zst").policy.state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
    r = cli("ckpt", "decompress", str(d), "--remove-originals")
    assert r.returncode == 0, r.stderr
    assert (d / "a.safetensors").read_bytes() == original and not (d / "a.safetensors.zst").exists()
    r = cli("ckpt", "compress", str(d / "nope"), "--method", "zstd")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = cli("ckpt", "compress", str(d), "--method", "brotli")
    assert r.returncode == 2


def test_bench_prints_every_method(cli, tmp_path):
    path = _ckpt(tmp_path / "c.safetensors")
    r = cli("ckpt", "bench", str(path), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {row["method"] for row in rows} == {"gzip", "lz4", "zstd"}
    assert all(0 < row["ratio"] <= 1.05 and row["compress_mb_s"] > 0 for row in rows)


def test_migrate_flags_before_and_after_input(cli, tmp_path):
    torch.manual_seed(0)
    src = tmp_path / "model_000050.pt"
    torch.save(build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3)).state_dict(), src)
    r = cli("ckpt", "migrate", "--no-backup", str(src))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "model_000050.safetensors").exists() and not list(tmp_path.glob("*.bak*"))
    r = cli("ckpt", "migrate", str(src), "-v")  # second run: nothing to do
    assert r.returncode == 0 and "skipped" in r.stdout
