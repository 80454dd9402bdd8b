"""Sweeps: specs validated cell by cell before anything runs, deterministic names, resume, failures
recorded, grown specs run only their new cells, and the Ray executor with a real local Ray."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli
from fiberlab.errors import BadInput
from fiberlab.rl.logging import read_metrics
from fiberlab.rl.run_dir import list_checkpoints
from fiberlab.sweep.cells import build_cells, expand
from fiberlab.sweep.runner import run_sweep
from fiberlab.sweep.spec import SweepSpec, parse_spec

TINY = {"env.num_envs": 8, "trainer.bptt_horizon": 8, "trainer.minibatch_size": 32, "trainer.checkpoint_interval": 1, "tensorboard": False}


def spec(**kw) -> SweepSpec:
    data = {"name": "s", "base": {"recipe": "demo", "overrides": TINY}, "axes": {"policy.core_hidden": [8, 16]}, "seeds": [1], "budget": 128}
    data.update(kw)
    return parse_spec(data)


def quiet(_line: str) -> None:
    pass


def index(tmp_path, name="s") -> dict:
    return {c["name"]: c for c in json.loads((tmp_path / name / "index.json").read_text())["cells"]}


# ------------------------------------------------------------------ specs and names
@pytest.mark.parametrize("change, message", [
    ({"axes": {"trainer.bogus": [1]}}, "cell bogus-1.seed-1: unknown key 'trainer.bogus'"),
    ({"axes": {"trainer.learning_rate": [0.001, -1]}}, "cell learning_rate--1.seed-1: bad value -1 for 'trainer.learning_rate'"),
    ({"axes": {"seed": [1, 2]}}, "set by the sweep itself"),
    ({"zip": [{"policy.d_hidden": [64, 128], "policy.num_layers": [3]}]}, "same, non-zero number of values"),
    ({"seeds": [1, 1]}, "repeat a value"),
    ({"colour": "red"}, "bad colour"),
    ({"base": {"recipe": "nope"}}, "unknown recipe 'nope'"),
])
def test_a_bad_spec_is_one_line_naming_what_is_wrong_and_nothing_is_written(tmp_path, change, message):
    with pytest.raises(BadInput) as e:
        run_sweep(spec(**change), tmp_path, max_parallel=1, log=quiet)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


def test_the_cli_reports_a_bad_spec_file_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: s\nbase: {recipe: demo}\naxes: {policy.bogus: [1]}\n")
    r = run_cli("sweep", "run", str(bad), "--train-dir", str(tmp_path / "td"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cell bogus-1.seed-1: unknown key 'policy.bogus'" in r.stderr
    r = run_cli("sweep", "run", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "no such sweep spec file" in r.stderr
    assert not (tmp_path / "td").exists()


def test_names_are_deterministic_unique_and_safe():
    s = spec(axes={"policy.pattern": ["AgSA", "M^"], "env.name": ["popgym.RepeatPreviousEasy"]},
             zip=[{"policy.d_hidden": [64, 128], "policy.num_layers": [6, 3]}], seeds=[1, 2])
    names = [c.name for c in expand(s)]
    assert names == [c.name for c in expand(s)] and len(set(names)) == len(names) == 2 * 2 * 2
    assert names[0] == "pattern-AgSA.name-popgym.RepeatPreviousEasy.d_hidden-64.num_layers-6.seed-1"
    assert "pattern-M_5e.name-popgym.RepeatPreviousEasy.d_hidden-128.num_layers-3.seed-2" in names  # '^' cannot be in a run name
    cells = build_cells(parse_spec({**s.model_dump(), "base": {"recipe": "demo", "overrides": {"policy.core": "cortex"}}}), "td")
    cfg = cells[-1].config
    assert (cfg.policy.pattern, cfg.policy.d_hidden, cfg.policy.num_layers, cfg.seed, cfg.run) == ("M^", 128, 3, 2, cells[-1].name)
    assert cfg.wandb.group == "s" and "policy.pattern=M^" in cfg.wandb.tags and cfg.trainer.torch_threads == 1


def test_dry_run_prints_cells_and_cost_and_writes_nothing(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: {recipe: demo}\naxes: {policy.core_hidden: [8, 16, 32]}\nseeds: [1, 2]\nbudget: 1000000\n")
    r = run_cli("sweep", "run", str(path), "--dry-run", "--sps", "5000", "--max-parallel", "2", "--train-dir", str(tmp_path / "td"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("run   core_hidden-") == 6
    # 6 cells x 1 M steps at 5,000 SPS per cell, 2 at a time: 6e6 / 1e4 / 3600 = 0.17 h
    assert "6 cells, 6 to run: 6,000,000 agent steps, 0.17 h at 5,000 SPS per cell x 2 in parallel" in r.stdout
    assert not (tmp_path / "td").exists()


# ------------------------------------------------------------------ running, resuming, failing
def test_rerun_skips_finished_cells_and_resumes_an_interrupted_one(tmp_path):
    s = spec()
    first = run_sweep(s, tmp_path, max_parallel=1, log=quiet)
    assert sorted(first.ran) == ["core_hidden-16.seed-1", "core_hidden-8.seed-1"] and not first.failed
    rec = index(tmp_path)
    assert all(r["status"] == "done" and r["attempts"] == 1 and r["agent_step"] == 128 and r["params"] > 0 for r in rec.values())
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*.safetensors")}
    again = run_sweep(s, tmp_path, max_parallel=1, log=quiet)
    assert again.ran == [] and sorted(again.skipped) == sorted(rec)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*.safetensors")} == stamps  # nothing retrained

    # an interrupted cell: killed after its epoch-1 checkpoint, while the index said "running"
    name = "core_hidden-8.seed-1"
    run = tmp_path / "s" / name
    first_ckpt, last_ckpt = (c[2] for c in list_checkpoints(run))
    last_ckpt.unlink()
    data = json.loads((tmp_path / "s" / "index.json").read_text())
    data["cells"] = [{**c, "status": "running"} if c["name"] == name else c for c in data["cells"]]
    (tmp_path / "s" / "index.json").write_text(json.dumps(data))
    done = run_sweep(s, tmp_path, max_parallel=1, log=quiet)
    assert done.ran == [name] and done.skipped == ["core_hidden-16.seed-1"]
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]  # resumed at epoch 1's checkpoint, not restarted
    assert first_ckpt.stat().st_mtime_ns == stamps[first_ckpt] and last_ckpt.exists()
    assert index(tmp_path)[name]["status"] == "done" and index(tmp_path)[name]["attempts"] == 2


def test_a_failing_cell_is_retried_recorded_and_the_sweep_finishes(tmp_path):
    s = spec(axes={"policy.name": ["mlp_lstm", "atari"]})  # the atari conv policy cannot take demo's vector obs
    out = run_sweep(s, tmp_path, max_parallel=1, retries=1, log=quiet)
    assert out.ran == ["name-mlp_lstm.seed-1"] and out.failed == ["name-atari.seed-1"]
    bad = index(tmp_path)["name-atari.seed-1"]
    assert bad["status"] == "failed" and bad["attempts"] == 2 and bad["exit_code"] == 2 and "conv encoder" in bad["error"]
    assert index(tmp_path)["name-mlp_lstm.seed-1"]["status"] == "done"


def test_the_cli_exits_1_when_a_cell_failed_and_status_shows_it(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(spec(axes={"policy.name": ["atari"]}).model_dump()))  # JSON is YAML
    r = run_cli("sweep", "run", str(path), "--max-parallel", "1", "--train-dir", str(tmp_path))
    assert r.returncode == 1 and "1 cell(s) failed" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("sweep", "status", "s", "--train-dir", str(tmp_path))
    assert r.returncode == 0 and "failed" in r.stdout and "conv encoder" in r.stdout and "0/1 done" in r.stdout


def test_more_seeds_run_only_the_new_cells_and_a_changed_base_is_refused(tmp_path):
    run_sweep(spec(seeds=[1]), tmp_path, max_parallel=1, log=quiet)
    more = run_sweep(spec(seeds=[1, 2]), tmp_path, max_parallel=1, log=quiet)
    assert sorted(more.ran) == ["core_hidden-16.seed-2", "core_hidden-8.seed-2"] and len(more.skipped) == 2
    changed = spec(seeds=[1, 2], base={"recipe": "demo", "overrides": {**TINY, "trainer.learning_rate": 0.001}})
    with pytest.raises(BadInput, match="another base or budget"):
        run_sweep(changed, tmp_path, max_parallel=1, log=quiet)
    forced = run_sweep(changed, tmp_path, max_parallel=1, force=True, log=quiet)
    assert forced.ran == [] and len(forced.skipped) == 4  # finished cells stay finished; --force only lets it run


def test_the_local_pool_runs_cells_in_parallel_processes(tmp_path):
    out = run_sweep(spec(seeds=[1, 2]), tmp_path, max_parallel=2, log=quiet)
    assert len(out.ran) == 4 and not out.failed
    assert all(r["status"] == "done" for r in index(tmp_path).values())


def test_ray_executor_runs_a_two_cell_sweep_with_a_real_local_ray(tmp_path):
    pytest.importorskip("ray")
    lines: list[str] = []
    out = run_sweep(spec(), tmp_path, executor="ray", max_parallel=2, log=lines.append)
    assert sorted(out.ran) == ["core_hidden-16.seed-1", "core_hidden-8.seed-1"] and not out.failed
    assert "executor ray" in lines[0]
    assert all(r["status"] == "done" and r["agent_step"] == 128 for r in index(tmp_path).values())
    assert run_sweep(spec(), tmp_path, executor="ray", log=quiet).ran == []  # resumable the same way


def test_the_live_table_shows_every_cell_with_its_step(tmp_path):
    from rich.console import Console

    from fiberlab.sweep.cells import build_cells
    from fiberlab.sweep.index import SweepIndex
    from fiberlab.sweep.progress import LiveTable

    s = spec()
    run_sweep(s, tmp_path, max_parallel=1, log=quiet, live=True)  # drawn from a thread while the cells run
    idx = SweepIndex.open(tmp_path / "s", s, build_cells(s, tmp_path))
    console = Console(width=120, record=True, file=open("/dev/null", "w"))
    console.print(LiveTable(idx, 128, enabled=False).table())
    text = console.export_text()
    for name in ("core_hidden-8.seed-1", "core_hidden-16.seed-1"):
        line = next(row for row in text.splitlines() if name in row)
        assert "done" in line and "128" in line
