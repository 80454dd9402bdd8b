"""What ``fiberlab ckpt bench`` measures: size, ratio and speed of every compression method, level
and shuffle setting on one checkpoint.

A measurement, not checkpoint I/O, so it is not in ``fiberlab.checkpoint.compression`` (which keeps
the codecs and the file I/O it times); and it is work, not parsing, so not in ``cli/`` either. The
command stays because it answers a user's question about their own file (which level for my
checkpoints?), which the reference benchmark cannot.
``benchmarks/checkpoint_io.py`` prints these same rows for its reference checkpoints. Imported
only when the command runs: it imports torch.
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fiberlab.checkpoint import compression
from fiberlab.checkpoint.base import CheckpointError, file_sha256

BENCH_LEVELS = {"gzip": (1, 6, 9), "lz4": (0, 9), "zstd": (1, 3, 9, 19)}


def _timed(fn: Callable[[], Any], min_time: float, max_repeats: int) -> float:
    """Median seconds of ``fn()``, repeated until ``min_time`` has passed (at most max_repeats)."""
    times: list[float] = []
    while len(times) < max_repeats and (not times or sum(times) < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(path: str | Path, *, methods: Sequence[str] = ("gzip", "lz4", "zstd"), levels: Mapping[str, Sequence[int]] | Sequence[int] | None = None, shuffle: Sequence[bool] = (False, True), min_time: float = 0.3, max_repeats: int = 20, tmp_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Size, ratio and speed of every method, level and shuffle setting on checkpoint ``path``.

    ``levels``: per method (a mapping), the same for all (a sequence) or BENCH_LEVELS. Each
    setting compresses the real file to a temporary file and decompresses it back (to disk,
    without fsync), repeating a small file until ``min_time`` has passed; the median time is
    used, and the round trip is checked byte for byte. Rows: method, level, shuffle, size
    (compressed bytes), original, ratio (compressed / original), saved_percent, compress_mb_s
    and decompress_mb_s (MB = 10^6 bytes of the original per second).
    """
    path = Path(path)
    for m in methods:
        compression.check_level(m, None)
    with contextlib.ExitStack() as stack:
        src = path if compression.detect(path) is None else stack.enter_context(compression.decompressed(path, tmp_dir))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fiberlab-bench-", dir=tmp_dir)))
        original = src.stat().st_size
        digest = file_sha256(src)
        rows = []
        for method in methods:
            if levels is None:
                lv: Sequence[int] = BENCH_LEVELS[method]
            elif isinstance(levels, Mapping):
                lv = levels.get(method, BENCH_LEVELS[method])
            else:
                lv = levels
            for level in lv:
                level = compression.check_level(method, level)
                for sh in shuffle:
                    packed, plain = work / f"c{compression.EXTENSION_OF[method]}", work / "d.safetensors"
                    t_c = _timed(lambda: compression.compress_file(src, packed, method=method, level=level, shuffle=sh, sync=False), min_time, max_repeats)  # noqa: B023 - called in this iteration
                    t_d = _timed(lambda: compression.decompress_file(packed, plain, sync=False), min_time, max_repeats)  # noqa: B023 - called in this iteration
                    if file_sha256(plain) != digest:
                        raise CheckpointError(f"{path}: {method}-{level} round trip differs")
                    size = packed.stat().st_size
                    rows.append({
                        "method": method, "level": level, "shuffle": bool(sh), "size": size, "original": original,
                        "ratio": size / original, "saved_percent": 100.0 * (1 - size / original),
                        "compress_mb_s": original / t_c / 1e6, "decompress_mb_s": original / t_d / 1e6,
                    })
        return rows
