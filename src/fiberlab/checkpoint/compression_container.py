"""The compressed checkpoint file: its layout, and reading or writing one such file safely.

Layout
------
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

Safety
------
- The plain size is what the header declares: 8 + header length + the largest ``data_offsets``
  end. The decoder asks the decompressor for exactly that many bytes, then for one more: if there
  is one, the file is refused (``... refused: decompressed data exceeds the N bytes its header
  declares``). A header length over ``base.MAX_HEADER_BYTES`` is refused before anything else.
  Reads go in 1 MiB pieces, so a lying header never makes a big allocation by itself, and a
  zstd window over 128 MiB is refused by zstd.
- A stream that ends early, fails its checksum, or has trailing junk gives a one-line
  :class:`~fiberlab.checkpoint.base.CheckpointError` naming the file. For zstd, whose reader
  stops silently at a cut, the frame structure (block headers, checksum) is walked as well.
- Every output is written to ``<dst>.tmp`` (``<dst>.compress.tmp`` when that is the source) and
  renamed when complete (synced first with ``sync``): an interrupted run leaves no final name.
- :func:`decompressed` writes its temporary plain file in ``tmp_dir`` or ``tempfile.gettempdir()``
  (``TMPDIR``; a tmpfs holds it in memory), refusing a declared size over the free space there.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Self

from fiberlab.checkpoint.base import MAX_HEADER_BYTES, CheckpointError, parse_json
from fiberlab.checkpoint.compression_codecs import (
    CHUNK,
    DECODE_ERRORS,
    Encoder,
    detect,
    method_by_magic,
    open_decoder,
    pieces,
    shuffle_bytes,
    shuffle_segments,
    unshuffle_bytes,
    zstd_structure_error,
)
from fiberlab.checkpoint.manifest import validate_index
from fiberlab.errors import first_line

SHUFFLE_MAGIC = b"FIBSHUF1"
SHUFFLE_VERSION = 1
SHUFFLE_BLOCK = 1 << 20  # bytes; a multiple of every float size
MARKER = struct.Struct("<8sIIQ8s")


# ============================================================================ header and plan
def _header_plan(path: Path, raw: bytes) -> tuple[int, list[tuple[str, int, int]]]:
    """From the header JSON: the data length and ``(dtype, begin, end)`` of every tensor, the
    index checked by the one validator every reader uses (``manifest.validate_index``)."""
    header = parse_json(raw)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (header is not a JSON object)")
    index = validate_index(path, {k: v for k, v in header.items() if k != "__metadata__"}, None)
    tensors = [(e.dtype, *e.data_offsets) for e in index.values()]
    return max((end for _, _, end in tensors), default=0), tensors


def _marker(header: bytes, data_len: int, block: int = SHUFFLE_BLOCK) -> bytes:
    return MARKER.pack(SHUFFLE_MAGIC, SHUFFLE_VERSION, block, data_len, hashlib.sha256(header).digest()[:8])


# ============================================================================ decoding
class Payload:
    """Decodes a compressed checkpoint into the plain file's bytes, piece by piece.

    ``header()`` reads only the 8-byte length and the header JSON; ``chunks()`` yields the whole
    plain file (header included), undoing the byte shuffle, and checks the end of the stream.
    """

    def __init__(self, path: Path):
        self.path = path
        self.method = method_by_magic(path) or detect(path)  # content wins over a misleading name
        if self.method is None:
            raise CheckpointError(f"{path}: not a compressed checkpoint")
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close(), also when the decoder fails to open
        try:
            self._dec = open_decoder(self._file, self.method)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _corrupt(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: corrupt {self.method} checkpoint ({why})")

    def _read(self, n: int) -> bytes:
        """Up to ``n`` decompressed bytes (fewer only at the end of the stream), 1 MiB at a time."""
        parts, got = [], 0
        while got < n:
            try:
                b = self._dec.read(min(CHUNK, n - got))
            except DECODE_ERRORS as e:
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
        segments = shuffle_segments(self._tensors, data_len, shuffled)
        for length, k in pieces(segments, block):
            if peek:  # the bytes read while looking for the marker are the data's first ones
                buf = peek + self._exact(length - len(peek), "tensor data") if length > len(peek) else peek[:length]
                peek = peek[length:]
            else:
                buf = self._exact(length, "tensor data")
            yield unshuffle_bytes(buf, k) if k > 1 else buf
        if peek or self._read(1):
            raise self._bomb()
        if self.method == "zstd":
            self._file.seek(0, os.SEEK_END)
            problem = zstd_structure_error(self._file, self._file.tell())
            if problem:
                raise self._corrupt(problem)

    def _bomb(self) -> CheckpointError:
        return CheckpointError(f"{self.path}: refused: decompressed data exceeds the {self.plain_size} bytes its header declares")


class _PlainStream(io.RawIOBase):
    """A read-only file object over :meth:`Payload.chunks`; ``read(n)`` returns n bytes unless at the end."""

    def __init__(self, payload: Payload):
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
    if method_by_magic(path) is None and detect(path) is None:
        with open(path, "rb") as f:
            yield f
        return
    payload = Payload(path)
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
    if method_by_magic(path) is None and detect(path) is None:
        return {"method": None, "shuffle": False, "plain_size": size, "size": size}
    with Payload(path) as payload:
        _, block = payload.marker()
        return {"method": payload.method, "shuffle": block > 0, "plain_size": payload.plain_size, "size": size}


def _free_space_check(path: Path, where: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        raise CheckpointError(f"{path}: refused: its header declares {need} bytes, only {free} are free in {where}")


def _write_plain(payload: Payload, out: BinaryIO, where: Path) -> int:
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
        with os.fdopen(fd, "wb") as out, Payload(path) as payload:
            try:
                _write_plain(payload, out, where)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot decompress into {where} ({e.strerror or first_line(e)})") from None
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


# ============================================================================ one file, either way
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


def encode_file(src: Path, dst: Path, method: str, level: int, shuffle: bool, sync: bool) -> Path:
    """Compress plain checkpoint ``src`` into ``dst`` in the layout above (``level`` checked by
    the caller): streamed through ``<dst>.tmp``, synced with ``sync``, then renamed."""
    if method_by_magic(src) is not None:
        raise CheckpointError(f"{src}: already compressed ({method_by_magic(src)})")
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
            segments = shuffle_segments(tensors, data_len, shuffle)
            with open(tmp, "wb") as out:
                enc = Encoder(out, method, level, size + (MARKER.size if shuffle else 0))
                enc.write(header)
                if shuffle:
                    enc.write(_marker(header, data_len))
                for length, k in pieces(segments, SHUFFLE_BLOCK):
                    buf = _read_exact(fin, length, src)
                    enc.write(shuffle_bytes(buf, k) if k > 1 else buf)
                enc.close()
                if sync:
                    out.flush()
                    os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def decode_file(src: Path, dst: Path, sync: bool) -> Path:
    """Decompress ``src`` into the plain file ``dst``: streamed through ``<dst>.tmp``, capped at
    the declared size, synced with ``sync``, then renamed."""
    tmp = _tmp_for(dst, src)
    try:
        with Payload(src) as payload, open(tmp, "wb") as out:
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
