#!/usr/bin/env python3
"""``make gpu-check``: the CUDA tests and the throughput and cortex benchmarks on a GPU, in under 8 minutes.

Runs on a CUDA machine with PyTorch preinstalled, network or not (docs/gpu.md):

1. ``cuda_probe``: is there a CUDA device? If not: one line ``no CUDA device: ...``, exit 2, nothing
   written.
2. ``setup``: if fiberlab's imports fail and ``.whl/`` exists (``scripts/gpu_wheels.sh``), install
   the carried wheels that are missing into a temporary site dir (put on ``PYTHONPATH`` with
   ``src/`` for every later step); log every requirement the installed versions miss.
3. ``cuda_tests``: ``pytest -m cuda`` on the test files that use the ``cuda`` marker.
4. ``train_throughput``: ``benchmarks/train_throughput.py --device cuda`` (every group).
5. ``cortex_cells``: ``benchmarks/cortex_cells.py --device cuda``.

Each step has its own timeout (its process group is killed at it) and the whole run stops at
``DEADLINE_S``; a step that fails or times out does not stop the next. Each step's output goes to
``<step>.log`` in the output folder, and ``summary.json`` there (rewritten after every step) has
each step's exit code, seconds and status, the device name and the torch version. Exit code: 0 all
steps ok, 1 one failed or timed out, 2 no CUDA device or bad arguments.

    python3 scripts/gpu_check.py                  # out: $OUT/gpu_check if OUT is set, else gpu_check_out/
    python3 scripts/gpu_check.py --dry-run        # print the plan, run nothing
    python3 scripts/gpu_check.py --out DIR --step-timeout cortex_cells=120

``--allow-cpu`` is for this repository's tests only: the same pipeline on the CPU with tiny
benchmark budgets (the CUDA tests then skip), so the orchestration is tested where no GPU is.

Standard library only at the top level (torch is imported by the probe, in a child process), so
this file starts on any Python 3.11+.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LIMIT_S = 480  # the budget for the whole check: 8 minutes
DEADLINE_S = 470  # the runner stops whatever still runs at this point
WHEEL_DIR = ROOT / ".whl"
SUMMARY = "summary.json"

# Step timeouts in seconds: (cuda, --allow-cpu). The CUDA ones add up to 460 s < LIMIT_S.
TIMEOUTS = {
    "cuda_probe": (20, 60),
    "setup": (40, 60),
    "cuda_tests": (150, 90),
    "train_throughput": (150, 120),
    "cortex_cells": (100, 60),
}
WHAT = {
    "cuda_probe": "torch imports, torch.cuda.is_available(), device name, torch and CUDA versions",
    "setup": "carried wheels installed where imports are missing; versions of every requirement logged",
    "cuda_tests": "the tests marked cuda: trainer on device=auto -> cuda, bf16 autocast, cortex GPU kernels against the CPU, torchrun + NCCL",
    "train_throughput": "agent steps/s of every row of the groups demo, beam_rider, arena (env alone, env + forward, our trainer, ...), networks on cuda",
    "cortex_cells": "forward+backward tokens/s of every cortex cell and AgSA vs nn.LSTM, and the acting step vs nn.LSTMCell, on cuda",
}

PROBE = r"""
import json, sys
try:
    import torch
except Exception as e:
    print(json.dumps({"error": f"torch is not importable by {sys.executable} ({type(e).__name__}: {e})"}))
    raise SystemExit(0)
info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "available": torch.cuda.is_available(),
        "python": sys.version.split()[0], "executable": sys.executable}
if info["available"]:
    p = torch.cuda.get_device_properties(0)
    info.update(device=torch.cuda.get_device_name(0), count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                memory_gib=round(p.total_memory / 2**30, 1))
    try:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as e:
        info["nccl"] = f"unavailable ({type(e).__name__})"
print(json.dumps(info))
"""


@dataclass
class Step:
    name: str
    cmd: list[str]
    timeout: float
    what: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> str:
        return f"{self.name}.log"


def cuda_test_files() -> list[str]:
    """The test files that use the ``cuda`` marker (found by text, so no test module is imported)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text(errors="replace"))


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else ROOT / "gpu_check_out"


def plan(cpu: bool, py: str, out: Path, site: str, overrides: dict[str, float] | None = None) -> list[Step]:
    """The steps, in order. ``cpu``: the --allow-cpu variant (device cpu, tiny benchmark budgets)."""
    t = {name: float(v[1] if cpu else v[0]) for name, v in TIMEOUTS.items()}
    t.update(overrides or {})
    dev = "cpu" if cpu else "cuda"
    pytest_cmd = [py, "-m", "pytest", "-v", "-m", "cuda", "-p", "no:cacheprovider", "--durations=15"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        pytest_cmd.append("--timeout=120")  # one hung test (a stuck NCCL init, say) does not eat the step
    if cpu:
        bench = ["--quick", "--only", "demo"]
        cells = ["--quick", "--only", "L,C"]
    else:
        # full budgets (docs/benchmarks.md) for the groups whose networks have work for a GPU: `small`
        # (1,588 parameters) would measure launch overhead; SB3 rows skip without stable-baselines3
        bench = ["--only", "demo,beam_rider,arena"]
        cells = ["--repeats", "3"]  # B=32, T=256, H=128, every row, the acting-step table at B=64
    tests = cuda_test_files() or ["tests/test_cuda.py"]
    return [
        Step("cuda_probe", [py, "-c", PROBE], t["cuda_probe"], WHAT["cuda_probe"]),
        Step("setup", [py, "scripts/gpu_wheels.py", "install", str(WHEEL_DIR.relative_to(ROOT)), site], t["setup"], WHAT["setup"]),
        Step("cuda_tests", pytest_cmd + tests, t["cuda_tests"], WHAT["cuda_tests"], {"OMP_NUM_THREADS": "1"}),
        Step("train_throughput", [py, "benchmarks/train_throughput.py", "--device", dev, *bench, "--repeats", "1", "--timeout", "60",
                                  "--json", str(out / "train_throughput.json")], t["train_throughput"], WHAT["train_throughput"]),
        Step("cortex_cells", [py, "benchmarks/cortex_cells.py", "--device", dev, *cells, "--json", str(out / "cortex_cells.json")],
             t["cortex_cells"], WHAT["cortex_cells"]),
    ]


def output_names(steps: list[Step]) -> list[str]:
    """Every file a run writes into the output folder (the device tool brings back 8 files at most)."""
    return [SUMMARY] + [s.log for s in steps if s.name != "cuda_probe"] + ["train_throughput.json", "cortex_cells.json"]


def _show(cmd: list[str]) -> str:
    """A command as a shell line, with the probe's code shown as ``<probe>``."""
    return " ".join("<probe>" if i and cmd[i - 1] == "-c" else shlex.quote(a) for i, a in enumerate(cmd))


def print_plan(steps: list[Step], cpu: bool, out: Path, deadline: float) -> None:
    budget = sum(s.timeout for s in steps)
    wheels = sorted(WHEEL_DIR.glob("*.whl")) if WHEEL_DIR.is_dir() else []
    size = sum(p.stat().st_size for p in wheels) / 2**20
    print("gpu-check plan (--dry-run: nothing is run)")
    print(f"  mode:    {'cpu (--allow-cpu: for tests of this script only)' if cpu else 'cuda'}; python {sys.executable}")
    print(f"  out dir: {out}  ({', '.join(output_names(steps))})")
    print(f"  wheels:  {WHEEL_DIR.relative_to(ROOT)}/: " + (f"{len(wheels)} wheels, {size:.1f} MiB; installed into a temp site dir where imports are missing"
                                                       if wheels else "none (fine where the imports work; else run scripts/gpu_wheels.sh first)"))
    print(f"  budget:  {budget:.0f} s of step timeouts; the whole run is stopped at {deadline:.0f} s (limit {LIMIT_S} s)")
    print(f"  {'step':<17} {'timeout':>7}  command")
    for s in steps:
        print(f"  {s.name:<17} {s.timeout:>5.0f} s  {_show(s.cmd)}")
    print("  what each step checks:")
    for s in steps:
        print(f"    {s.name}: {s.what}")


def probe(py: str, timeout: float) -> dict:
    """The probe's JSON (``error`` set when torch or the probe itself failed)."""
    try:
        r = subprocess.run([py, "-c", PROBE], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"the torch/CUDA probe did not answer within {timeout:.0f} s"}
    lines = r.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the torch/CUDA probe failed with exit code {r.returncode} ({tail})"}


def no_cuda_reason(info: dict) -> str | None:
    if "error" in info:
        return info["error"]
    if not info.get("available"):
        return (f"torch {info.get('torch')} (CUDA build {info.get('cuda_build') or 'none'}) sees no GPU: "
                "torch.cuda.is_available() is False")
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    """End the step's whole process group (torchrun workers, benchmark rows): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def pytest_counts(log: Path) -> dict[str, int]:
    """The counts of pytest's closing line (``3 passed, 1 skipped in 2.1s``), from the log."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(r"\b(passed|failed|skipped|errors?|no tests ran)\b.* in [\d.]+s", ln)]
    if not lines:
        return {}
    return {k.rstrip("s") if k.startswith("error") else k: int(n) for n, k in PYTEST_COUNTS.findall(lines[-1])}


def run_step(step: Step, env: dict[str, str], out: Path, remaining: float) -> dict:
    timeout = min(step.timeout, remaining)
    rec = {"step": step.name, "cmd": _show(step.cmd), "timeout_s": round(timeout, 1), "log": step.log}
    if timeout < 3:
        return {**rec, "status": "skipped", "rc": None, "seconds": 0.0, "note": "no time left in the budget"}
    log = out / step.log
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {_show(step.cmd)}\n# timeout {timeout:.0f} s, started {datetime.now(UTC).isoformat(timespec='seconds')}\n\n")
        f.flush()
        proc = subprocess.Popen(step.cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                env={**env, **step.env}, process_group=0)  # its own group: killed whole at the timeout
        timed_out = False
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.returncode
        except BaseException:
            _kill_group(proc)
            raise
        secs = time.monotonic() - t0
        f.write(f"\n# {'TIMED OUT: killed after' if timed_out else f'exit code {rc} after'} {secs:.1f} s\n")
    status = "timeout" if timed_out else ("ok" if rc == 0 else "failed")
    rec.update(status=status, rc=rc, seconds=round(secs, 1), timed_out=timed_out)
    return rec


def write_summary(out: Path, summary: dict) -> None:
    tmp = out / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / SUMMARY)


def parse_overrides(items: list[str]) -> dict[str, float]:
    over = {}
    for item in items:
        name, _, val = item.partition("=")
        if name not in TIMEOUTS:
            raise ValueError(f"bad --step-timeout {item!r}: steps are {', '.join(TIMEOUTS)}")
        try:
            over[name] = float(val)
        except ValueError:
            raise ValueError(f"bad --step-timeout {item!r}: give seconds, e.g. {name}=60") from None
        if over[name] <= 0:
            raise ValueError(f"bad --step-timeout {item!r}: seconds must be positive")
    return over


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT/gpu_check if OUT is set, else gpu_check_out/)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (steps, commands, timeouts, out dir) and run nothing")
    ap.add_argument("--allow-cpu", action="store_true", help="for this repository's tests only: run on the CPU with tiny budgets")
    ap.add_argument("--step-timeout", action="append", default=[], metavar="STEP=SECONDS", help=f"override one step's timeout; steps: {', '.join(TIMEOUTS)}")
    args = ap.parse_args(argv)
    try:
        overrides = parse_overrides(args.step_timeout)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    out = (args.out or default_out()).resolve()
    py = sys.executable
    cpu = args.allow_cpu
    site_placeholder = "<temp site dir>"
    steps = plan(cpu, py, out, site_placeholder, overrides)
    deadline_s = DEADLINE_S if not cpu else sum(s.timeout for s in steps) + 30
    if args.dry_run:
        print_plan(steps, cpu, out, deadline_s)
        return 0

    # killed from outside (a device tool's own limit): end the running step's process group on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start, t0 = datetime.now(UTC), time.monotonic()
    info = probe(py, steps[0].timeout)
    reason = no_cuda_reason(info)
    if reason and not (cpu and "error" not in info):
        print(f"no CUDA device: {reason}", file=sys.stderr)
        return 2

    out.mkdir(parents=True, exist_ok=True)
    for name in output_names(steps):  # a file left by an earlier run must not pass for this run's
        (out / name).unlink(missing_ok=True)
    site = tempfile.mkdtemp(prefix="fiberlab_gpu_site_")
    steps = plan(cpu, py, out, site, overrides)
    extra_path = [str(ROOT / "src"), site, os.environ.get("PYTHONPATH", "")]
    # OMP_NUM_THREADS=1 unless set: what `make` sets and the benchmarks' figures so far were taken with
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": os.pathsep.join(p for p in extra_path if p), "PYTHONUNBUFFERED": "1"}
    smi = shutil.which("nvidia-smi")
    summary = {
        "tool": "scripts/gpu_check.py", "mode": "cpu (--allow-cpu)" if cpu else "cuda", "ok": None,
        "device": info.get("device", "cpu") if not cpu else "cpu", "torch": info.get("torch"), "cuda": info.get("cuda_build"),
        "gpu": {k: info[k] for k in ("device", "count", "capability", "memory_gib", "nccl") if k in info},
        "python": info.get("python"), "host": platform.node(), "cpus": os.cpu_count(), "OMP_NUM_THREADS": env["OMP_NUM_THREADS"],
        "nvidia_smi": _nvidia_smi(smi) if smi and not cpu else None,
        "started": start.isoformat(timespec="seconds"), "elapsed_s": None, "limit_s": LIMIT_S,
        "budget_s": sum(s.timeout for s in steps), "out_dir": str(out), "site_dir": site,
        "steps": [{"step": "cuda_probe", "status": "ok", "rc": 0, "seconds": round(time.monotonic() - t0, 1), "probe": info}],
    }
    print(f"gpu-check: {summary['device']}, torch {summary['torch']}; output in {out}", flush=True)
    write_summary(out, summary)
    for step in steps[1:]:
        remaining = deadline_s - (time.monotonic() - t0)
        summary["steps"].append({"step": step.name, "status": "running"})
        write_summary(out, summary)
        rec = run_step(step, env, out, remaining)
        if step.name == "cuda_tests" and rec["status"] != "skipped":
            rec["tests"] = pytest_counts(out / step.log)
            if rec["status"] == "ok" and not cpu and not rec["tests"].get("passed"):
                rec.update(status="failed", note="no CUDA test passed (all skipped?)")
        summary["steps"][-1] = rec
        summary["elapsed_s"] = round(time.monotonic() - t0, 1)
        write_summary(out, summary)
        extra = f", tests {rec['tests']}" if rec.get("tests") else ""
        print(f"  {step.name:<17} {rec['status']:<8} rc {rec['rc']}  {rec['seconds']:6.1f} s  (log {out / step.log}){extra}", flush=True)
    summary["ok"] = all(s["status"] == "ok" for s in summary["steps"])
    summary["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_summary(out, summary)
    print(f"gpu-check: {'all steps ok' if summary['ok'] else 'FAILED: ' + ', '.join(s['step'] + ' ' + s['status'] for s in summary['steps'] if s['status'] != 'ok')}"
          f" in {summary['elapsed_s']:.0f} s; summary {out / SUMMARY}")
    shutil.rmtree(site, ignore_errors=True)
    return 0 if summary["ok"] else 1


def _nvidia_smi(smi: str) -> str | None:
    try:
        r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=15)
        return r.stdout.strip() or r.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    sys.exit(main())
