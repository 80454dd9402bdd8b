"""The CUDA paths, on a GPU: the trainer on device=auto, bf16 autocast, the cortex GPU kernels, torchrun + NCCL.

Every test here is marked ``cuda`` and skipped where CUDA is absent (so CI, which has no GPU, skips
them all); ``make gpu-check`` (scripts/gpu_check.py, docs/gpu.md) runs them on a GPU machine.

Why these: on the CPU the trainer, autocast and DDP (gloo) are tested end to end, but on a GPU other
code runs. AGaLiTe and Axon sequences take the tensor-op kernels (``kernels.decayed_readout``,
``kernels.scan``, ``kernels.rtu_scan``) instead of the compiled CPU loops, so every cell's
sequence mode on CUDA is compared with the same cell on the CPU (outputs, final state and every
gradient, in float64 tightly and in float32 loosely), and its step mode too (X's window, the fused
S and M steps, the conv step). DDP on GPUs uses NCCL, which the CPU tests never reach.
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, flat_state, tiny

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False); make gpu-check runs these on a GPU"),
]
DEV = torch.device("cuda")
H, B, T, T1 = 16, 3, 45, 13  # T - T1 = 32 steps after a carried state: several chunks of every chunked kernel
F64, F32 = torch.float64, torch.float32


def env_with_src() -> dict[str, str]:
    """The environment for a child Python: src/ first, and whatever PYTHONPATH already holds (the
    carried wheels' site dir on the GPU machine) kept."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


@pytest.fixture(autouse=True)
def no_tf32():
    """Compare kernels, not TF32 rounding: full float32 matmuls and convolutions on the GPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ============================================================================ the trainer on cuda
def train_demo(tmp_path, epochs: int = 2, **extra):
    from fiberlab.config import apply_overrides
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.logging import read_metrics
    from fiberlab.rl.trainer import Trainer

    cfg = apply_overrides(get_recipe("demo"), tiny(tmp_path, epochs=epochs, **{"tensorboard": False, **extra})[1:])
    trainer = Trainer(cfg)
    result = trainer.train()
    return trainer, result, read_metrics(tmp_path / "t")


def assert_finite_losses(rows, epochs: int = 2) -> None:
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    for r in rows:
        for key in ("policy_loss", "value_loss", "entropy"):
            assert r[key] is not None and math.isfinite(r[key]), (key, r)


def test_device_auto_trains_on_cuda_and_checkpoints_load_on_the_cpu(tmp_path):
    from fiberlab.checkpoint import load
    from fiberlab.devices import resolve_device

    assert resolve_device("auto").type == DEV.type
    trainer, result, rows = train_demo(tmp_path)  # tiny() leaves device at its default, auto
    assert trainer.device.type == DEV.type
    assert all(p.device.type == DEV.type for p in result.policy.parameters())
    assert_finite_losses(rows)
    ck = load(result.last_checkpoint)  # the CPU by default
    trained = result.policy.state_dict()
    for k, v in ck.policy.state_dict().items():
        assert v.device.type == "cpu"
        torch.testing.assert_close(v, trained[k].cpu(), atol=0, rtol=0)


def test_bf16_autocast_on_cuda_trains_and_stays_close_to_fp32(tmp_path):
    """trainer.precision=bf16 on the GPU: the update's forward pass under CUDA autocast (tensor cores)."""
    rows = {}
    for p in ("fp32", "bf16"):
        _, _, rows[p] = train_demo(tmp_path / p, **{"trainer.precision": p})
        assert_finite_losses(rows[p])
    a, b = rows["fp32"][0], rows["bf16"][0]
    assert a["value_loss"] != b["value_loss"]  # bf16 really ran
    assert abs(a["value_loss"] - b["value_loss"]) < 0.05 * abs(a["value_loss"]) + 1e-4
    assert abs(a["entropy"] - b["entropy"]) < 0.01


def test_auto_precision_on_cuda_acts_and_updates_in_bf16_with_the_ratio_at_one():
    """trainer.precision=auto on a GPU with bf16: the conv policies act and update in bf16, and the
    update's log-probabilities of the rollout's actions match acting's (GEMMs of other shapes may
    round differently on the GPU, so the bound is looser than the CPU test's 5e-3)."""
    from fiberlab.config import PolicyConfig, apply_overrides
    from fiberlab.envs import make_vecenv
    from fiberlab.policies import build_policy
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.precision import autocast
    from fiberlab.rl.rollout import RolloutCollector

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    env = make_vecenv(apply_overrides(get_recipe("arena"), ["env.num_envs=1", "env.mettagrid.max_steps=6"]).env, 0)
    try:
        s = env.spec
        torch.manual_seed(0)
        policy = build_policy(PolicyConfig(name="fast", obs_shape=list(s.obs_shape), num_actions=s.num_actions, obs_scale=list(s.obs_scale))).to(DEV)
        with torch.no_grad():
            policy.actor[-1].weight.mul_(1000.0)  # confident logits, as a trained policy's
        collector = RolloutCollector(env, policy, 8, DEV, seed=0, precision="auto")
        assert collector.precision == "bf16"
        buf, _, _, _ = collector.collect()
    finally:
        env.close()
    with torch.no_grad(), autocast("bf16", DEV):
        logits, _, _ = policy(buf.obs, buf.initial_state, buf.training_resets())
    logp = torch.log_softmax(logits, -1).gather(-1, buf.actions.unsqueeze(-1)).squeeze(-1)
    assert ((logp - buf.logprobs).exp() - 1).abs().max().item() < 0.02


def test_cortex_policy_trains_under_bf16_on_cuda(tmp_path):
    """A cortex core (AGaLiTe, sLSTM, Axon) under bf16 autocast on the GPU: the stack must still run
    in float32 (torch has no bf16 complex kernels for Axon's traces)."""
    extra = {"trainer.precision": "bf16", "policy.core": "cortex", "policy.pattern": "AgSA", "policy.d_hidden": 32, "policy.num_layers": 1}
    trainer, _, rows = train_demo(tmp_path, **extra)
    assert trainer.device.type == DEV.type
    assert_finite_losses(rows)


def test_cortex_stack_runs_in_float32_under_cuda_autocast():
    from fiberlab.config import PolicyConfig
    from fiberlab.cortex.base import map_state
    from fiberlab.policies import build_policy

    torch.manual_seed(0)
    cfg = PolicyConfig(name="mlp_lstm", num_actions=3, core="cortex", pattern=["AgSA", "L"], d_hidden=16, num_layers=2, obs_shape=[4], linear=[16])
    policy = build_policy(cfg).to(DEV)
    obs = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(0)).mul(2).to(DEV)
    with torch.no_grad():
        ref_logits, _, _ = policy(obs)
        with torch.autocast(DEV.type, dtype=torch.bfloat16):
            logits, values, state = policy(obs)
    leaves = []
    map_state(state, lambda t: leaves.append(t) or t)
    assert leaves and all(t.dtype == torch.float32 and t.device.type == DEV.type for t in leaves)
    assert torch.isfinite(logits.float()).all() and torch.isfinite(values.float()).all()
    torch.testing.assert_close(logits.float(), ref_logits, atol=0.05, rtol=0.05)


# ============================================================================ cortex kernels: cuda against the cpu
def build_module(name: str) -> torch.nn.Module:
    from fiberlab.cortex.cells.agalite import AGaLiTeCell, AGaLiTeConfig
    from fiberlab.cortex.cells.axon import AxonCell, AxonConfig, set_eligibility_traces
    from fiberlab.cortex.cells.conv import CausalConvCell, CausalConvConfig
    from fiberlab.cortex.cells.lstm import LSTMCell, LSTMConfig
    from fiberlab.cortex.cells.mlstm import MLSTMCell, MLSTMConfig
    from fiberlab.cortex.cells.slstm import SLSTMCell, SLSTMConfig
    from fiberlab.cortex.cells.xl import XLCell, XLConfig
    from fiberlab.cortex.pattern import build_stack

    if name == "A+traces":
        cell = AxonCell(AxonConfig(d_hidden=H))
        set_eligibility_traces(cell, True)
        return cell
    return {
        "Ag": lambda: AGaLiTeCell(AGaLiTeConfig(d_hidden=H, n_heads=4, eta=3, r=2)),
        "X": lambda: XLCell(XLConfig(d_hidden=H, n_heads=4, mem_len=8)),
        "X^": lambda: XLCell(XLConfig(d_hidden=H, n_heads=4, mem_len=8, axonify=True)),
        "M": lambda: MLSTMCell(MLSTMConfig(d_hidden=H, num_heads=4, chunk_size=8)),
        "S": lambda: SLSTMCell(SLSTMConfig(d_hidden=H, num_heads=4)),
        "A": lambda: AxonCell(AxonConfig(d_hidden=H)),
        "L": lambda: LSTMCell(LSTMConfig(d_hidden=H)),
        "C": lambda: CausalConvCell(CausalConvConfig(d_hidden=H)),
        "AgSA": lambda: build_stack("AgSA", H, 1),
    }[name]()


MODULES = ["Ag", "X", "X^", "M", "S", "A", "A+traces", "L", "C", "AgSA"]


def make_pair(name: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same module on the CPU and on the GPU, every parameter moved off its init (zero-initialised
    paths would hide bugs)."""
    torch.manual_seed(0)
    cpu = build_module(name).to(dtype)
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return cpu, copy.deepcopy(cpu).to(DEV)


def inputs(dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, H, generator=g, dtype=dtype)
    resets = torch.rand(B, T, generator=g) < 0.1
    resets[0, 0] = resets[1, T1 + 5] = resets[2, T1 + 6] = resets[2, T1 + 7] = True  # at the start, mid-way, two in a row
    w = torch.randn(B, T, H, generator=g, dtype=dtype)  # the loss's random weights: every output's gradient counts
    return x, resets, w


def sequence_run(module, x, resets, w):
    """Two sequence calls (the second from the first's state), then d(sum w*y)/d(x, parameters)."""
    x = x.clone().requires_grad_()
    y1, s1 = module(x[:, :T1], None, resets=resets[:, :T1])
    y2, s2 = module(x[:, T1:], s1, resets=resets[:, T1:])
    y = torch.cat([y1, y2], 1)
    names, params = zip(*[(n, p) for n, p in module.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad((y * w).sum(), [x, *params], allow_unused=True)
    return y.detach(), flat_state(s2), dict(zip(("x", *names), grads))


def on_cpu(t):
    return t.detach().cpu() if isinstance(t, torch.Tensor) else t


def assert_near(got: torch.Tensor, ref: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    got = on_cpu(got)
    if got.is_complex():
        got, ref = torch.view_as_real(got), torch.view_as_real(ref)
    if dtype == F64:
        torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-7, msg=lambda m: f"{what}: {m}")
    else:  # float32: the norm of the difference against the norm of the value
        err, size = (got.double() - ref.double()).norm().item(), ref.double().norm().item()
        assert err <= 2e-3 * size + 1e-4 * math.sqrt(ref.numel()), f"{what}: |cuda - cpu| = {err:.3g}, |cpu| = {size:.3g}"


def assert_states_near(s: dict, s_ref: dict, what: str, dtype: torch.dtype) -> None:
    assert sorted(s) == sorted(s_ref), what
    for k, ref in s_ref.items():
        if ref.is_floating_point() or ref.is_complex():
            assert_near(s[k], ref, f"{what} state[{k}]", dtype)
        else:  # counters and masks: exactly
            assert torch.equal(on_cpu(s[k]), ref), f"{what} state[{k}]"


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", MODULES)
def test_sequence_mode_on_cuda_equals_the_cpu(name, dtype):
    cpu, gpu = make_pair(name, dtype)
    x, resets, w = inputs(dtype)
    y_ref, s_ref, g_ref = sequence_run(cpu, x, resets, w)
    y, s, g = sequence_run(gpu, x.to(DEV), resets.to(DEV), w.to(DEV))
    assert y.device.type == DEV.type
    assert_near(y, y_ref, f"{name} output", dtype)
    assert_states_near(s, s_ref, name, dtype)
    assert sorted(g) == sorted(g_ref)
    for k in g_ref:
        assert (g[k] is None) == (g_ref[k] is None), f"{name} d/d{k}: gradient on one device only"
        if g_ref[k] is not None:
            assert_near(g[k], g_ref[k], f"{name} d/d{k}", dtype)


@pytest.mark.parametrize("mode", ["inference", "grad"])
@pytest.mark.parametrize("name", MODULES)
def test_step_mode_on_cuda_equals_the_cpu_sequence(name, mode):
    """The acting path: one step per call on the GPU, carrying the state, against one CPU sequence call."""
    cpu, gpu = make_pair(name, F64)
    x, resets, _ = inputs(F64)
    with torch.no_grad():
        y_ref, s_ref = cpu(x, None, resets=resets)
    ctx = torch.inference_mode() if mode == "inference" else torch.enable_grad()
    xd, rd, state, ys = x.to(DEV), resets.to(DEV), None, []
    with ctx:
        for t in range(T):
            y, state = gpu(xd[:, t], state, resets=rd[:, t])
            ys.append(y)
    assert_near(torch.stack(ys, 1), y_ref, f"{name} step outputs", F64)
    assert_states_near(flat_state(state), flat_state(s_ref), f"{name} step", F64)


# ============================================================================ torchrun and NCCL
def test_torchrun_one_process_trains_on_cuda(tmp_path):
    from fiberlab.rl.logging import read_metrics
    from fiberlab.rl.run_dir import list_checkpoints

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "fiberlab", "train",
           *tiny(tmp_path, epochs=2), "device=cuda", "tensorboard=false"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_with_src(), timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(tmp_path / "t")
    assert [row["epoch"] for row in rows] == [1, 2] and [row["agent_step"] for row in rows] == [64, 128]
    assert [c[0] for c in list_checkpoints(tmp_path / "t")] == [1, 2]


NCCL_SCRIPT = r'''
"""Run by torchrun with one process: fiberlab's distributed helpers over a real NCCL group."""
import json, os, types
import torch, torch.distributed as dist
from torch import nn
from fiberlab.rl import distributed as du

results = {}

def check(name, fn):
    try:
        results[name] = {"ok": True, "value": fn()}
    except Exception as e:  # each check reports on its own
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800]}

dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
torch.cuda.set_device(dev)
# the trainer's own call: with WORLD_SIZE=1 it joins no group, so the group below is made by hand
check("init_distributed_world_1_is_plain", lambda: du.init_distributed(dev).enabled is False and not dist.is_initialized())
check("nccl_group", lambda: dist.init_process_group(backend="nccl") or dist.get_backend())
# a DistInfo that says "enabled" although the world is 1, so the helpers really call the collectives
info = types.SimpleNamespace(rank=0, world_size=1, local_rank=dev.index, enabled=True, is_main=True)

def all_reduce_on_gpu():
    t = torch.arange(3.0, device=dev)
    dist.all_reduce(t)
    torch.cuda.synchronize()
    return t.tolist()

def ddp_step():
    from fiberlab.config import PolicyConfig
    from fiberlab.policies import build_policy
    torch.manual_seed(0)
    policy = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, linear=[8], core_hidden=8))
    policy.encoder.append(nn.BatchNorm1d(8))
    wrapped = du.DistributedPolicy(policy.to(dev), device_ids=[dev.index])
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-3, fused=True)
    logits, values, _ = wrapped(torch.randn(3, 6, 4, device=dev))  # training mode: SyncBatchNorm's CUDA path
    (logits.pow(2).mean() + values.pow(2).mean()).backward()
    opt.step()
    torch.cuda.synchronize()
    return {"sync_batchnorm": any(isinstance(m, nn.SyncBatchNorm) for m in wrapped.modules()),
            "grads_finite": all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in wrapped.parameters()),
            "no_module_prefix": all(not k.startswith("module.") for k in wrapped.state_dict())}

check("all_reduce_cuda_tensor", all_reduce_on_gpu)
check("broadcast_object", lambda: du.broadcast_object({"run": "r1"}, info))
check("barrier", lambda: du.barrier(info) or True)
check("all_reduce_mean", lambda: du.all_reduce_mean([1.0, 2.0, 3.0], info))
check("ddp_step", ddp_step)
if dist.is_initialized():
    dist.destroy_process_group()
print("RESULT " + json.dumps(results))
'''
NCCL_EXPECTED = {
    "init_distributed_world_1_is_plain": True,
    "nccl_group": "nccl",
    "all_reduce_cuda_tensor": [0.0, 1.0, 2.0],
    "broadcast_object": {"run": "r1"},
    "barrier": True,
    "all_reduce_mean": [1.0, 2.0, 3.0],  # the trainer's epoch statistics (trainer.py), averaged over ranks
    "ddp_step": {"sync_batchnorm": True, "grads_finite": True, "no_module_prefix": True},
}


@pytest.fixture(scope="module")
def nccl_results(tmp_path_factory):
    script = tmp_path_factory.mktemp("nccl") / "nccl_check.py"
    script.write_text(NCCL_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_with_src(), timeout=240, cwd=ROOT)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"exit code {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("check", list(NCCL_EXPECTED))
def test_nccl_under_torchrun_one_process(nccl_results, check):
    got = nccl_results[check]
    assert got["ok"], f"{check}: {got.get('error')}"
    assert got["value"] == NCCL_EXPECTED[check]
