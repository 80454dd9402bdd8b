"""The README's "From Python" example, run exactly as printed there (in a fresh folder)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md has no python block under 'From Python'"
    return match.group(1)


def test_readme_from_python_example_runs_and_learns(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10  # the promise: a 10-line example
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"return (-?\d+\.\d+) -> (-?\d+\.\d+) with (\d+)% of the parameters", proc.stdout)
    assert m, proc.stdout[-2000:]
    before, _, share = float(m[1]), float(m[2]), int(m[3])
    assert before > -0.3  # random or memoryless play scores about -0.5 on demo: it learned
    assert share < 60  # the collapse made it smaller
    assert list((tmp_path / "train_dir" / "quick" / "checkpoints").glob("quick__e*__s*.safetensors"))
