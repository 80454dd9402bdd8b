"""``fiberlab ckpt migrate``: every detected kind end to end, the pickle refusal, batches,
idempotence, backups, interruption and the command line."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fiberlab.checkpoint import FORMAT_VERSION, CheckpointError, load, read_manifest, save
from fiberlab.checkpoint import migrate as mig
from fiberlab.checkpoint.base import checksum, file_sha256, tensor_checksum
from fiberlab.checkpoint.format import read_header, read_tensors, write_checkpoint
from fiberlab.checkpoint.legacy_layouts import map_state_dict
from fiberlab.cli.main import main as cli_main
from fiberlab.config import PolicyConfig
from fiberlab.policies import build_policy, resolve

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "v1_mlp_lstm.safetensors"
FIXTURE_V2 = ROOT / "tests" / "fixtures" / "v2_mlp_lstm.safetensors"

# Small widths of each architecture (every width differs from the defaults, so inference is tested).
FAST = dict(name="fast", obs_shape=[5, 11, 11], num_actions=4, conv_channels=[6, 7], linear=[9, 10], core_hidden=8, actor_hidden=[12], critic_hidden=[11])
ATARI = dict(name="atari", obs_shape=[1, 105, 80], num_actions=6, conv_channels=[4, 5, 6], linear=[16], core_hidden=8)
MLP = dict(name="mlp_lstm", obs_shape=[7], num_actions=3, linear=[8, 6], core_hidden=5)
SCALE = {"fast": None, "atari": [255.0], "mlp_lstm": None}


def policy_of(cfg: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_policy(cfg)


def adam_after_a_step(model: nn.Module, x: torch.Tensor, forward) -> torch.optim.Adam:
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, eps=1e-5)
    for _ in range(2):
        opt.zero_grad()
        sum(o.square().mean() for o in forward(model, x)).backward()
        opt.step()
    return opt


def same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def migrate_cli(argv: list[str]) -> int:
    """``fiberlab ckpt migrate ARGV`` in-process: its exit code (printing as the command does)."""
    return cli_main(["ckpt", "migrate", *argv])


def snapshot(d: Path, skip: str = "") -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file() and p.name != skip}


# --------------------------------------------------------------------------- external layouts
# Written from the parameter names of PufferLib's Atari policy (LSTM wrapper around a conv policy,
# with an LSTMCell tied to the LSTM for acting) and Metta's Fast component policy, so the mapping
# is tested on the names those libraries' state dicts carry.
class PufferAtari(nn.Module):
    def __init__(self, num_actions: int, ch=(4, 5, 6), hidden=16, core=8) -> None:
        super().__init__()
        self.policy = nn.Module()
        self.policy.network = nn.Sequential(
            nn.Conv2d(1, ch[0], 8, stride=4), nn.ReLU(), nn.Conv2d(ch[0], ch[1], 4, stride=2), nn.ReLU(),
            nn.Conv2d(ch[1], ch[2], 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(ch[2] * 6 * 9, hidden), nn.ReLU(),
        )
        self.policy.actor = nn.Linear(core, num_actions)
        self.policy.value_fn = nn.Linear(core, 1)
        self.lstm = nn.LSTM(hidden, core)
        self.cell = nn.LSTMCell(hidden, core)
        self.cell.weight_ih, self.cell.weight_hh = self.lstm.weight_ih_l0, self.lstm.weight_hh_l0
        self.cell.bias_ih, self.cell.bias_hh = self.lstm.bias_ih_l0, self.lstm.bias_hh_l0

    def step(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, _ = self.cell(self.policy.network(obs.float() / 255.0))
        return self.policy.actor(h), self.policy.value_fn(h).squeeze(-1)


class _Layer(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._net = net


class MettaFast(nn.Module):
    def __init__(self, channels: int = 5, num_actions: int = 4) -> None:
        super().__init__()
        c = nn.ModuleDict()
        norm = nn.Module()
        norm.register_buffer("obs_norm", torch.arange(1.0, channels + 1).view(1, channels, 1, 1))
        c["obs_normalizer"] = norm
        c["cnn1"] = _Layer(nn.Sequential(nn.Conv2d(channels, 6, 5, stride=3), nn.ReLU()))
        c["cnn2"] = _Layer(nn.Sequential(nn.Conv2d(6, 7, 3, stride=1), nn.ReLU()))
        c["fc1"] = _Layer(nn.Sequential(nn.Linear(7, 9), nn.ReLU()))
        c["encoded_obs"] = _Layer(nn.Sequential(nn.Linear(9, 10), nn.ReLU()))
        core = nn.Module()
        core.lstm = nn.LSTM(10, 8)
        c["_core_"] = core
        c["critic_1"] = _Layer(nn.Sequential(nn.Linear(8, 11), nn.Tanh()))
        c["_value_"] = _Layer(nn.Linear(11, 1))
        c["actor_1"] = _Layer(nn.Sequential(nn.Linear(8, 12), nn.ReLU()))
        c["_action_"] = _Layer(nn.Linear(12, num_actions))
        self.components = c

    def step(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.components
        x = obs.float() / c["obs_normalizer"].obs_norm
        x = c["encoded_obs"]._net(c["fc1"]._net(c["cnn2"]._net(c["cnn1"]._net(x)).flatten(1)))
        h, _ = c["_core_"].lstm(x.unsqueeze(0))
        h = h[0]
        return c["_action_"]._net(c["actor_1"]._net(h)), c["_value_"]._net(c["critic_1"]._net(h)).squeeze(-1)


class Evil:
    """A pickle that creates a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------- raw state dicts
@pytest.mark.parametrize("cfg", [FAST, ATARI, MLP], ids=lambda c: c["name"])
def test_raw_state_dict_of_each_architecture(tmp_path, cfg):
    p = policy_of(cfg)
    src = tmp_path / "weights.pt"
    torch.save(p.state_dict(), src)
    assert mig.detect_kind(src) == mig.STATE_DICT
    summary = mig.migrate(src)
    (r,) = summary.results
    assert (r.status, r.kind, r.layout) == ("migrated", "state_dict", "fiberlab"), r.reason
    out = tmp_path / "weights.safetensors"
    assert r.output == str(out) and out.is_file()
    ck = load(out)
    same_weights(ck.policy, p)
    expected = resolve(PolicyConfig(**cfg)).model_dump()
    got = ck.policy.config.model_dump()
    assert {k: v for k, v in got.items() if k != "obs_scale"} == {k: v for k, v in expected.items() if k != "obs_scale"}
    assert got["obs_scale"] == SCALE[cfg["name"]]
    m = read_manifest(out).as_dict()
    assert m["format_version"] == FORMAT_VERSION and m["architecture"] == cfg["name"]
    assert m["migrated_from"] == {"path": str(src), "kind": "state_dict", "sha256": file_sha256(src), "layout": "fiberlab"}
    assert m["env_spec"]["name"] == "unknown" and m["env_spec"]["num_actions"] == cfg["num_actions"]
    assert m["progress"] == {"epoch": 0, "agent_step": 0, "wall_time": 0.0} and "optimizer" not in m
    assert any("epoch unknown" in w for w in r.warnings)
    x = torch.zeros(2, *cfg["obs_shape"])
    torch.testing.assert_close(ck.policy.step(x)[0], p.step(x)[0])


def test_training_save_restores_adam_exactly(tmp_path):
    p = policy_of(MLP)
    opt = adam_after_a_step(p, torch.randn(2, 3, 7), lambda m, x: m(x)[:2])
    src = tmp_path / "train.pt"
    torch.save({"model": p.state_dict(), "optimizer": opt.state_dict(), "epoch": 7, "agent_step": 1234, "wall_time": 5.5, "seed": 3}, src)
    assert mig.detect_kind(src) == mig.TRAINING_SAVE
    (r,) = mig.migrate(src, tmp_path / "out" / "ck.safetensors").results
    assert r.status == "migrated" and not [w for w in r.warnings if "optimizer" in w], r
    ck = load(tmp_path / "out" / "ck.safetensors")
    m = ck.manifest.as_dict()
    assert m["progress"] == {"epoch": 7, "agent_step": 1234, "wall_time": 5.5} and m["seed"] == 3 and m["run"] == "train"
    same_weights(ck.policy, p)
    opt2 = torch.optim.Adam(ck.policy.parameters(), lr=1.0)
    ck.load_optimizer(opt2)
    a, b = opt.state_dict(), opt2.state_dict()
    assert json.loads(json.dumps(a["param_groups"])) == json.loads(json.dumps(b["param_groups"]))
    for i in a["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][i][key], b["state"][i][key]), (i, key)


def test_pufferlib_model_file_with_trainer_state(tmp_path):
    torch.manual_seed(1)
    puffer = PufferAtari(num_actions=6)
    obs = torch.randint(0, 256, (3, 1, 105, 80), dtype=torch.uint8)
    opt = adam_after_a_step(puffer, obs, lambda m, x: m.step(x))
    run = tmp_path / "puffrun"
    run.mkdir()
    torch.save(puffer.state_dict(), run / "model_000050.pt")
    torch.save({"optimizer_state_dict": opt.state_dict(), "global_step": 5000, "agent_step": 5000, "update": 50,
                "model_name": "model_000050.pt", "run_id": "puffrun"}, run / "trainer_state.pt")
    assert mig.detect_kind(run / "trainer_state.pt") == mig.TRAINER_STATE
    summary = mig.migrate(run)
    by_name = {Path(r.path).name: r for r in summary.results}
    assert by_name["model_000050.pt"].status == "migrated" and by_name["model_000050.pt"].layout == "pufferlib_atari"
    assert by_name["trainer_state.pt"].status == "skipped"
    ck = load(run / "model_000050.safetensors")
    m = ck.manifest.as_dict()
    assert m["architecture"] == "atari" and m["policy_config"]["obs_shape"] == [1, 105, 80] and m["policy_config"]["obs_scale"] == [255.0]
    assert m["progress"]["epoch"] == 50 and m["progress"]["agent_step"] == 5000 and m["run"] == "puffrun"
    assert m["migrated_from"]["name_convention"] == "pufferlib"
    # Same function: logits and values of the PufferLib layout equal fiberlab's.
    with torch.no_grad():
        want_logits, want_values = puffer.step(obs)
        got_logits, got_values, _ = ck.policy.step(obs)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_values, want_values, atol=1e-5, rtol=1e-4)
    # Adam state moved from PufferLib's parameter order to fiberlab's, value for value.
    opt2 = torch.optim.Adam(ck.policy.parameters())
    ck.load_optimizer(opt2)
    src_names = [n for n, _ in puffer.named_parameters()]
    ours = dict(ck.policy.named_parameters())
    _, key_map, _, _ = map_state_dict(puffer.state_dict())
    for i, n in enumerate(src_names):
        mine = opt2.state[ours[key_map[n]]]
        assert torch.equal(mine["exp_avg"], opt.state_dict()["state"][i]["exp_avg"]), n
        assert torch.equal(mine["exp_avg_sq"], opt.state_dict()["state"][i]["exp_avg_sq"]), n


def test_metta_named_file_with_fast_layout(tmp_path):
    torch.manual_seed(2)
    metta = MettaFast()
    src = tmp_path / "myrun__e12__s3456__t78__sc12345.pt"
    torch.save(metta.state_dict(), src)
    (r,) = mig.migrate(src).results
    assert (r.status, r.layout) == ("migrated", "metta_fast"), r.reason
    ck = load(tmp_path / "myrun__e12__s3456__t78__sc12345.safetensors")
    m = ck.manifest.as_dict()
    assert m["run"] == "myrun" and m["progress"] == {"epoch": 12, "agent_step": 3456, "wall_time": 78.0, "score": 1.2345}
    assert m["architecture"] == "fast" and m["policy_config"]["obs_shape"] == [5, 11, 11]
    assert m["policy_config"]["obs_scale"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    obs = torch.randint(0, 20, (3, 5, 11, 11), dtype=torch.uint8)
    with torch.no_grad():
        want_logits, want_values = metta.step(obs)
        got_logits, got_values, _ = ck.policy.step(obs)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_values, want_values, atol=1e-5, rtol=1e-4)


def test_policy_record_dict_and_safetensors_state_dict(tmp_path):
    from safetensors.torch import save_file

    p = policy_of(MLP)
    rec = tmp_path / "rec.pt"
    torch.save({"policy": p.state_dict(), "metadata": {"epoch": 4, "agent_step": 40, "score": 0.5}, "run_name": "r"}, rec)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in p.state_dict().items()}, str(plain))
    original = plain.read_bytes()
    assert mig.detect_kind(rec) == mig.POLICY_RECORD and mig.detect_kind(plain) == mig.SAFETENSORS
    results = {Path(r.path).name: r for r in mig.migrate(tmp_path).results}
    assert results["rec.pt"].status == "migrated" and results["plain.safetensors"].status == "migrated"
    assert read_manifest(tmp_path / "rec.safetensors").as_dict()["progress"] == {"epoch": 4, "agent_step": 40, "wall_time": 0.0, "score": 0.5}
    assert results["plain.safetensors"].output == str(plain)  # in place, the original kept as .bak
    assert (tmp_path / "plain.safetensors.bak").read_bytes() == original
    same_weights(load(plain).policy, p)


# --------------------------------------------------------------------------- fiberlab versions
def test_v1_fixture_loads_and_migrates_in_place(tmp_path):
    stored = read_header(FIXTURE)
    assert stored["format_version"] == 1 and "checksum" not in stored
    with pytest.raises(CheckpointError, match="no checksum recorded"):  # v1 had none: nothing vouches for its tensors
        load(FIXTURE)
    with pytest.warns(UserWarning, match="format version 1 is older"):
        old = load(FIXTURE, force=True)  # upgraded v1 -> current in memory, reported PARTIAL
    assert old.report.level == "PARTIAL" and any("fiberlab ckpt migrate" in r for r in old.report.recommendations)
    assert old.manifest.format_version == FORMAT_VERSION and old.manifest.checksum.startswith("sha256:")
    path = tmp_path / "v1.safetensors"
    shutil.copy(FIXTURE, path)
    assert mig.detect_kind(path) == "fiberlab_v1"
    (r,) = mig.migrate(path).results
    assert (r.status, r.kind, r.output, r.backup) == ("migrated", "fiberlab_v1", str(path), str(path) + ".bak"), r.reason
    assert (tmp_path / "v1.safetensors.bak").read_bytes() == FIXTURE.read_bytes()
    new = load(path)
    assert new.report.level == "FULL"
    assert new.manifest == old.manifest  # on disk exactly what the chain gives in memory
    same_weights(new.policy, old.policy)
    assert new.optimizer_state.keys() == old.optimizer_state.keys()
    assert checksum(read_header(path), read_tensors(path)) == read_manifest(path).checksum
    assert mig.migrate(path).results[0].status == "skipped"


def test_v2_fixture_is_verified_then_upgraded(tmp_path):
    """Format 2's checksum covers the tensors only: it is verified by its own rule, then the
    chain writes format 3's, which covers the manifest too."""
    stored = read_header(FIXTURE_V2)
    assert stored["format_version"] == 2 and stored["checksum"] == tensor_checksum(read_tensors(FIXTURE_V2))
    with pytest.warns(UserWarning, match="format version 2 is older"):
        old = load(FIXTURE_V2)  # verified, no force needed
    assert old.manifest.format_version == FORMAT_VERSION and old.manifest.checksum != stored["checksum"]
    bad = tmp_path / "v2_bad.safetensors"
    data = bytearray(FIXTURE_V2.read_bytes())
    data[-5] ^= 0x10  # a tensor byte
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load(bad)
    (r,) = mig.migrate(bad).results
    assert r.status == "failed" and "checksum mismatch" in r.reason
    path = tmp_path / "v2.safetensors"
    shutil.copy(FIXTURE_V2, path)
    (r,) = mig.migrate(path, backup=False).results
    assert r.status == "migrated", r.reason
    new = load(path)
    assert new.report.level == "FULL" and new.manifest == old.manifest
    same_weights(new.policy, old.policy)


def test_newer_format_and_corrupt_old_file_fail(tmp_path):
    manifest, tensors = read_header(FIXTURE), read_tensors(FIXTURE)
    newer = tmp_path / "newer.safetensors"
    write_checkpoint(newer, {**manifest, "format_version": FORMAT_VERSION + 1}, tensors)
    (r,) = mig.migrate(newer).results
    assert r.status == "failed" and "newer" in r.reason
    # A future older version with a checksum: a corrupt one is refused, not re-blessed.
    bad = tmp_path / "bad.safetensors"
    write_checkpoint(bad, manifest, tensors)
    hdr = read_header(bad)
    from safetensors.torch import save_file

    t2 = dict(tensors)
    t2["policy/actor.0.bias"] = t2["policy/actor.0.bias"] + 1
    save_file(t2, str(bad), metadata={"fiberlab": json.dumps({**hdr, "format_version": 1})})
    (r,) = mig.migrate(bad).results
    assert r.status == "failed" and "checksum mismatch" in r.reason


# --------------------------------------------------------------------------- pickles
def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save(Evil(marker), tmp_path / "evil.pt")
    with open(tmp_path / "evil_raw.pth", "wb") as f:
        pickle.dump(Evil(marker), f)
    assert mig.detect_kind(tmp_path / "evil.pt") == mig.PICKLED_OBJECT
    summary = mig.migrate(tmp_path)
    torch_pickle, raw_pickle = summary.results
    assert torch_pickle.status == raw_pickle.status == "failed"
    assert "--trust-pickle" in torch_pickle.reason and "open, which weights_only" in torch_pickle.reason and "\n" not in torch_pickle.reason
    assert "not a checkpoint" in raw_pickle.reason  # a bare pickle is not even a torch file: nothing to trust
    assert not marker.exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["evil.pt", "evil_raw.pth", "migration_report.json"]


def test_pickled_module_needs_trust(tmp_path):
    p = policy_of(MLP)
    src = tmp_path / "whole.pt"
    torch.save(p, src)
    (r,) = mig.migrate(src).results
    assert (r.status, r.kind) == ("failed", mig.PICKLED_OBJECT) and "--trust-pickle" in r.reason
    assert "RecurrentPolicy" in r.reason and not (tmp_path / "whole.safetensors").exists()
    (r,) = mig.migrate(src, trust_pickle=True).results
    assert r.status == "migrated", r.reason
    same_weights(load(tmp_path / "whole.safetensors").policy, p)


def test_unmappable_weights_fail_with_reasons(tmp_path):
    torch.save({"foo.weight": torch.zeros(2, 2)}, tmp_path / "foreign.pt")
    metta = MettaFast().state_dict()
    del metta["components._action_._net.weight"], metta["components._action_._net.bias"]
    metta["components._action_.W"] = torch.zeros(12, 16)
    metta["components._action_.bias"] = torch.zeros(1)
    torch.save(metta, tmp_path / "bilinear.pt")
    mlp = policy_of(MLP).state_dict()
    mlp["core.lstm.weight_ih_l1"] = torch.zeros(20, 5)
    torch.save(mlp, tmp_path / "twolayer.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all" * 20)
    reasons = {Path(r.path).name: r.reason for r in mig.migrate(tmp_path).results}
    assert "no known layout" in reasons["foreign.pt"]
    assert "_action_.W" in reasons["bilinear.pt"]
    assert "multi-layer LSTM" in reasons["twolayer.pt"]
    assert "not a checkpoint" in reasons["garbage.pt"]
    assert mig.detect_kind(tmp_path / "garbage.pt") == mig.UNKNOWN


# --------------------------------------------------------------------------- batches, idempotence, backups
def test_directory_batch_summary_report_and_exit_code(tmp_path, capsys):
    d = tmp_path / "ckpts"
    (d / "sub").mkdir(parents=True)
    p = policy_of(MLP)
    torch.save(p.state_dict(), d / "good.pt")
    torch.save(p.state_dict(), d / "sub" / "deep.pth")
    save(d / "current.safetensors", p, env_spec={"name": "x"}, progress={"epoch": 1, "agent_step": 2}, run="r", seed=0)
    (d / "bad.pt").write_bytes(b"\x80\x02garbage")
    torch.save(Evil(tmp_path / "PWNED"), d / "evil.pt")
    (d / "notes.txt").write_text("not a candidate")
    assert migrate_cli([str(d)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"4 files: 1 migrated, 1 skipped, 2 failed; report {d / 'migration_report.json'}"
    assert any(line.startswith("failed   ") and "evil.pt" in line and "--trust-pickle" in line for line in out)
    report = json.loads((d / "migration_report.json").read_text())
    assert report["totals"] == {"files": 4, "migrated": 1, "skipped": 1, "failed": 2}
    status = {Path(f["path"]).name: (f["status"], f["kind"]) for f in report["files"]}
    assert status == {"bad.pt": ("failed", "unknown"), "current.safetensors": ("skipped", "fiberlab"),
                      "evil.pt": ("failed", "pickled_object"), "good.pt": ("migrated", "state_dict")}
    assert all(f["reason"] for f in report["files"])
    assert not (d / "sub" / "deep.safetensors").exists() and not (tmp_path / "PWNED").exists()
    # --recursive reaches sub/, and an OUTPUT directory mirrors the tree.
    assert migrate_cli([str(d), str(tmp_path / "mirror"), "--recursive", "--no-backup"]) == 1
    assert (tmp_path / "mirror" / "sub" / "deep.safetensors").is_file() and (tmp_path / "mirror" / "good.safetensors").is_file()
    assert (tmp_path / "mirror" / "migration_report.json").is_file()


def test_second_run_changes_nothing(tmp_path, capsys):
    d = tmp_path / "mixed"
    d.mkdir()
    p = policy_of(MLP)
    opt = adam_after_a_step(p, torch.randn(2, 3, 7), lambda m, x: m(x)[:2])
    torch.save(p.state_dict(), d / "raw.pt")
    torch.save({"state_dict": p.state_dict(), "optimizer": opt.state_dict(), "global_step": 9}, d / "train.pth")
    torch.save(MettaFast().state_dict(), d / "m__e1__s2__t3__sc4.pt")
    shutil.copy(FIXTURE, d / "old.safetensors")
    first = mig.migrate(d)
    assert first.ok and first.migrated == 4, [(r.path, r.reason) for r in first.results]
    before = snapshot(d, skip=mig.REPORT_NAME)
    second = mig.migrate(d)
    assert second.ok and second.migrated == 0 and second.skipped == len(second.results) == 7  # 4 inputs, 3 new outputs
    assert {r.reason for r in second.results if r.path.endswith((".pt", ".pth"))} >= {f"already migrated to {d / 'raw.safetensors'}"}
    assert snapshot(d, skip=mig.REPORT_NAME) == before  # bytes and mtimes
    report = snapshot(d)[mig.REPORT_NAME]
    assert migrate_cli([str(d)]) == 0
    assert snapshot(d)[mig.REPORT_NAME] == report  # an unchanged report is not rewritten either
    assert "7 files: 0 migrated, 7 skipped, 0 failed" in capsys.readouterr().out


def test_backups(tmp_path):
    p = policy_of(MLP)
    src = tmp_path / "a.pt"
    torch.save(p.state_dict(), src)
    (tmp_path / "a.pt.bak").write_bytes(b"someone else's backup")
    (r,) = mig.migrate(src).results
    assert r.backup == str(tmp_path / "a.pt.bak.1")
    assert (tmp_path / "a.pt.bak.1").read_bytes() == src.read_bytes()
    assert (tmp_path / "a.pt.bak").read_bytes() == b"someone else's backup"
    src2 = tmp_path / "b.pt"
    torch.save(p.state_dict(), src2)
    (r,) = mig.migrate(src2, backup=False).results
    assert r.status == "migrated" and r.backup is None and not list(tmp_path.glob("b.pt.bak*"))
    # An existing output that is not this file's migration is never overwritten.
    torch.save(policy_of(MLP, seed=5).state_dict(), src2)
    (r,) = mig.migrate(src2).results
    assert r.status == "failed" and "not a migration of this file" in r.reason and not list(tmp_path.glob("b.pt.bak*"))


@pytest.mark.parametrize("case", ["legacy", "in_place"])
def test_interrupted_write_leaves_no_valid_looking_file(tmp_path, monkeypatch, case):
    from fiberlab.checkpoint import format as fmt

    real = fmt.save_file
    calls = []

    def half_then_die(tensors, filename, metadata=None):
        calls.append(filename)
        real(tensors, filename, metadata=metadata)
        if len(calls) == 1:  # the one atomic write of the output
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt

    if case == "legacy":
        src = tmp_path / "a.pt"
        torch.save(policy_of(MLP).state_dict(), src)
        out = tmp_path / "a.safetensors"
    else:
        src = out = tmp_path / "v1.safetensors"
        shutil.copy(FIXTURE, src)
    original = src.read_bytes()
    monkeypatch.setattr(fmt, "save_file", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        mig.migrate(src)
    assert src.read_bytes() == original
    assert sorted(f.name for f in tmp_path.iterdir()) == [src.name]  # no output, no .tmp, no stray .bak
    if case == "in_place":
        assert read_header(out)["format_version"] == 1
    monkeypatch.setattr(fmt, "save_file", real)
    assert mig.migrate(src).results[0].status == "migrated"


# --------------------------------------------------------------------------- command line
def test_command_runs_as_a_subprocess(tmp_path):
    torch.save(policy_of(MLP).state_dict(), tmp_path / "x.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "fiberlab", "ckpt", "migrate", str(tmp_path / "x.pt"), "-v", "--no-backup"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "detected state_dict" in proc.stdout and proc.stdout.splitlines()[-1] == "1 file: 1 migrated, 0 skipped, 0 failed"
    assert read_manifest(tmp_path / "x.safetensors").format_version == FORMAT_VERSION


@pytest.mark.parametrize("argv", [[], ["--bogus", "x"], ["a", "b", "c"], ["does/not/exist.pt"], ["DIR", "FILE"]])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv):
    (tmp_path / "f").write_text("x")
    argv = [str(tmp_path) if a == "DIR" else str(tmp_path / "f") if a == "FILE" else a for a in argv]
    assert migrate_cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("fiberlab: error: ")  # the CLI's one handler, like every command
