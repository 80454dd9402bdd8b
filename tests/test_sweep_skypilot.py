"""``--executor skypilot``: one task file per cell plus launch.sh, valid for SkyPilot's schema, written
only after every cell validated; checked with ``sky.Task.from_yaml`` when SkyPilot is installed."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from fiberlab.errors import BadInput
from fiberlab.sweep import skypilot
from fiberlab.sweep.cells import build_cells, cell_overrides
from fiberlab.sweep.skypilot import (
    ENV_KEY,
    MOUNT_POINT,
    TASK_NAME,
    check_with_skypilot,
    public_repo_url,
    task_name,
    write_skypilot,
)
from fiberlab.sweep.spec import SweepSpec

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "https://example.org/lab/fiberlab.git"


def small_spec(**extra: object) -> SweepSpec:
    data = {"name": "sky", "base": {"recipe": "demo"}, "axes": {"policy.core_hidden": [16, 32]}, "seeds": [1, 2], "budget": 1000,
            "resources": {"cpus": 2, "gpus": 1, "accelerators": ["L4:1", "A10G:1"]}}
    return SweepSpec.model_validate({**data, **extra})


def launch_lines(launch: Path) -> list[str]:
    return [ln for ln in launch.read_text().splitlines() if ln.startswith("sky jobs launch")]


def fiberlab_command(run: str) -> list[str]:
    (line,) = [ln for ln in run.splitlines() if ln.startswith("fiberlab train")]
    return shlex.split(line)


@pytest.fixture
def no_sky_check(monkeypatch):
    """The files as written without SkyPilot installed (so these tests run the same either way)."""
    monkeypatch.setattr(skypilot, "skypilot_installed", lambda: False)


def test_one_task_per_cell_and_a_launch_line_each(tmp_path, no_sky_check):
    spec = small_spec()
    train_dir = tmp_path / "td"
    launch = write_skypilot(spec, train_dir, commit=COMMIT, repo=REPO)
    assert launch == train_dir / "sky" / "skypilot" / "launch.sh"
    assert launch.read_text().startswith("#!/usr/bin/env bash\n# Submit the 4 cells of sweep sky")
    cells = build_cells(spec, train_dir)
    assert sorted(p.name for p in launch.parent.glob("*.yaml")) == sorted(f"{c.name}.yaml" for c in cells)
    lines = launch_lines(launch)
    assert len(lines) == 4
    for cell, line in zip(cells, lines, strict=True):
        task = yaml.safe_load((launch.parent / f"{cell.name}.yaml").read_text())
        assert set(task) == {"name", "resources", "envs", "setup", "run"}
        assert TASK_NAME.fullmatch(task["name"]) and task["name"] == f"sky.{cell.name}"
        words = shlex.split(line)
        assert words[:5] == ["sky", "jobs", "launch", "-y", "-n"] and words[5] == task["name"] and words[-1] == f"{cell.name}.yaml"
        assert task["resources"] == {"cpus": "2+", "any_of": [{"accelerators": "L4:1"}, {"accelerators": "A10G:1"}],
                                     "job_recovery": {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 3}}
        envs = task["envs"]
        assert all(ENV_KEY.fullmatch(k) and isinstance(v, str) for k, v in envs.items())
        assert envs["FIBERLAB_RUN"] == cell.name and envs["FIBERLAB_COMMIT"] == COMMIT and envs["FIBERLAB_REPO"] == REPO
        assert envs["WANDB_MODE"] == "offline"
        # the run is exactly the cell's run: its overrides, quoted for the shell, resume included
        command = fiberlab_command(task["run"])
        assert command == ["fiberlab", "train", "demo", *cell_overrides(spec, cell, train_dir)]
        assert f"seed={cell.seed}" in command and f"run={cell.name}" in command and "resume=true" in command
        assert f"train_dir={train_dir / 'sky'}" in command
        # torch first, then fiberlab at the commit under the constraints
        setup = task["setup"]
        assert setup.index('"torch==2.13.0"') < setup.index("git+$FIBERLAB_REPO$REF") and "-c ~/fiberlab-constraints.txt" in setup


def test_same_spec_same_bytes(tmp_path, no_sky_check):
    first = write_skypilot(small_spec(), tmp_path / "td", tmp_path / "a", commit=COMMIT, repo=REPO)
    second = write_skypilot(small_spec(), tmp_path / "td", tmp_path / "b", commit=COMMIT, repo=REPO)
    names = sorted(p.name for p in first.parent.iterdir())
    assert names == sorted(p.name for p in second.parent.iterdir()) and len(names) == 5
    assert all((first.parent / n).read_bytes() == (second.parent / n).read_bytes() for n in names)
    assert not list(first.parent.glob("*.tmp"))


def test_defaults_come_from_git(tmp_path, no_sky_check, monkeypatch):
    monkeypatch.delenv("FIBERLAB_REPO", raising=False)
    launch = write_skypilot(small_spec(), tmp_path / "td")
    envs = yaml.safe_load(next(launch.parent.glob("*.yaml")).read_text())["envs"]
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", envs["FIBERLAB_COMMIT"])
    assert "@" not in envs["FIBERLAB_REPO"]  # no user or token written into task files
    monkeypatch.setenv("FIBERLAB_REPO", "https://user:secret@example.org/x.git")
    launch = write_skypilot(small_spec(), tmp_path / "td")
    text = next(launch.parent.glob("*.yaml")).read_text()
    assert "secret" not in text and "FIBERLAB_REPO: https://example.org/x.git" in text


def test_cpu_only_and_bucket_train_dir(tmp_path, no_sky_check):
    spec = small_spec(resources={"cpus": 4, "gpus": 0})
    launch = write_skypilot(spec, "s3://my-bucket/runs", tmp_path / "out", commit=COMMIT, repo=REPO)
    task = yaml.safe_load((launch.parent / "core_hidden-16.seed-1.yaml").read_text())
    assert task["resources"] == {"cpus": "4+", "job_recovery": {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 3}}
    assert task["file_mounts"] == {MOUNT_POINT: {"source": "s3://my-bucket/runs", "mode": "MOUNT_CACHED"}}
    assert f"train_dir={MOUNT_POINT}/sky" in fiberlab_command(task["run"])
    assert "resumes from its newest checkpoint" in launch.read_text()


def test_bad_spec_writes_nothing(tmp_path, no_sky_check):
    out = tmp_path / "out"
    with pytest.raises(BadInput, match="policy.nope") as e:
        write_skypilot(small_spec(axes={"policy.nope": [1, 2]}), tmp_path / "td", out)
    assert "\n" not in str(e.value)
    with pytest.raises(BadInput, match="'L4:x'"):
        write_skypilot(small_spec(resources={"gpus": 1, "accelerators": ["L4:x"]}), tmp_path / "td", out)
    with pytest.raises(BadInput, match="accelerators is empty"):
        write_skypilot(small_spec(resources={"gpus": 1, "accelerators": []}), tmp_path / "td", out)
    assert not out.exists() and not (tmp_path / "td").exists()


def test_task_names_and_repo_urls():
    assert task_name("sky", "pattern-M_5e.seed-1") == "sky.pattern-M_5e.seed-1"
    assert task_name("9lives", "seed-1") == "s-9lives.seed-1"
    assert task_name("a", "b_") == "a.b"
    for name in (task_name("9", "x"), task_name("a.", "-")):
        assert TASK_NAME.fullmatch(name)
    assert public_repo_url("git@github.com:org/fiberlab.git") == "https://github.com/org/fiberlab.git"
    assert public_repo_url("https://tok:x@github.com/org/fiberlab") == "https://github.com/org/fiberlab"
    assert public_repo_url("https://github.com/org/fiberlab") == "https://github.com/org/fiberlab"


def test_check_without_skypilot_names_the_extra(tmp_path, no_sky_check):
    with pytest.raises(BadInput, match=r"needs the skypilot extra: pip install -c constraints.txt 'fiberlab\[skypilot\]'"):
        check_with_skypilot(tmp_path / "x.yaml")


def test_every_file_loads_in_skypilot(tmp_path):
    sky = pytest.importorskip("sky")
    for train_dir in (tmp_path / "td", "s3://my-bucket/runs"):
        launch = write_skypilot(small_spec(), train_dir, tmp_path / "out" / str(len(str(train_dir))), commit=COMMIT, repo=REPO)
        files = sorted(launch.parent.glob("*.yaml"))
        assert len(files) == 4
        for path in files:
            check_with_skypilot(path)
            task = sky.Task.from_yaml(str(path))
            assert task.name == yaml.safe_load(path.read_text())["name"]
            assert {str(r.accelerators) for r in task.resources} == {"{'L4': 1}", "{'A10G': 1}"}
    # what SkyPilot refuses is one line naming the file
    good = yaml.safe_load(files[0].read_text())
    for broken in ({**good, "job_recovery": {"strategy": "EAGER_NEXT_REGION"}}, {**good, "envs": {"1BAD": "x"}}):
        bad = tmp_path / "broken.yaml"
        bad.write_text(yaml.safe_dump(broken))
        with pytest.raises(BadInput, match=re.escape(str(bad))) as e:
            check_with_skypilot(bad)
        assert "\n" not in str(e.value)


def test_cli_prints_the_launch_script(tmp_path, cli):
    spec = tmp_path / "sky.yaml"
    spec.write_text(yaml.safe_dump(small_spec().model_dump()))
    r = cli("sweep", "run", str(spec), "--executor", "skypilot", "--train-dir", str(tmp_path / "td"), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert f"bash {tmp_path / 'out' / 'launch.sh'}" in r.stdout
    assert len(launch_lines(tmp_path / "out" / "launch.sh")) == 4


def test_a_refused_task_leaves_no_launch_script(tmp_path, monkeypatch):
    pytest.importorskip("sky")
    launch = write_skypilot(small_spec(), tmp_path / "td", tmp_path / "out", commit=COMMIT, repo=REPO)
    render = skypilot.render_task
    monkeypatch.setattr(skypilot, "render_task", lambda task, header: render(task, header) + "job_recovery: EAGER_NEXT_REGION\n")
    with pytest.raises(BadInput, match=r"core_hidden-16\.seed-1\.yaml: SkyPilot refuses this task: .*job_recovery"):
        write_skypilot(small_spec(), tmp_path / "td", tmp_path / "out", commit=COMMIT, repo=REPO)
    assert not launch.exists()
