"""A real 2-process DDP run on CPU (gloo) through torchrun."""
import os
import subprocess
import sys

import torch

from conftest import ROOT, tiny
from fiberlab.checkpoint import load
from fiberlab.rl.logging import read_metrics
from fiberlab.rl.run_dir import list_checkpoints


def test_torchrun_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fiberlab", "train", *tiny(tmp_path, epochs=2, agents=16)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(tmp_path / "t")
    # rank 0 alone logs: one row per epoch, each epoch counting both ranks' 8 envs x 8 steps
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["agent_step"] for row in rows] == [128, 256]
    ckpts = list_checkpoints(tmp_path / "t")
    assert [c[0] for c in ckpts] == [1, 2]
    assert r.stdout.count("run:") == 1
    # DDP averaged gradients: a single-process run on rank 0's data alone gives other weights
    single = tmp_path / "single"
    r2 = subprocess.run([sys.executable, "-m", "fiberlab", "train", *tiny(single, epochs=1)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r2.returncode == 0, r2.stderr
    w_ddp = load(ckpts[0][2]).policy.state_dict()
    w_one = load(list_checkpoints(single / "t")[0][2]).policy.state_dict()
    assert any(not torch.equal(w_ddp[k], w_one[k]) for k in w_ddp)
