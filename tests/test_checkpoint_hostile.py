"""Hostile and damaged checkpoints, case by case: each found by mutating real files (issue 11).

Every case goes through the same readers: the Python API (``load``), ``ckpt check`` (the report
``check_file`` gives), ``ckpt inspect`` (header only, never a crash), ``fiberlab eval`` and resume.
A refusal is always one line naming the file; ``check`` says what ``load`` does.
"""
from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import pytest
import torch
import zstandard

from fiberlab.checkpoint import CheckpointError, check_file, load, read_manifest, save
from fiberlab.checkpoint import migrate as mig
from fiberlab.checkpoint.format import read_header, read_tensors, write_checkpoint
from fiberlab.cli.ckpt import inspect_summary
from fiberlab.config import PolicyConfig
from fiberlab.policies import build_policy


@pytest.fixture
def good(tmp_path) -> Path:
    torch.manual_seed(0)
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, linear=[16], core_hidden=8))
    opt = torch.optim.Adam(p.parameters(), lr=1e-3)
    (p(torch.randn(2, 3, 4))[0].sum()).backward()
    opt.step()
    spec = {"name": "popgym.X", "obs_shape": [4], "obs_dtype": "float32", "num_actions": 3,
            "feature_names": ["a", "b", "c", "d"], "action_names": ["l", "m", "r"], "obs_scale": [1.0], "agents_per_env": 1}
    return save(tmp_path / "good.safetensors", p, env_spec=spec, progress={"epoch": 2, "agent_step": 64, "wall_time": 1.0},
                           run="r", seed=1, optimizer=opt, torch_rng=torch.get_rng_state())


def split(path: Path) -> tuple[dict, bytes]:
    """(the whole safetensors header as JSON, the data bytes after it)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8: 8 + n]), data[8 + n:]


def forge(path: Path, out: Path, manifest: dict | None = None, header: dict | None = None, data: bytes | None = None) -> Path:
    """``path`` with its manifest and/or header replaced, the data bytes kept (checksum NOT redone:
    this is what an attacker or a flipped byte produces)."""
    h, d = split(path)
    if header is not None:
        h = header
    if manifest is not None:
        h["__metadata__"]["fiberlab"] = json.dumps(manifest)
    raw = json.dumps(h).encode()
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + (d if data is None else data))
    return out


def resealed(path: Path, out: Path, **changes) -> Path:
    """``path`` with manifest fields changed and a fresh, VALID checksum: what a tool that writes
    a wrong manifest correctly would produce. Integrity passes; validation must still refuse."""
    m = {**read_header(path), **changes}
    return write_checkpoint(out, m, read_tensors(path))


def refused(path: Path, match: str) -> str:
    """load refuses with one line naming the file; check agrees (INCOMPATIBLE or UNKNOWN)."""
    with pytest.raises(CheckpointError, match=match) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    report = check_file(path)
    assert report.level in ("INCOMPATIBLE", "UNKNOWN"), report
    try:
        inspect_summary(path)  # header only: shows what it can parse, never a crash
    except CheckpointError as e:  # only a header it cannot parse at all
        assert "\n" not in str(e) and str(e).startswith(str(path))
    return msg


# --------------------------------------------------------------------------- 1. the schema
@pytest.mark.parametrize("version", [0, -1, -(2**63), "3", 2.0, None, [3], True])
def test_bad_format_version_is_one_line(good, tmp_path, version):
    bad = resealed(good, tmp_path / "v.safetensors", format_version=version)
    msg = refused(bad, "format_version")
    assert "1 to 3" in msg
    assert check_file(bad).level == "INCOMPATIBLE"  # not PARTIAL "loads through the upgrade chain"


@pytest.mark.parametrize("field, value, says", [
    ("policy_config", [1, 2], "policy_config"),
    ("policy_config", "mlp_lstm", "policy_config"),
    ("env_spec", [4], "env_spec"),
    ("env_spec", {"name": 5}, "env_spec.name"),
    ("env_spec", {"feature_names": "abcd"}, "env_spec.feature_names"),
    ("env_spec", {"feature_names": [1, 2]}, "env_spec.feature_names.0"),
    ("env_spec", {"num_actions": "3"}, "env_spec.num_actions"),
    ("env_spec", {"num_actions": 0}, "env_spec.num_actions"),
    ("env_spec", {"obs_shape": "4"}, "env_spec.obs_shape"),
    ("env_spec", {"obs_shape": [4, -1]}, "dimension below 1"),
    ("progress", {"epoch": "2", "agent_step": 64}, "progress.epoch"),
    ("progress", {"epoch": -1, "agent_step": 64}, "progress.epoch"),
    ("architecture", None, "architecture"),
    ("run", 7, "run"),
    ("optimizer", {"class": "Adam", "param_groups": [{}], "group_sizes": [99], "param_names": []}, "group_sizes"),
])
def test_wrong_typed_manifest_field_is_one_line(good, tmp_path, field, value, says):
    bad = resealed(good, tmp_path / "t.safetensors", **{field: value})
    msg = refused(bad, "invalid manifest")
    assert says in msg, msg


@pytest.mark.parametrize("key, value", [
    ("name", 5), ("core_hidden", "8"), ("linear", "16"), ("obs_shape", "4"), ("num_actions", [3]),
])
def test_policy_config_value_of_the_wrong_type(good, tmp_path, key, value):
    m = read_header(good)
    bad = resealed(good, tmp_path / "p.safetensors", policy_config={**m["policy_config"], key: value})
    assert "policy config is invalid" in refused(bad, "incompatible")


@pytest.mark.parametrize("key, value", [("core_hidden", 10**9), ("linear", [10**9]), ("obs_shape", [10**9]), ("num_actions", 10**9)])
def test_absurd_widths_are_refused_before_any_allocation(good, tmp_path, key, value):
    """A 1e9 width once made the loader try a 512 GB allocation: the meta-device policy is
    compared with the tensors in the file before anything is allocated."""
    m = read_header(good)
    bad = resealed(good, tmp_path / "w.safetensors", policy_config={**m["policy_config"], key: value})
    refused(bad, "tensors do not match the architecture|cannot build")


def test_obs_scale_of_the_wrong_length_is_refused_at_load(good, tmp_path):
    m = read_header(good)
    bad = resealed(good, tmp_path / "s.safetensors", policy_config={**m["policy_config"], "obs_scale": [1.0, 2.0]})
    assert "obs_scale has 2 values; 1 or obs_shape[0]=4 are allowed" in refused(bad, "policy config is invalid")
    bad = resealed(good, tmp_path / "s2.safetensors", policy_config={**m["policy_config"], "obs_scale": [0.0]})
    refused(bad, "finite positive")


# --------------------------------------------------------------------------- 2. integrity
def test_altered_tensor_bytes_are_refused_unless_verification_is_waived(good, tmp_path):
    h, d = split(good)
    d = bytearray(d)
    d[-40] ^= 0x01  # one bit of the last tensor
    bad = forge(good, tmp_path / "flip.safetensors", data=bytes(d))
    assert "checksum mismatch" in refused(bad, "checksum mismatch")
    assert load(bad, verify=False).policy is not None  # the explicit opt-out


def test_an_edited_manifest_field_breaks_the_checksum(good, tmp_path):
    """Format 3's checksum covers the manifest: a changed obs_scale or epoch is caught too."""
    m = read_header(good)
    bad = forge(good, tmp_path / "m.safetensors", manifest={**m, "policy_config": {**m["policy_config"], "obs_scale": [2.0]}})
    refused(bad, "checksum mismatch")
    bad = forge(good, tmp_path / "e.safetensors", manifest={**m, "progress": {**m["progress"], "epoch": 3}})
    refused(bad, "checksum mismatch")


@pytest.mark.parametrize("how", ["missing", "null"])
def test_missing_checksum_is_partial_and_needs_force(good, tmp_path, how):
    m = read_header(good)
    if how == "missing":
        del m["checksum"]
    else:
        m["checksum"] = None
    bad = forge(good, tmp_path / "nock.safetensors", manifest=m)
    report = check_file(bad)
    assert report.level == "PARTIAL" and any("no checksum recorded" in w for w in report.warnings)
    with pytest.raises(CheckpointError, match="no checksum recorded"):
        load(bad)
    with pytest.warns(UserWarning, match="no checksum recorded"):
        assert load(bad, force=True).policy is not None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_reported_and_refused(tmp_path, value):
    torch.manual_seed(0)
    p = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, linear=[16], core_hidden=8))
    with torch.no_grad():
        p.actor[-1].weight[0, 0] = value
    path = save(tmp_path / "nan.safetensors", p, env_spec={"name": "x"}, progress={"epoch": 1, "agent_step": 1}, run="r", seed=0)
    msg = refused(path, "NaN or infinity")
    assert "policy/actor.0.weight" in msg
    assert any("NaN or infinity" in e for e in check_file(path).errors)


# --------------------------------------------------------------------------- 3. check tells the truth
def test_a_core_the_registry_cannot_build_is_not_full(good, tmp_path):
    m = read_header(good)
    cfg = {**m["policy_config"], "core": "cortex", "core_hidden": None, "pattern": "QQ", "d_hidden": 8, "num_layers": 1}
    bad = resealed(good, tmp_path / "core.safetensors", policy_config=cfg)
    report = check_file(bad)
    assert report.level == "INCOMPATIBLE" and any("cannot build" in e for e in report.errors), report
    refused(bad, "cannot build")


@pytest.mark.parametrize("entry, says", [
    ({"dtype": "F32", "shape": [2], "data_offsets": "0,8"}, "data_offsets"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 10**12]}, "data_offsets span"),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "negative dimension"),
    ({"dtype": "F32", "shape": [10**15, 10**15], "data_offsets": [0, 8]}, "needs"),
    ({"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}, "not a safetensors dtype"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "overlap"),
])
def test_inspect_shows_a_damaged_index_and_says_why(good, tmp_path, entry, says):
    h, d = split(good)
    h["policy/evil"] = entry
    bad = forge(good, tmp_path / "idx.safetensors", header=h)
    info = inspect_summary(bad)  # no crash, the header is shown
    assert info["manifest"]["run"] == "r" and any(t["name"] == "policy/evil" for t in info["tensors"])
    assert any(says in p for p in info["problems"]), info["problems"]
    assert all("\n" not in p for p in info["problems"])
    refused(bad, "corrupt tensor index")


def test_offsets_past_the_end_of_the_file(good, tmp_path):
    h, d = split(good)
    last = max(h[k]["data_offsets"][1] for k in h if k != "__metadata__")
    h["policy/extra"] = {"dtype": "F32", "shape": [4], "data_offsets": [last, last + 16]}
    bad = forge(good, tmp_path / "end.safetensors", header=h)
    assert any("the file holds" in p for p in inspect_summary(bad)["problems"])
    refused(bad, "the file holds")


def test_compressed_file_declaring_a_huge_extra_tensor_writes_nothing(good, tmp_path, monkeypatch):
    """The header already condemns the file: refused before a byte of data is decompressed."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    h, d = split(good)
    last = max(h[k]["data_offsets"][1] for k in h if k != "__metadata__")
    huge = 8 << 30  # 8 GiB declared
    h["policy/huge"] = {"dtype": "U8", "shape": [huge], "data_offsets": [last, last + huge]}
    raw = json.dumps(h).encode()
    plain = struct.pack("<Q", len(raw)) + raw + d + bytes(1 << 20)
    bad = tmp_path / "huge.safetensors.zst"
    bad.write_bytes(zstandard.ZstdCompressor(level=1).compress(plain))
    msg = refused(bad, "unexpected tensor 'policy/huge'")
    assert "tensors do not match the architecture" in msg
    assert list(scratch.iterdir()) == []


def test_migrate_reports_a_corrupt_current_file_as_failed(good, tmp_path):
    h, d = split(good)
    bad = forge(good, tmp_path / "bad.safetensors", data=d[:-4] + b"\x00\x01\x02\x03")
    (r,) = mig.migrate(bad).results
    assert r.status == "failed" and "checksum mismatch" in r.reason
    (r,) = mig.migrate(good).results
    assert (r.status, r.reason) == ("skipped", "already current")


def test_deeply_nested_header_in_migrate_is_one_line(tmp_path):
    body = b"[" * 200_000 + b"]" * 200_000
    f = tmp_path / "nested.safetensors"
    f.write_bytes(struct.pack("<Q", len(body)) + body)
    (r,) = mig.migrate(f).results
    assert r.status == "failed" and "Recursion" not in r.reason and "\n" not in r.reason
    nested = forge_nested_manifest(tmp_path)
    (r,) = mig.migrate(nested).results
    assert r.status == "failed" and "Recursion" not in r.reason
    refused(nested, "manifest is not valid JSON")


def forge_nested_manifest(tmp_path: Path) -> Path:
    text = '{"format_version": 3, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    raw = json.dumps({"__metadata__": {"fiberlab": text}}).encode()
    out = tmp_path / "nested_manifest.safetensors"
    out.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return out


def test_read_manifest_returns_the_validated_model(good):
    m = read_manifest(good)
    assert m.progress.agent_step == 64 and m.env_spec.action_names == ["l", "m", "r"] and m.optimizer.class_ == "Adam"
    assert m.as_dict() == read_header(good)


def test_resume_skips_a_newest_checkpoint_with_a_bad_version(tmp_path):
    """The trainer resumes from the newest checkpoint that loads; a bad newest one is skipped."""
    from conftest import tiny

    from fiberlab.config import apply_overrides
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.run_dir import list_checkpoints
    from fiberlab.rl.trainer import Trainer

    args = tiny(tmp_path, epochs=2)
    Trainer(apply_overrides(get_recipe(args[0]), args[1:])).train()
    (e1, _, first), (e2, _, newest) = list_checkpoints(tmp_path / "t")
    forge(newest, newest, manifest={**read_header(newest), "format_version": 0})
    args = tiny(tmp_path, epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Trainer(apply_overrides(get_recipe(args[0]), args[1:])).train()
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # resumed after epoch 1, retrained 2 and 3
    assert result.last_checkpoint is not None and read_manifest(result.last_checkpoint).progress.epoch == 3


# --------------------------------------------------------------------------- the command line
@pytest.fixture
def demo_ckpt(tmp_path) -> Path:
    """A checkpoint of the demo recipe's policy, with its run config, so ``fiberlab eval`` can
    rebuild the env (no training needed)."""
    from fiberlab.cli.ckpt import env_spec_of_recipe
    from fiberlab.recipes import get_recipe

    cfg = get_recipe("demo")
    spec = env_spec_of_recipe("demo")
    torch.manual_seed(0)
    p = build_policy(cfg.policy.model_copy(update={"obs_shape": list(spec.obs_shape), "num_actions": spec.num_actions, "obs_scale": list(spec.obs_scale)}))
    return save(tmp_path / "demo.safetensors", p, env_spec=spec.to_dict(), progress={"epoch": 1, "agent_step": 1}, run="d", seed=1, config=cfg.model_dump())


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from fiberlab.cli.main import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), err


def test_cli_eval_refuses_altered_and_non_finite_files_in_one_line(demo_ckpt, tmp_path, capsys):
    code, out, err = run_cli(capsys, "eval", str(demo_ckpt), "episodes=1", "env.num_envs=2")
    assert code == 0, err
    h, d = split(demo_ckpt)
    d = bytearray(d)
    d[-7] ^= 0x20
    flipped = forge(demo_ckpt, tmp_path / "flipped.safetensors", data=bytes(d))
    code, out, err = run_cli(capsys, "eval", str(flipped), "episodes=1", "env.num_envs=2")
    assert code == 2 and out == ""
    one_line(err, str(flipped), "checksum mismatch")
    ck = load(demo_ckpt)
    with torch.no_grad():
        ck.policy.actor[-1].bias.fill_(math.nan)
    nan = save(tmp_path / "nan.safetensors", ck.policy, env_spec=ck.manifest.env_spec.model_dump(), progress={"epoch": 1, "agent_step": 1},
                          run="d", seed=1, config=ck.manifest.config)
    code, out, err = run_cli(capsys, "eval", str(nan), "episodes=1", "env.num_envs=2")
    assert code == 2
    one_line(err, "NaN or infinity")
    version0 = resealed(demo_ckpt, tmp_path / "v0.safetensors", format_version=0)
    code, out, err = run_cli(capsys, "eval", str(version0))
    assert code == 2
    one_line(err, "format_version=0")


def test_cli_check_inspect_migrate_on_damaged_files(demo_ckpt, tmp_path, capsys):
    version0 = resealed(demo_ckpt, tmp_path / "v0.safetensors", format_version=0)
    code, out, err = run_cli(capsys, "ckpt", "check", str(version0))
    assert code == 1 and "INCOMPATIBLE" in out and "format_version=0" in out and err == ""
    h, d = split(demo_ckpt)
    name = next(k for k in h if k != "__metadata__")
    h[name]["data_offsets"] = "0,8"
    bad_index = forge(demo_ckpt, tmp_path / "idx.safetensors", header=h)
    code, out, err = run_cli(capsys, "ckpt", "inspect", str(bad_index))
    assert code == 0 and err == "" and "architecture mlp_lstm" in out
    assert f"will not load: tensor {name!r}: data_offsets" in out
    code, out, err = run_cli(capsys, "ckpt", "inspect", str(bad_index), "--json")
    assert code == 0 and json.loads(out)["problems"]
    code, out, err = run_cli(capsys, "ckpt", "migrate", str(bad_index), "--no-backup")
    assert code == 1 and "failed" in out and "corrupt tensor index" in out
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(capsys, "ckpt", "migrate", str(version0), "--no-backup")
    assert code == 1 and "failed" in out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "migration_report.json") == [n for n in before if n != "migration_report.json"]
