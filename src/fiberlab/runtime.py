"""Process-wide settings of the CPU runtime that training loops share: the allocator and threads.

Two things every CPU training loop here wants, each a one-time, process-wide choice:

- :func:`keep_freed_memory`: glibc keeps freed blocks instead of handing them back to the kernel,
  so the activations a training step allocates and frees every time are not page-faulted in anew.
- :func:`trainer_threads`: how many torch threads acting and the update may use. The env steps
  in this process, between the network's calls, never at the same time, so while the network
  trains nothing else runs and every core it may use can work on the update's large matrices.
"""
from __future__ import annotations

import ctypes
import os
import sys


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (a process-wide setting, once).

    A training step allocates and frees the same tens of megabytes of activations every time. By
    default glibc gives large blocks back to the kernel (mmap above a threshold, heap trimming), so
    each step faults the same pages in again: about 30 000 page faults and 60-70 ms of kernel time
    per step at batch 512 on this CPU (AD training). Raising the mmap threshold to its maximum
    (32 MB) and the trim threshold to 1 GB keeps them; the cost is a resident size that does not
    shrink after a peak. Blocks over 32 MB are still mapped and unmapped each time. No effect
    (False) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 1 << 25))
    except (OSError, AttributeError):
        return False


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(requested: int | None, processes_per_node: int = 1, at_least: int = 1) -> int:
    """A torch thread count: ``requested``, or (``None``, auto) this process's share of the cores,
    ``available_cores() // processes_per_node`` (DDP ranks on one machine split them), and never
    fewer than ``at_least``.

    Launchers that run several trainings side by side on one machine (``pipeline --jobs``, local
    sweeps) pass explicit values, since each run cannot see the others.
    """
    if requested is not None:
        return max(requested, at_least)
    return max(at_least, available_cores() // max(1, processes_per_node))


def trainer_threads(torch_threads: int | None, update_threads: int | None, processes_per_node: int = 1) -> tuple[int, int]:
    """(acting, update) thread counts of a training run: ``trainer.torch_threads`` while the env
    steps and the network acts, ``trainer.update_threads`` (at least as many) for the PPO update."""
    acting = resolve_threads(torch_threads, processes_per_node)
    return acting, resolve_threads(update_threads, processes_per_node, at_least=acting)
