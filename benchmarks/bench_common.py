"""What every benchmark script shares: the source fallback, the reference policies, timing, and
the machine line printed with every figure.

Importing this module makes ``import fiberlab`` work from a plain checkout (``python
benchmarks/X.py`` without ``pip install -e .``): the repository's ``src/`` is put on the path when
the package is not installed.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

try:
    import fiberlab  # noqa: F401
except ImportError:
    sys.path.insert(0, str(SRC))


def reference_policies() -> dict[str, Any]:
    """The two published networks the checkpoint and fibration benchmarks measure: PufferLib's
    Atari policy on 105x80 grayscale frames and Metta's ``fast`` policy on mettagrid's 34x11x11."""
    from fiberlab.config import PolicyConfig

    return {
        "atari": PolicyConfig(name="atari", obs_shape=[1, 105, 80], num_actions=9, obs_scale=[255.0]),
        "fast": PolicyConfig(name="fast", obs_shape=[34, 11, 11], num_actions=5),
    }


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (the median: shared machines are noisy)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures across machines."""
    import torch

    return {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "-")}


def machine_line() -> str:
    m = machine()
    return (f"machine: {m['platform']}, {m['cpus']} CPUs, python {m['python']}, torch {m['torch']}, "
            f"torch threads {m['threads']}, OMP_NUM_THREADS={m['OMP_NUM_THREADS']}")
