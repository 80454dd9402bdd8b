"""scripts/gpu_check.py (``make gpu-check``) and scripts/gpu_wheels.py, exercised without a GPU.

The CUDA calls themselves need a GPU; everything around them is checked here: the plan and its
budget, the one-line refusal without CUDA, the whole pipeline for real on the CPU (--allow-cpu:
output folder, per-step logs, summary JSON, a step killed at its timeout while the others still
run), the benchmark flags the plan uses, and the wheel list against pyproject.toml and the GPU
machine's preinstalled packages.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check
import gpu_wheels

KINDS_MD = Path("/work/.library/device/KINDS.md")
STEPS = ["cuda_probe", "setup", "cuda_tests", "train_throughput", "cortex_cells"]
# what the device tool brings back from $OUT: at most 8 files, names of letters, digits, '.', '_', '-'
RETURNABLE = re.compile(r"^[A-Za-z0-9._-]+$")


def run(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    e.pop("OUT", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), *args], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=ROOT)


def test_plan_has_every_step_and_fits_in_8_minutes(tmp_path):
    steps = gpu_check.plan(False, "python3", tmp_path, "SITE")
    assert [s.name for s in steps] == STEPS
    total = sum(s.timeout for s in steps)
    assert total < 480 and gpu_check.DEADLINE_S < gpu_check.LIMIT_S == 480
    by = {s.name: s for s in steps}
    assert by["cuda_tests"].cmd[1:6] == ["-m", "pytest", "-v", "-m", "cuda"] and "tests/test_cuda.py" in by["cuda_tests"].cmd
    for name in ("train_throughput", "cortex_cells"):
        cmd = by[name].cmd
        assert cmd[cmd.index("--device") + 1] == "cuda" and cmd[cmd.index("--json") + 1] == str(tmp_path / f"{name}.json")
    names = gpu_check.output_names(steps)
    assert len(names) <= 8 and all(RETURNABLE.match(n) for n in names)


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    r = run("--dry-run", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    for name in STEPS:
        assert re.search(rf"^\s+{name}\s+\d+ s\s+\S", r.stdout, re.MULTILINE), name
    assert "460 s of step timeouts" in r.stdout and "limit 480 s" in r.stdout
    assert str(tmp_path / "out") in r.stdout and "--device cuda" in r.stdout
    assert not (tmp_path / "out").exists()


def test_out_dir_defaults_to_OUT_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.default_out() == tmp_path / "gpu_check"
    monkeypatch.delenv("OUT")
    assert gpu_check.default_out() == ROOT / "gpu_check_out"


def test_no_cuda_is_one_line_exit_2_and_writes_nothing(tmp_path):
    r = run("--out", str(tmp_path / "out"), env={"CUDA_VISIBLE_DEVICES": ""})
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("no CUDA device: "), r.stdout + r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_step_timeout_is_one_line_exit_2(tmp_path):
    r = run("--step-timeout", "nosuch=3", "--dry-run")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "cuda_tests" in r.stderr


def test_allow_cpu_runs_every_step_and_records_a_timeout(tmp_path):
    """The real pipeline on the CPU; train_throughput gets 3 s and is killed, cortex_cells runs after it."""
    out = tmp_path / "out"
    r = run("--allow-cpu", "--out", str(out), "--step-timeout", "train_throughput=3", timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr  # one step timed out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["torch"] and summary["ok"] is False
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == STEPS
    assert steps["setup"]["status"] == "ok" and steps["cortex_cells"]["status"] == "ok"
    assert steps["cuda_tests"]["status"] == "ok" and steps["cuda_tests"]["tests"].get("skipped", 0) > 0  # no GPU: all skipped
    t = steps["train_throughput"]
    assert t["status"] == "timeout" and t["timed_out"] and t["seconds"] < 15 and t["rc"] != 0
    for name in STEPS[1:]:
        assert isinstance(steps[name]["seconds"], float) and (out / f"{name}.log").stat().st_size > 0
    assert "TIMED OUT" in (out / "train_throughput.log").read_text()
    assert "skipped" in (out / "cuda_tests.log").read_text()
    cells = json.loads((out / "cortex_cells.json").read_text())
    assert [row["name"] for row in cells["rows"]] == ["nn.LSTM", "L", "C"]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(RETURNABLE.match(n) for n in files) and "summary.json" in files


def test_benchmark_flags_in_the_plan_exist(tmp_path):
    """Every --flag the plan passes a benchmark is in that benchmark's --help (a typo would waste a GPU run)."""
    flags: dict[str, set[str]] = {}
    for cpu in (False, True):
        for step in gpu_check.plan(cpu, sys.executable, tmp_path, "SITE")[3:]:
            flags.setdefault(step.cmd[1], set()).update(a for a in step.cmd if a.startswith("--"))
    for script, used in flags.items():
        r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert r.returncode == 0, r.stderr
        assert not [f for f in used if f not in r.stdout], f"not options of {script}: {[f for f in used if f not in r.stdout]}"


def test_cuda_tests_are_found_by_their_marker():
    assert "tests/test_cuda.py" in gpu_check.cuda_test_files()
    assert "cuda:" in (ROOT / "pyproject.toml").read_text()


def test_pytest_counts_reads_the_closing_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("tests/test_cuda.py::a PASSED\n===== 3 failed, 40 passed, 2 skipped, 1 error in 61.20s (0:01:01) =====\n")
    assert gpu_check.pytest_counts(log) == {"failed": 3, "passed": 40, "skipped": 2, "error": 1}


def test_make_gpu_check_skips_the_venv_set_up():
    text = (ROOT / "Makefile").read_text()
    rule = re.search(r"^gpu-check:(.*)\n\t(.*)", text, re.MULTILINE)
    assert rule and rule.group(1).strip() == "" and "scripts/gpu_check.py" in rule.group(2) and "VENV" not in rule.group(2)


# ============================================================================ the wheel list
def test_wheels_cover_every_runtime_dependency_the_gpu_machine_lacks():
    deps = {gpu_wheels.norm(re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0]): d for d in gpu_wheels.pyproject_requirements()}
    carried = {gpu_wheels.norm(n) for n in gpu_wheels.WHEELS}
    lacking = sorted(n for n in deps if n not in gpu_wheels.PREINSTALLED)
    assert lacking and not [n for n in lacking if n not in carried]
    assert "torch" not in carried and not any(n.startswith("nvidia") for n in carried)
    for name, line in deps.items():  # the pyproject pins, exactly
        if "==" in line and name in carried:
            assert gpu_wheels.WHEELS[name] == line.split("==", 1)[1].strip()


@pytest.mark.skipif(not KINDS_MD.exists(), reason=f"{KINDS_MD} is not on this machine")
def test_preinstalled_list_is_the_one_in_kinds_md():
    section = KINDS_MD.read_text().split("## Python packages already there", 1)[1]
    listed = re.search(r"Packages: (.*?)\.\s*$", section, re.DOTALL | re.MULTILINE).group(1)
    assert gpu_wheels.PREINSTALLED == {n.strip() for n in listed.split(",")}


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta + "\nlong description\nRequires-Dist: not-a-header\n")


def test_requirement_walk_follows_extras_and_markers_and_names_what_is_missing(tmp_path):
    fake_wheel(tmp_path, "alpha", "1.0", ["beta[fast]>=1", "numpy", "gamma; python_version < '3.10'", "delta; extra == 'docs'"])
    fake_wheel(tmp_path, "beta", "1.0", ["epsilon; extra == 'fast'", "zeta; extra == 'slow'", "eta; sys_platform == 'win32'"])
    missing, wanted = gpu_wheels.requirement_graph(gpu_wheels.read_wheels(tmp_path), roots=["alpha"])
    assert [req for _, req in missing] == ["epsilon; extra == 'fast'"]  # numpy is preinstalled; the rest do not apply
    assert [by for by, _ in missing] == ["beta"]
    assert wanted["beta"] == [("alpha", ">=1")]


def test_check_of_the_downloaded_wheels():
    folder = ROOT / ".whl"
    if not list(folder.glob("*.whl")):
        pytest.skip("no .whl/ here (bash scripts/gpu_wheels.sh downloads it)")
    assert gpu_wheels.check(folder) == []
