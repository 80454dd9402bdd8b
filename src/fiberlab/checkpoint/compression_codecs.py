"""The byte-level tools of checkpoint compression: which methods exist, how a file says which one
it uses, the streaming encoder and decoder of each, and the byte shuffle.

Nothing here knows what a checkpoint holds: the compressed-file layout built from these pieces
(where the shuffle marker goes, what is shuffled, the size caps) is ``compression_container.py``;
compressing files and folders is ``compression.py``.

Why shuffle: in a float32 weight the sign/exponent byte repeats a handful of values and the low
mantissa bytes are noise. Byte by byte they are mixed and a compressor finds almost nothing
(zstd-3 saves ~7 %); grouped by significance, the exponent plane compresses well (~14 % saved).
"""
from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import lz4.frame
import numpy as np
import zstandard

from fiberlab.checkpoint.base import CheckpointError

EXTENSIONS = {".zst": "zstd", ".lz4": "lz4", ".gz": "gzip"}
MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4", b"\x1f\x8b": "gzip"}
METHODS = ("zstd", "lz4", "gzip")
EXTENSION_OF = {m: ext for ext, m in EXTENSIONS.items()}
DEFAULT_LEVELS = {"zstd": 3, "lz4": 0, "gzip": 6}
LEVEL_RANGES = {"zstd": (1, 22), "lz4": (0, 16), "gzip": (0, 9)}
CHUNK = 1 << 20  # bytes read or written at a time
ZSTD_MAX_WINDOW = 1 << 27  # a zstd frame asking for a larger window is refused by zstd
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype -> bytes per element


# --------------------------------------------------------------------------- methods and levels
def detect(path: str | Path) -> str | None:
    """The compression method of ``path``: by extension first, then by magic bytes; None if plain."""
    path = Path(path)
    if path.suffix in EXTENSIONS:
        return EXTENSIONS[path.suffix]
    return method_by_magic(path)


def method_by_magic(path: str | Path) -> str | None:
    """The compression method the first bytes of ``path`` announce, or None (OSError if unreadable)."""
    with open(path, "rb") as f:
        head = f.read(4)
    for magic, method in MAGIC.items():
        if head.startswith(magic):
            return method
    return None


def check_level(method: str, level: int | None) -> int:
    """The level to use for ``method``; CheckpointError for an unknown method or a level out of range."""
    if method not in METHODS:
        raise CheckpointError(f"unknown compression method {method!r}: use one of {', '.join(METHODS)}")
    if level is None:
        return DEFAULT_LEVELS[method]
    lo, hi = LEVEL_RANGES[method]
    if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
        raise CheckpointError(f"{method} level {level!r} is out of range: use {lo} to {hi}")
    return level


# --------------------------------------------------------------------------- byte shuffle
def shuffle_bytes(buf: bytes, k: int) -> bytes:
    """Byte ``j`` of every ``k``-byte element together (plane ``j``), planes in order."""
    return np.frombuffer(buf, dtype=np.uint8).reshape(-1, k).T.tobytes()


def unshuffle_bytes(buf: bytes, k: int) -> bytes:
    """The inverse of :func:`shuffle_bytes`."""
    planes = np.frombuffer(buf, dtype=np.uint8).reshape(k, -1)
    out = np.empty((planes.shape[1], k), dtype=np.uint8)
    for j in range(k):  # plane by plane: ~3x faster than copying the transposed view
        out[:, j] = planes[j]
    return out.tobytes()


def shuffle_segments(tensors: list[tuple[str, int, int]], data_len: int, shuffle: bool) -> list[tuple[int, int, int]]:
    """``(begin, end, k)`` pieces covering ``[0, data_len)`` in order; ``k`` > 1: shuffle by ``k``.

    ``tensors``: ``(dtype, begin, end)`` of each (validated: they tile the data). With ``shuffle``
    every float tensor whose length is a multiple of its element size is shuffled by that size."""
    if not shuffle:
        return [(0, data_len, 1)] if data_len else []
    out = []
    for dtype, b, e in sorted(tensors, key=lambda t: (t[1], t[2])):  # they tile the data (validated)
        if b < e:
            k = FLOAT_DTYPES.get(dtype, 1)
            out.append((b, e, k if (e - b) % k == 0 else 1))
    return out


def pieces(segments: list[tuple[int, int, int]], block: int) -> Iterator[tuple[int, int]]:
    """``(length, k)`` of each read: shuffled segments in blocks, others in CHUNK pieces."""
    for b, e, k in segments:
        step = block if k > 1 else CHUNK
        for off in range(b, e, step):
            yield min(step, e - off), k


# --------------------------------------------------------------------------- streams
class Encoder:
    """One method's streaming compressor writing into an open file: ``write`` then ``close``."""

    def __init__(self, out: BinaryIO, method: str, level: int, size: int):
        self.method, self._out = method, out
        if method == "zstd":
            cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
            self._w: Any = cctx.stream_writer(out, size=size, closefd=False)
        elif method == "lz4":
            self._w = lz4.frame.LZ4FrameCompressor(compression_level=level, content_checksum=True, block_size=lz4.frame.BLOCKSIZE_MAX1MB)
            out.write(self._w.begin(source_size=size))
        else:
            self._w = gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=out, mtime=0)

    def write(self, data: bytes) -> None:
        if self.method == "lz4":
            self._out.write(self._w.compress(data))
        else:
            self._w.write(data)

    def close(self) -> None:
        if self.method == "lz4":
            self._out.write(self._w.flush())
        else:
            self._w.close()


def open_decoder(f: BinaryIO, method: str) -> Any:
    """A reader of the decompressed bytes of open file ``f`` (``read(n)``, ``close()``)."""
    if method == "zstd":
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        return dctx.stream_reader(f, read_size=CHUNK // 8, read_across_frames=True, closefd=False)
    if method == "lz4":
        return lz4.frame.LZ4FrameFile(f, mode="rb")
    return gzip.GzipFile(fileobj=f, mode="rb")


# Exceptions a decoder's read raises for a damaged stream (an OSError is the disk's, not the data's).
DECODE_ERRORS = (zstandard.ZstdError, RuntimeError, EOFError, zlib.error, gzip.BadGzipFile, ValueError)


def zstd_structure_error(f: BinaryIO, size: int) -> str | None:
    """Walk the zstd frames of ``f`` (block headers only): None if whole, else what is wrong.

    zstd's stream reader stops silently where a file is cut; this catches such a cut, even one
    inside the final checksum.
    """
    pos = 0
    while pos < size:
        f.seek(pos)
        magic = f.read(4)
        if len(magic) < 4:
            return "stream ends inside a frame"
        m = int.from_bytes(magic, "little")
        if m & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
            raw = f.read(4)
            if len(raw) < 4:
                return "stream ends inside a frame"
            pos += 8 + int.from_bytes(raw, "little")
            continue
        if m != 0xFD2FB528:
            return "unknown frame"
        fhd = f.read(1)
        if not fhd:
            return "stream ends inside a frame"
        d = fhd[0]
        single = (d >> 5) & 1
        pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[d & 3] + (single, 2, 4, 8)[d >> 6]
        while True:
            f.seek(pos)
            raw = f.read(3)
            if len(raw) < 3:
                return "stream ends inside a frame"
            v = int.from_bytes(raw, "little")
            kind, bsize = (v >> 1) & 3, v >> 3
            if kind == 3:
                return "reserved block type"
            pos += 3 + (1 if kind == 1 else bsize)
            if v & 1:
                break
        pos += 4 if (d >> 2) & 1 else 0
    return "stream ends inside a frame" if pos > size else None
