"""Checkpoint compression (zstd, lz4, gzip): compress and decompress files and folders.

This is the module to import (``from fiberlab.checkpoint import compression``); it also names
what its two helpers provide, so callers need no other:

- ``compression_codecs.py``: methods, detection (:func:`detect`), levels, the streaming encoder
  and decoder of each method, the byte shuffle;
- ``compression_container.py``: the compressed file's layout (see its docstring: the shuffle
  marker, the size caps that refuse decompression bombs), reading one (:func:`open_plain_stream`,
  :func:`decompressed`, :func:`info`) and encoding or decoding one file atomically.

Every output is written to ``<dst>.tmp`` and renamed when complete and synced, so an interrupted
run leaves nothing under the final name. Loading reads compressed files directly
(``format.read_tensors``); these functions are for rewriting files on disk.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fiberlab.checkpoint.base import CheckpointError, file_sha256
from fiberlab.checkpoint.compression_codecs import (
    EXTENSION_OF,
    EXTENSIONS,
    METHODS,
    check_level,
    detect,
    method_by_magic,
)
from fiberlab.checkpoint.compression_container import (
    MARKER,
    SHUFFLE_MAGIC,
    Payload,
    decode_file,
    decompressed,
    encode_file,
    info,
    open_plain_stream,
)
from fiberlab.errors import first_line

__all__ = [
    "EXTENSIONS", "EXTENSION_OF", "MARKER", "METHODS", "SHUFFLE_MAGIC", "check_level", "compress_file", "compress_path",
    "decompress_file", "decompress_path", "decompressed", "detect", "info", "open_plain_stream",
]


def compress_file(src: str | Path, dst: str | Path | None = None, *, method: str = "zstd", level: int | None = None, shuffle: bool = False, sync: bool = True) -> Path:
    """Compress plain checkpoint ``src`` to ``dst`` (default: ``src`` + ``.zst``/``.lz4``/``.gz``).

    Streams 1 MiB at a time; ``shuffle`` byte-shuffles float tensors first (see
    ``compression_container``). Written to ``<dst>.tmp``, synced (unless ``sync=False``, for
    scratch files), then renamed. CheckpointError for an unknown method or level, if ``src`` is
    not a whole safetensors file or is compressed already, or if ``dst`` is ``src``.
    """
    level = check_level(method, level)
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(src.name + EXTENSION_OF[method])
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{src}: the output would overwrite the input")
    return encode_file(src, dst, method, level, shuffle, sync=sync)


def _default_plain_name(src: Path) -> Path:
    return src.with_suffix("") if src.suffix in EXTENSIONS else src


def decompress_file(src: str | Path, dst: str | Path | None = None, *, sync: bool = True) -> Path:
    """Decompress ``src`` to ``dst`` (default: ``src`` without ``.zst``/``.lz4``/``.gz``; a
    compressed file without such an extension is replaced by its plain version).

    Streams, undoes the byte shuffle, caps the output at the declared size; written to
    ``<dst>.tmp``, synced (unless ``sync=False``), then renamed. CheckpointError if ``src`` is
    corrupt or not compressed.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else _default_plain_name(src)
    return decode_file(src, dst, sync=sync)


# ============================================================================ files and directories
def _sha256_of(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _verify(plain: Path, packed: Path) -> None:
    """CheckpointError unless ``packed`` decompresses to exactly the bytes of ``plain``."""
    with Payload(packed) as payload:
        if _sha256_of(payload.chunks()) != file_sha256(plain):
            raise CheckpointError(f"{packed}: verification failed (does not decompress to {plain.name})")


def _row(path: Path, output: Path | None, status: str, reason: str = "", bytes_in: int = 0, bytes_out: int = 0) -> dict[str, Any]:
    return {"path": str(path), "output": None if output is None else str(output), "status": status, "reason": reason, "bytes_in": bytes_in, "bytes_out": bytes_out}


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def compress_path(path: str | Path, *, method: str, level: int | None = None, shuffle: bool = False, remove_originals: bool = False, recursive: bool = False) -> list[dict[str, Any]]:
    """Compress one checkpoint or every ``*.safetensors`` in a directory (``recursive``: below too).

    One row per file: ``{"path", "output", "status": "ok"|"skipped"|"failed", "reason",
    "bytes_in", "bytes_out"}``. Skipped: already compressed, or the output exists. A failure
    leaves no output. With ``remove_originals`` an original is removed only after its output has
    been decompressed again and matched byte for byte. CheckpointError for a bad method or level.
    """
    level = check_level(method, level)
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in (path.rglob("*.safetensors") if recursive else path.glob("*.safetensors")) if p.is_file())
    else:
        files = [path]
    rows = []
    for src in files:
        dst = src.with_name(src.name + EXTENSION_OF[method])
        size = _size(src)
        try:
            already = method_by_magic(src)
        except OSError as e:
            rows.append(_row(src, None, "failed", f"cannot read ({e.strerror or first_line(e)})", size))
            continue
        if already is not None or src.suffix in EXTENSIONS:
            rows.append(_row(src, None, "skipped", f"already compressed ({already or EXTENSIONS[src.suffix]})", size))
            continue
        if dst.exists():
            rows.append(_row(src, dst, "skipped", "output exists", size, _size(dst)))
            continue
        try:
            encode_file(src, dst, method, level, shuffle, sync=True)
            if remove_originals:
                try:
                    _verify(src, dst)
                except BaseException:
                    dst.unlink(missing_ok=True)
                    raise
                src.unlink()
        except (CheckpointError, OSError) as e:
            reason = first_line(e) if isinstance(e, CheckpointError) else f"cannot write ({e.strerror or first_line(e)})"
            rows.append(_row(src, None, "failed", reason, size))
            continue
        rows.append(_row(src, dst, "ok", "original removed" if remove_originals else "", size, _size(dst)))
    return rows


def decompress_path(path: str | Path, *, remove_originals: bool = False, recursive: bool = False) -> list[dict[str, Any]]:
    """Decompress one checkpoint or every ``*.safetensors.{zst,lz4,gz}`` in a directory.

    Rows as :func:`compress_path`. Skipped: not compressed, or the output exists. A compressed
    file without a compression extension is decompressed in place.
    """
    path = Path(path)
    if path.is_dir():
        pats = [f"*.safetensors{ext}" for ext in EXTENSIONS]
        found = {p for pat in pats for p in (path.rglob(pat) if recursive else path.glob(pat)) if p.is_file()}
        files = sorted(found)
    else:
        files = [path]
    rows = []
    for src in files:
        size = _size(src)
        try:
            method = method_by_magic(src) or detect(src)
        except OSError as e:
            rows.append(_row(src, None, "failed", f"cannot read ({e.strerror or first_line(e)})", size))
            continue
        if method is None:
            rows.append(_row(src, None, "skipped", "not compressed", size))
            continue
        dst = _default_plain_name(src)
        if dst != src and dst.exists():
            rows.append(_row(src, dst, "skipped", "output exists", size, _size(dst)))
            continue
        try:
            decode_file(src, dst, sync=True)
        except (CheckpointError, OSError) as e:
            reason = first_line(e) if isinstance(e, CheckpointError) else f"cannot write ({e.strerror or first_line(e)})"
            rows.append(_row(src, None, "failed", reason, size))
            continue
        removed = remove_originals and dst != src
        if removed:
            src.unlink()
        rows.append(_row(src, dst, "ok", "original removed" if removed else ("in place" if dst == src else ""), size, _size(dst)))
    return rows
