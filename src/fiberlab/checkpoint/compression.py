"""Checkpoint compression (zstd, lz4, gzip): detection, streaming (de)compression, byte shuffle.

Container
---------
A compressed checkpoint is one ordinary stream of its method: a zstd frame (content size and
content checksum written), an lz4 frame (content checksum) or a gzip member (CRC-32). What it
decompresses to, the *payload*, is:

- without shuffle: the original safetensors file, byte for byte. ``zstd -d``, ``lz4 -d`` and
  ``gunzip`` give the original file back.
- with shuffle::

      8-byte header length | header JSON | shuffle marker (32 bytes) | shuffled tensor data

  The header is the original one, unchanged, so reading the manifest decompresses only as far as
  the header either way. The marker sits between the header and the data:
  ``<8s I I Q 8s>`` = magic ``b"FIBSHUF1"``, version 1, the block size in bytes, the data length
  (the largest ``data_offsets`` end) and the first 8 bytes of the sha256 of the header bytes
  before it. In the data, the bytes of every float tensor (F16, BF16, F32, F64) are byte-shuffled
  in blocks of the marker's block size (1 MiB): within a block of ``m`` elements of ``k`` bytes,
  byte ``j`` of every element comes together (plane ``j`` = bytes ``j, j+k, j+2k, ...``), planes
  in order. Everything else (other dtypes, any gap between tensors) is copied as is. So a stock
  decompressor's output of a shuffled file is 32 bytes longer than its header declares, and
  safetensors refuses it: it can never be loaded by mistake as wrong weights.

Why shuffle: in a float32 weight the sign/exponent byte repeats a handful of values and the low
mantissa bytes are noise. Byte by byte they are mixed and a compressor finds almost nothing
(zstd-3 saves ~7 %); grouped, the exponent plane compresses well (~14 % saved in all).

Safety
------
- The plain size is what the header declares: 8 + header length + the largest ``data_offsets``
  end. The decoder asks the decompressor for exactly that many bytes, then for one more: if there
  is one, the file is refused (``... refused: decompressed data exceeds the N bytes its header
  declares``). A header length over ``format.MAX_HEADER_BYTES`` is refused before anything else.
  Reads go in 1 MiB pieces, so a lying header never makes a big allocation by itself, and a
  zstd window over 128 MiB is refused by zstd.
- A stream that ends early, fails its checksum, or has trailing junk gives a one-line
  :class:`~fiberlab.checkpoint.format.CheckpointError` naming the file. For zstd, whose reader
  stops silently at a cut, the frame structure (block headers, checksum) is walked as well.
- Every output is written to ``<dst>.tmp`` (``<dst>.compress.tmp`` when that is the source) and
  renamed when complete and synced, so an interrupted run leaves nothing under the final name.
- :func:`decompressed` writes its temporary plain file in ``tempfile.gettempdir()`` (``TMPDIR``;
  a tmpfs there would hold it in memory) or ``tmp_dir``, and refuses a file whose declared size
  exceeds the free space there.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import statistics
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

import lz4.frame
import numpy as np
import zstandard

from fiberlab.checkpoint.format import MAX_HEADER_BYTES, CheckpointError, parse_json
from fiberlab.errors import first_line

EXTENSIONS = {".zst": "zstd", ".lz4": "lz4", ".gz": "gzip"}
MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4", b"\x1f\x8b": "gzip"}
METHODS = ("zstd", "lz4", "gzip")
EXTENSION_OF = {m: ext for ext, m in EXTENSIONS.items()}
DEFAULT_LEVELS = {"zstd": 3, "lz4": 0, "gzip": 6}
LEVEL_RANGES = {"zstd": (1, 22), "lz4": (0, 16), "gzip": (0, 9)}
BENCH_LEVELS = {"gzip": (1, 6, 9), "lz4": (0, 9), "zstd": (1, 3, 9, 19)}

FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype -> bytes per element
SHUFFLE_MAGIC = b"FIBSHUF1"
SHUFFLE_VERSION = 1
SHUFFLE_BLOCK = 1 << 20  # bytes; a multiple of every float size
MARKER = struct.Struct("<8sIIQ8s")
CHUNK = 1 << 20  # bytes read or written at a time
ZSTD_MAX_WINDOW = 1 << 27


def detect(path: str | Path) -> str | None:
    """The compression method of ``path``: by extension first, then by magic bytes; None if plain."""
    path = Path(path)
    if path.suffix in EXTENSIONS:
        return EXTENSIONS[path.suffix]
    return _magic(path)


def _magic(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(4)
    for magic, method in MAGIC.items():
        if head.startswith(magic):
            return method
    return None


def _check(method: str, level: int | None) -> int:
    """The level to use for ``method``; ValueError for an unknown method or a level out of range."""
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}: use one of {', '.join(METHODS)}")
    if level is None:
        return DEFAULT_LEVELS[method]
    lo, hi = LEVEL_RANGES[method]
    if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
        raise ValueError(f"{method} level {level!r} is out of range: use {lo} to {hi}")
    return level


# ============================================================================ header and plan
def _header_plan(path: Path, raw: bytes) -> tuple[int, list[tuple[str, int, int]]]:
    """From the header JSON: the data length and ``(dtype, begin, end)`` of every tensor, the
    index checked by the one validator every reader uses (``manifest.validate_index``)."""
    from fiberlab.checkpoint.manifest import validate_index

    header = parse_json(raw)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (header is not a JSON object)")
    index = validate_index(path, {k: v for k, v in header.items() if k != "__metadata__"}, None)
    tensors = [(e.dtype, *e.data_offsets) for e in index.values()]
    return max((end for _, _, end in tensors), default=0), tensors


def _segments(tensors: list[tuple[str, int, int]], data_len: int, shuffle: bool) -> list[tuple[int, int, int]]:
    """``(begin, end, k)`` pieces covering ``[0, data_len)`` in order; ``k`` > 1: shuffle by ``k``."""
    if not shuffle:
        return [(0, data_len, 1)] if data_len else []
    out = []
    for dtype, b, e in sorted(tensors, key=lambda t: (t[1], t[2])):  # they tile the data (validated)
        if b < e:
            k = FLOAT_DTYPES.get(dtype, 1)
            out.append((b, e, k if (e - b) % k == 0 else 1))
    return out


def _pieces(segments: list[tuple[int, int, int]], block: int) -> Iterator[tuple[int, int]]:
    """``(length, k)`` of each read: shuffled segments in blocks, others in CHUNK pieces."""
    for b, e, k in segments:
        step = block if k > 1 else CHUNK
        for off in range(b, e, step):
            yield min(step, e - off), k


def _shuffle(buf: bytes, k: int) -> bytes:
    return np.frombuffer(buf, dtype=np.uint8).reshape(-1, k).T.tobytes()


def _unshuffle(buf: bytes, k: int) -> bytes:
    planes = np.frombuffer(buf, dtype=np.uint8).reshape(k, -1)
    out = np.empty((planes.shape[1], k), dtype=np.uint8)
    for j in range(k):  # plane by plane: ~3x faster than copying the transposed view
        out[:, j] = planes[j]
    return out.tobytes()


def _marker(header: bytes, data_len: int, block: int = SHUFFLE_BLOCK) -> bytes:
    return MARKER.pack(SHUFFLE_MAGIC, SHUFFLE_VERSION, block, data_len, hashlib.sha256(header).digest()[:8])


# ============================================================================ decoding
def _zstd_structure_error(f: BinaryIO, size: int) -> str | None:
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


class _Payload:
    """Decodes a compressed checkpoint into the plain file's bytes, piece by piece.

    ``header()`` reads only the 8-byte length and the header JSON; ``chunks()`` yields the whole
    plain file (header included), undoing the byte shuffle, and checks the end of the stream.
    """

    def __init__(self, path: Path):
        self.path = path
        self.method = _magic(path) or detect(path)  # content wins over a misleading name
        if self.method is None:
            raise CheckpointError(f"{path}: not a compressed checkpoint")
        self._file = open(path, "rb")
        try:
            if self.method == "zstd":
                dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
                self._dec: Any = dctx.stream_reader(self._file, read_size=CHUNK // 8, read_across_frames=True, closefd=False)
            elif self.method == "lz4":
                self._dec = lz4.frame.LZ4FrameFile(self._file, mode="rb")
            else:
                self._dec = gzip.GzipFile(fileobj=self._file, mode="rb")
        except BaseException:
            self._file.close()
            raise
        self._head8: bytes | None = None
        self._header: bytes | None = None
        self.plain_size: int | None = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._dec.close()
        self._file.close()

    def __enter__(self) -> "_Payload":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _corrupt(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: corrupt {self.method} checkpoint ({why})")

    def _read(self, n: int) -> bytes:
        """Up to ``n`` decompressed bytes (fewer only at the end of the stream), 1 MiB at a time."""
        parts, got = [], 0
        while got < n:
            try:
                b = self._dec.read(min(CHUNK, n - got))
            except (zstandard.ZstdError, RuntimeError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
                raise self._corrupt(first_line(e)) from None
            except OSError as e:
                raise CheckpointError(f"{self.path}: cannot read ({e.strerror or first_line(e)})") from None
            if not b:
                break
            parts.append(b)
            got += len(b)
        return b"".join(parts)

    def _exact(self, n: int, what: str) -> bytes:
        b = self._read(n)
        if len(b) < n:
            raise self._corrupt(f"stream ends inside the {what}")
        return b

    def head8(self) -> bytes:
        if self._head8 is None:
            self._head8 = self._exact(8, "header length")
            (n,) = struct.unpack("<Q", self._head8)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{self.path}: refused: header claims {n} bytes, more than the {MAX_HEADER_BYTES} allowed")
        return self._head8

    def header(self) -> bytes:
        """The 8-byte length and the header JSON, exactly as in the plain file; sets plain_size."""
        if self._header is None:
            head8 = self.head8()
            (n,) = struct.unpack("<Q", head8)
            raw = self._exact(n, "header")
            self._data_len, self._tensors = _header_plan(self.path, raw)
            self._header = head8 + raw
            self.plain_size = len(self._header) + self._data_len
        return self._header

    def marker(self) -> tuple[bytes, int]:
        """After the header: ``(b"", block size)`` if a shuffle marker follows, else
        ``(the first data bytes read while looking, 0)``."""
        self.header()
        peek = self._read(MARKER.size)
        if not peek.startswith(SHUFFLE_MAGIC):
            return peek, 0
        if len(peek) < MARKER.size:
            raise self._corrupt("stream ends inside the shuffle marker")
        _, version, block, marked_len, digest = MARKER.unpack(peek)
        if version != SHUFFLE_VERSION or not (8 <= block <= 1 << 26) or block % 8 or marked_len != self._data_len or digest != hashlib.sha256(self.header()).digest()[:8]:
            raise self._corrupt("bad shuffle marker")
        return b"", block

    def chunks(self) -> Iterator[bytes]:
        """The plain file, piece by piece; raises CheckpointError at the first fault."""
        yield self.head8()
        yield self.header()[8:]
        data_len = self._data_len
        peek, block = self.marker()
        shuffled = block > 0
        if len(peek) > data_len:
            raise self._bomb()
        segments = _segments(self._tensors, data_len, shuffled)
        for length, k in _pieces(segments, block):
            if peek:  # the bytes read while looking for the marker are the data's first ones
                buf = peek + self._exact(length - len(peek), "tensor data") if length > len(peek) else peek[:length]
                peek = peek[length:]
            else:
                buf = self._exact(length, "tensor data")
            yield _unshuffle(buf, k) if k > 1 else buf
        if peek or self._read(1):
            raise self._bomb()
        if self.method == "zstd":
            self._file.seek(0, os.SEEK_END)
            problem = _zstd_structure_error(self._file, self._file.tell())
            if problem:
                raise self._corrupt(problem)

    def _bomb(self) -> CheckpointError:
        return CheckpointError(f"{self.path}: refused: decompressed data exceeds the {self.plain_size} bytes its header declares")


class _PlainStream(io.RawIOBase):
    """A read-only file object over :meth:`_Payload.chunks`; ``read(n)`` returns n bytes unless at the end."""

    def __init__(self, payload: _Payload):
        super().__init__()
        self._chunks = payload.chunks()
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = None if size is None or size < 0 else size
        parts, got = [], 0
        while want is None or got < want:
            if self._pos >= len(self._buf):
                nxt = next(self._chunks, None)
                if nxt is None:
                    break
                self._buf, self._pos = nxt, 0
                continue
            take = len(self._buf) - self._pos if want is None else min(want - got, len(self._buf) - self._pos)
            parts.append(self._buf[self._pos : self._pos + take])
            self._pos += take
            got += take
        return b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_plain_stream(path: str | Path) -> Iterator[BinaryIO]:
    """A reader of ``path``'s plain bytes: the original safetensors file, decompressed on the fly.

    Its first bytes are the 8-byte header length and the header JSON, so reading the header
    decompresses no further. Reading on gives the tensor data, unshuffled. A corrupt or truncated
    stream raises a one-line CheckpointError. A plain (uncompressed) file is opened as is.
    """
    path = Path(path)
    if _magic(path) is None and detect(path) is None:
        with open(path, "rb") as f:
            yield f
        return
    payload = _Payload(path)
    try:
        yield _PlainStream(payload)  # type: ignore[misc]
    finally:
        payload.close()


def info(path: str | Path) -> dict[str, Any]:
    """What ``path`` is, from its first bytes: ``{"method": "zstd"|"lz4"|"gzip"|None, "shuffle":
    bool, "plain_size": bytes of the plain file (as its header declares), "size": bytes on disk}``.

    Decompresses only the header and the 32 bytes after it (e.g. to recompress a file the way it
    was). CheckpointError if the start of a compressed file is corrupt.
    """
    path = Path(path)
    size = path.stat().st_size
    if _magic(path) is None and detect(path) is None:
        return {"method": None, "shuffle": False, "plain_size": size, "size": size}
    with _Payload(path) as payload:
        _, block = payload.marker()
        return {"method": payload.method, "shuffle": block > 0, "plain_size": payload.plain_size, "size": size}


def _free_space_check(path: Path, where: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        raise CheckpointError(f"{path}: refused: its header declares {need} bytes, only {free} are free in {where}")


def _write_plain(payload: _Payload, out: BinaryIO, where: Path) -> int:
    payload.header()
    _free_space_check(payload.path, where, payload.plain_size or 0)
    n = 0
    for chunk in payload.chunks():
        out.write(chunk)
        n += len(chunk)
    return n


@contextlib.contextmanager
def decompressed(path: str | Path, tmp_dir: str | Path | None = None) -> Iterator[Path]:
    """A temporary plain file byte-identical to the original of compressed ``path``.

    Written by streaming (1 MiB at a time) into ``tmp_dir`` (default: the system temp directory),
    capped at the size the header declares, removed on exit, also on error.
    """
    path = Path(path)
    where = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=".plain.tmp", dir=where)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out, _Payload(path) as payload:
            try:
                _write_plain(payload, out, where)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot decompress into {where} ({e.strerror or first_line(e)})") from None
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


# ============================================================================ encoding
class _Encoder:
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


def _tmp_for(dst: Path, src: Path) -> Path:
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.resolve() == src.resolve():  # write_checkpoint's plain file is <dst>.tmp
        tmp = dst.with_name(dst.name + ".compress.tmp")
    return tmp


def _read_exact(f: BinaryIO, n: int, path: Path) -> bytes:
    b = f.read(n)
    if len(b) < n:
        raise CheckpointError(f"{path}: corrupt checkpoint (file ends inside the tensor data)")
    return b


def _compress(src: Path, dst: Path, method: str, level: int, shuffle: bool, sync: bool) -> Path:
    if _magic(src) is not None:
        raise CheckpointError(f"{src}: already compressed ({_magic(src)})")
    tmp = _tmp_for(dst, src)
    try:
        with open(src, "rb") as fin:
            size = os.fstat(fin.fileno()).st_size
            head8 = fin.read(8)
            if len(head8) < 8:
                raise CheckpointError(f"{src}: not a fiberlab checkpoint (file is too short)")
            (n,) = struct.unpack("<Q", head8)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{src}: corrupt checkpoint (header claims {n} bytes, file has {size})")
            header = head8 + fin.read(n)
            data_len, tensors = _header_plan(src, header[8:])
            if len(header) + data_len != size:
                raise CheckpointError(f"{src}: corrupt checkpoint (header declares {len(header) + data_len} bytes, file has {size})")
            segments = _segments(tensors, data_len, shuffle)
            with open(tmp, "wb") as out:
                enc = _Encoder(out, method, level, size + (MARKER.size if shuffle else 0))
                enc.write(header)
                if shuffle:
                    enc.write(_marker(header, data_len))
                for length, k in _pieces(segments, SHUFFLE_BLOCK):
                    buf = _read_exact(fin, length, src)
                    enc.write(_shuffle(buf, k) if k > 1 else buf)
                enc.close()
                if sync:
                    out.flush()
                    os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def compress_file(src: str | Path, dst: str | Path | None = None, *, method: str = "zstd", level: int | None = None, shuffle: bool = False) -> Path:
    """Compress plain checkpoint ``src`` to ``dst`` (default: ``src`` + ``.zst``/``.lz4``/``.gz``).

    Streams 1 MiB at a time; ``shuffle`` byte-shuffles float tensors first (see the module
    docstring). Written to ``<dst>.tmp``, synced, then renamed. ValueError for an unknown method
    or level; CheckpointError if ``src`` is not a whole safetensors file or is compressed already.
    """
    level = _check(method, level)
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(src.name + EXTENSION_OF[method])
    if dst.resolve() == src.resolve():
        raise ValueError(f"{src}: the output would overwrite the input")
    return _compress(src, dst, method, level, shuffle, sync=True)


def _default_plain_name(src: Path) -> Path:
    return src.with_suffix("") if src.suffix in EXTENSIONS else src


def _decompress(src: Path, dst: Path, sync: bool) -> Path:
    tmp = _tmp_for(dst, src)
    try:
        with _Payload(src) as payload, open(tmp, "wb") as out:
            try:
                _write_plain(payload, out, dst.parent)
                if sync:
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as e:
                raise CheckpointError(f"{src}: cannot write {tmp} ({e.strerror or first_line(e)})") from None
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def decompress_file(src: str | Path, dst: str | Path | None = None) -> Path:
    """Decompress ``src`` to ``dst`` (default: ``src`` without ``.zst``/``.lz4``/``.gz``; a
    compressed file without such an extension is replaced by its plain version).

    Streams, undoes the byte shuffle, caps the output at the declared size; written to
    ``<dst>.tmp``, synced, then renamed. CheckpointError if ``src`` is corrupt or not compressed.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else _default_plain_name(src)
    return _decompress(src, dst, sync=True)


# ============================================================================ files and directories
def _sha256_of(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _verify(plain: Path, packed: Path) -> None:
    """CheckpointError unless ``packed`` decompresses to exactly the bytes of ``plain``."""
    with _Payload(packed) as payload:
        if _sha256_of(payload.chunks()) != _sha256_of(_file_chunks(plain)):
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
    been decompressed again and matched byte for byte.
    """
    level = _check(method, level)
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
            already = _magic(src)
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
            _compress(src, dst, method, level, shuffle, sync=True)
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
            method = _magic(src) or detect(src)
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
            _decompress(src, dst, sync=True)
        except (CheckpointError, OSError) as e:
            reason = first_line(e) if isinstance(e, CheckpointError) else f"cannot write ({e.strerror or first_line(e)})"
            rows.append(_row(src, None, "failed", reason, size))
            continue
        removed = remove_originals and dst != src
        if removed:
            src.unlink()
        rows.append(_row(src, dst, "ok", "original removed" if removed else ("in place" if dst == src else ""), size, _size(dst)))
    return rows


# ============================================================================ benchmark
def _timed(fn: Any, min_time: float, max_repeats: int) -> float:
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
        _check(m, None)
    with contextlib.ExitStack() as stack:
        src = path if detect(path) is None else stack.enter_context(decompressed(path, tmp_dir))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fiberlab-bench-", dir=tmp_dir)))
        original = src.stat().st_size
        digest = _sha256_of(_file_chunks(src))
        rows = []
        for method in methods:
            if levels is None:
                lv: Sequence[int] = BENCH_LEVELS[method]
            elif isinstance(levels, Mapping):
                lv = levels.get(method, BENCH_LEVELS[method])
            else:
                lv = levels
            for level in lv:
                level = _check(method, level)
                for sh in shuffle:
                    packed, plain = work / f"c{EXTENSION_OF[method]}", work / "d.safetensors"
                    t_c = _timed(lambda: _compress(src, packed, method, level, sh, sync=False), min_time, max_repeats)
                    t_d = _timed(lambda: _decompress(packed, plain, sync=False), min_time, max_repeats)
                    if _sha256_of(_file_chunks(plain)) != digest:
                        raise CheckpointError(f"{path}: {method}-{level} round trip differs")
                    size = packed.stat().st_size
                    rows.append({
                        "method": method, "level": level, "shuffle": bool(sh), "size": size, "original": original,
                        "ratio": size / original, "saved_percent": 100.0 * (1 - size / original),
                        "compress_mb_s": original / t_c / 1e6, "decompress_mb_s": original / t_d / 1e6,
                    })
        return rows
