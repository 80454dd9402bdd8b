"""Compression of checkpoints: round trips, detection, the byte shuffle, bombs, corruption, atomicity."""
from __future__ import annotations

import gzip
import json
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import lz4.frame
import pytest
import torch
import zstandard
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from conftest import policy_and_adam
from fiberlab.checkpoint import CheckpointError, compression, compression_codecs, compression_container, load, read_manifest, save
from fiberlab.checkpoint.base import MAX_HEADER_BYTES
from fiberlab.checkpoint.format import read_header, read_tensors
from fiberlab.experiments.checkpoint_bench import bench

CASES = [(m, s) for m in compression.METHODS for s in (False, True)]


def _save(path: Path, p, opt, **kw) -> Path:
    return save(path, p, env_spec={"name": "x"}, progress={"epoch": 1, "agent_step": 8, "wall_time": 1.0}, run="r", seed=3, optimizer=opt, torch_rng=torch.get_rng_state(), **kw)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    p, opt = policy_and_adam()
    path = _save(tmp_path_factory.mktemp("plain") / "c.safetensors", p, opt)
    return p, opt, path


def _copy(path: Path, d: Path, name: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    out = d / (name or path.name)
    shutil.copyfile(path, out)
    return out


def _one_line_error(e: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg


# ============================================================================ round trips
@pytest.mark.parametrize("method,shuffle", CASES)
def test_round_trip(ckpt, tmp_path, method, shuffle):
    p, opt, plain = ckpt
    src = _copy(plain, tmp_path)
    packed = compression.compress_file(src, method=method, shuffle=shuffle)
    assert packed == src.with_name(src.name + compression.EXTENSION_OF[method])
    assert compression.detect(packed) == method and packed.stat().st_size < plain.stat().st_size
    back = compression.decompress_file(packed, tmp_path / "back.safetensors")
    assert back.read_bytes() == plain.read_bytes()
    assert read_manifest(packed) == read_manifest(plain)
    ck = load(packed)
    for (k, a), (_, b) in zip(p.state_dict().items(), ck.policy.state_dict().items()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.Adam(ck.policy.parameters(), lr=1.0)
    ck.load_optimizer(opt2)
    for s1, s2 in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([src.name, packed.name, back.name])  # no temp files left


@pytest.mark.parametrize("method,shuffle", CASES)
def test_plain_stream_and_temporary_file(ckpt, tmp_path, method, shuffle):
    _, _, plain = ckpt
    packed = compression.compress_file(plain, tmp_path / f"c{compression.EXTENSION_OF[method]}", method=method, shuffle=shuffle)
    data = plain.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    with compression.open_plain_stream(packed) as f:
        assert f.read(8 + n) == data[: 8 + n]  # the header comes first, as in the plain file
        assert f.read(1000) == data[8 + n : 8 + n + 1000]  # then the data, unshuffled
        assert f.read() == data[8 + n + 1000 :]
    with compression.decompressed(packed, tmp_dir=tmp_path) as tmp:
        assert tmp.read_bytes() == data and tmp.parent == tmp_path
    assert not tmp.exists()


@pytest.mark.parametrize("method,shuffle", CASES)
def test_info(ckpt, tmp_path, method, shuffle):
    _, _, plain = ckpt
    packed = compression.compress_file(plain, tmp_path / "c.safetensors", method=method, shuffle=shuffle)
    assert compression.info(packed) == {"method": method, "shuffle": shuffle, "plain_size": plain.stat().st_size, "size": packed.stat().st_size}
    assert compression.info(plain) == {"method": None, "shuffle": False, "plain_size": plain.stat().st_size, "size": plain.stat().st_size}


def test_stock_decompressors(ckpt, tmp_path):
    """Unshuffled: a standard stream of the original file. Shuffled: its output is refused by safetensors."""
    _, _, plain = ckpt
    data = plain.read_bytes()
    stock = {"zstd": zstandard.ZstdDecompressor().decompress, "lz4": lz4.frame.decompress, "gzip": gzip.decompress}
    for method, dec in stock.items():
        assert dec(compression.compress_file(plain, tmp_path / f"a.{method}", method=method).read_bytes()) == data
        out = dec(compression.compress_file(plain, tmp_path / f"b.{method}", method=method, shuffle=True).read_bytes())
        (n,) = struct.unpack("<Q", data[:8])
        assert out[: 8 + n] == data[: 8 + n] and out[8 + n : 16 + n] == compression.SHUFFLE_MAGIC and len(out) == len(data) + compression.MARKER.size
        bad = tmp_path / f"stock_{method}.safetensors"
        bad.write_bytes(out)
        with pytest.raises(SafetensorError):
            load_file(str(bad))


def test_shuffle_compresses_float_weights_better(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(256, 256) * 0.05}, str(path))
    plain = compression.compress_file(path, tmp_path / "p.zst", method="zstd").stat().st_size
    shuffled = compression.compress_file(path, tmp_path / "s.zst", method="zstd", shuffle=True).stat().st_size
    assert shuffled < 0.95 * plain < path.stat().st_size
    assert compression.decompress_file(tmp_path / "s.zst", tmp_path / "back.safetensors").read_bytes() == path.read_bytes()


def test_non_float_and_odd_tensors_round_trip(tmp_path):
    path = tmp_path / "mixed.safetensors"
    tensors = {
        "a": torch.arange(10, dtype=torch.int64), "b": torch.randn(3, 5).to(torch.bfloat16), "c": torch.randn(7).double(),
        "d": torch.zeros(0), "e": torch.tensor([True, False]), "f": torch.randn(1 << 19).half(), "g": torch.randn(3, 1, 2),
    }
    save_file(tensors, str(path), metadata={"fiberlab": "{}"})
    for method, shuffle in CASES:
        packed = compression.compress_file(path, tmp_path / f"m{compression.EXTENSION_OF[method]}", method=method, shuffle=shuffle)
        assert compression.decompress_file(packed, tmp_path / "back.safetensors").read_bytes() == path.read_bytes()


def test_save_checkpoint_compressed(tmp_path):
    p, opt = policy_and_adam(small=True)
    path = _save(tmp_path / "r.safetensors.zst", p, opt, compress="zstd", shuffle=True)
    assert compression.detect(path) == "zstd" and [f.name for f in tmp_path.iterdir()] == [path.name]
    assert read_manifest(path).run == "r"
    ck = load(path)
    assert all(torch.equal(a, b) for a, b in zip(p.state_dict().values(), ck.policy.state_dict().values()))


# ============================================================================ detection
@pytest.mark.parametrize("method", compression.METHODS)
def test_detect_by_magic_when_renamed(ckpt, tmp_path, method):
    p, _, plain = ckpt
    assert compression.detect(plain) is None
    packed = compression.compress_file(plain, tmp_path / f"c{compression.EXTENSION_OF[method]}", method=method, shuffle=True)
    renamed = packed.rename(tmp_path / "looks_plain.safetensors")
    assert compression.detect(renamed) == method
    assert read_manifest(renamed) == read_manifest(plain)
    assert all(torch.equal(a, b) for a, b in zip(p.state_dict().values(), load(renamed).policy.state_dict().values()))
    rows = compression.decompress_path(renamed)  # no compression extension: decompressed in place
    assert rows[0]["status"] == "ok" and renamed.read_bytes() == plain.read_bytes() and compression.detect(renamed) is None


def test_misnamed_extension_uses_content(ckpt, tmp_path):
    _, _, plain = ckpt
    packed = compression.compress_file(plain, tmp_path / "c.gz", method="gzip")
    wrong = packed.rename(tmp_path / "c.safetensors.zst")  # gzip content, zstd name
    assert read_manifest(wrong) == read_manifest(plain)


def test_bad_method_and_level(ckpt, tmp_path):
    _, _, plain = ckpt
    with pytest.raises(ValueError, match="zstd, lz4, gzip"):
        compression.compress_file(plain, tmp_path / "x.bz2", method="bz2")
    with pytest.raises(ValueError, match="1 to 22"):
        compression.compress_file(plain, tmp_path / "x.zst", method="zstd", level=99)
    with pytest.raises(ValueError):
        compression.compress_path(plain, method="brotli")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_compress_twice_or_a_corrupt_file(ckpt, tmp_path):
    _, _, plain = ckpt
    packed = compression.compress_file(plain, tmp_path / "c.safetensors", method="zstd")  # compressed, plain name
    with pytest.raises(CheckpointError, match="already compressed"):
        compression.compress_file(packed, tmp_path / "c2.zst", method="zstd")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(plain.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="file has"):
        compression.compress_file(cut, method="lz4")
    assert not (tmp_path / "cut.safetensors.lz4").exists() and not (tmp_path / "c2.zst").exists()


# ============================================================================ bombs
def _bomb_header(declared: int = 16) -> bytes:
    header = {"__metadata__": {"fiberlab": json.dumps({"format_version": 2, "run": "bomb"})}, "w": {"dtype": "F32", "shape": [declared // 4], "data_offsets": [0, declared]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_stream(path: Path, method: str, parts) -> Path:
    with open(path, "wb") as f:
        if method == "zstd":
            with zstandard.ZstdCompressor(level=1).stream_writer(f, closefd=False) as w:
                for part in parts:
                    w.write(part)
        elif method == "lz4":
            with lz4.frame.LZ4FrameFile(f, mode="wb") as w:
                for part in parts:
                    w.write(part)
        else:
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as w:
                for part in parts:
                    w.write(part)
    return path


@pytest.mark.parametrize("method", compression.METHODS)
def test_decompression_bomb_is_refused(tmp_path, method):
    zeros = bytes(1 << 20)
    mb = 256 if method == "zstd" else 48  # decompresses to that many MiB past what the header declares
    bomb = _write_stream(tmp_path / f"bomb.safetensors{compression.EXTENSION_OF[method]}", method, [_bomb_header(16), bytes(16)] + [zeros] * mb)
    assert bomb.stat().st_size < 1 << 20
    assert read_header(bomb)["run"] == "bomb"  # the header itself is readable
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match="refused: decompressed data exceeds the") as e:
            with compression.decompressed(bomb, tmp_dir=scratch):
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0 and peak < 16 << 20
    _one_line_error(e, bomb)
    assert list(scratch.iterdir()) == []
    with pytest.raises(CheckpointError, match="refused"):
        compression.decompress_file(bomb, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "out.safetensors.tmp").exists()
    with pytest.raises(CheckpointError, match="refused"):
        read_tensors(bomb)


def test_bomb_in_a_second_frame_is_refused(ckpt, tmp_path):
    _, _, plain = ckpt
    packed = compression.compress_file(plain, tmp_path / "c.zst", method="zstd")
    extra = zstandard.ZstdCompressor(level=1).compress(bytes(8 << 20))
    with open(packed, "ab") as f:
        f.write(extra)
    with pytest.raises(CheckpointError, match="refused: decompressed data exceeds"):
        read_tensors(packed)


def test_header_lies_about_its_size(tmp_path):
    huge = _write_stream(tmp_path / "h.safetensors.zst", "zstd", [struct.pack("<Q", MAX_HEADER_BYTES + 1), b"{}"])
    with pytest.raises(CheckpointError, match="header claims") as e:
        read_manifest(huge)
    _one_line_error(e, huge)
    with pytest.raises(CheckpointError, match="header claims"):
        compression.decompress_file(huge, tmp_path / "o.safetensors")
    # a header declaring a petabyte of tensors: refused before writing anything
    peta = _write_stream(tmp_path / "p.safetensors.zst", "zstd", [_bomb_header(1 << 50), bytes(64)])
    with pytest.raises(CheckpointError, match="refused"):
        read_tensors(peta)
    # declares 1 MiB, holds 64 bytes: truncated
    short = _write_stream(tmp_path / "s.safetensors.gz", "gzip", [_bomb_header(1 << 20), bytes(64)])
    with pytest.raises(CheckpointError, match="stream ends"):
        read_tensors(short)


def test_zstd_frame_asking_for_a_huge_window_is_refused(tmp_path):
    payload = _bomb_header(16) + bytes(16)
    block = (1 | (len(payload) << 3)).to_bytes(3, "little")  # one raw block, the last
    frame = b"\x28\xb5\x2f\xfd" + bytes([0x00, 21 << 3]) + block + payload  # window 2**31: 2 GiB
    path = tmp_path / "w.safetensors.zst"
    path.write_bytes(frame)
    with pytest.raises(CheckpointError) as e:
        read_manifest(path)
    _one_line_error(e, path)


# ============================================================================ corruption
@pytest.mark.parametrize("method,shuffle", CASES)
def test_truncated_and_flipped(ckpt, tmp_path, method, shuffle):
    _, _, plain = ckpt
    packed = compression.compress_file(plain, tmp_path / f"c.safetensors{compression.EXTENSION_OF[method]}", method=method, shuffle=shuffle)
    data = packed.read_bytes()
    for cut in (3, 40, len(data) // 2, len(data) - 5, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors{compression.EXTENSION_OF[method]}"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as e:
            read_tensors(bad)
        _one_line_error(e, bad)
        with pytest.raises(CheckpointError):
            compression.decompress_file(bad, tmp_path / "out.safetensors")
        assert not (tmp_path / "out.safetensors").exists()
    for pos in (len(data) // 3, len(data) // 2, len(data) - 2):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad = tmp_path / f"flip{pos}.safetensors{compression.EXTENSION_OF[method]}"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError) as e:
            load(bad)
        _one_line_error(e, bad)


# ============================================================================ atomicity
def test_interrupted_compress_leaves_nothing(ckpt, tmp_path, monkeypatch):
    _, _, plain = ckpt
    src = _copy(plain, tmp_path / "d")
    real_write = compression_codecs.Encoder.write
    calls = {"n": 0}

    def dying_write(self, data):
        calls["n"] += 1
        if calls["n"] == 2:  # after the header went out
            raise KeyboardInterrupt("power cut")
        real_write(self, data)

    monkeypatch.setattr(compression_codecs.Encoder, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        compression.compress_file(src, method="zstd", shuffle=True)
    assert [f.name for f in src.parent.iterdir()] == [src.name]
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "e" / "r.safetensors.zst", *policy_and_adam(small=True), compress="zstd")
    assert list((tmp_path / "e").iterdir()) == []
    calls["n"] = -10**9
    rows = compression.compress_path(src.parent, method="lz4")
    assert [r["status"] for r in rows] == ["ok"]


def test_interrupted_decompress_leaves_nothing(ckpt, tmp_path, monkeypatch):
    _, _, plain = ckpt
    packed = compression.compress_file(plain, tmp_path / "c.safetensors.gz", method="gzip", shuffle=True)
    real = compression_container.unshuffle_bytes

    def dying(buf, k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compression_container, "unshuffle_bytes", dying)
    with pytest.raises(CheckpointError, match="No space left"):
        compression.decompress_file(packed)
    assert [f.name for f in tmp_path.iterdir()] == [packed.name]
    monkeypatch.setattr(compression_container, "unshuffle_bytes", real)
    assert compression.decompress_file(packed).read_bytes() == plain.read_bytes()


# ============================================================================ directories and bench
def test_compress_and_decompress_a_directory(ckpt, tmp_path):
    _, _, plain = ckpt
    d = tmp_path / "runs"
    a, b = _copy(plain, d, "a.safetensors"), _copy(plain, d / "sub", "b.safetensors")
    compression.compress_file(plain, d / "z.safetensors", method="lz4")  # compressed already, plain name
    (d / "broken.safetensors").write_bytes(plain.read_bytes()[:5000])
    (d / "notes.txt").write_text("not a checkpoint")
    rows = {Path(r["path"]).name: r for r in compression.compress_path(d, method="zstd", shuffle=True, remove_originals=True, recursive=True)}
    assert set(rows) == {"a.safetensors", "b.safetensors", "z.safetensors", "broken.safetensors"}
    assert rows["a.safetensors"]["status"] == rows["b.safetensors"]["status"] == "ok"
    assert rows["a.safetensors"]["bytes_out"] < rows["a.safetensors"]["bytes_in"] == plain.stat().st_size
    assert rows["z.safetensors"]["status"] == "skipped" and "already compressed" in rows["z.safetensors"]["reason"]
    assert rows["broken.safetensors"]["status"] == "failed" and "\n" not in rows["broken.safetensors"]["reason"]
    assert not a.exists() and not b.exists() and (d / "broken.safetensors").exists()
    assert not (d / "broken.safetensors.zst").exists() and not list(d.rglob("*.tmp"))
    again = compression.compress_path(d / "sub", method="zstd")
    assert again == [] or all(r["status"] == "skipped" for r in again)
    rows = {Path(r["path"]).name: r for r in compression.decompress_path(d, remove_originals=True, recursive=True)}
    assert set(rows) == {"a.safetensors.zst", "b.safetensors.zst"} and all(r["status"] == "ok" for r in rows.values())
    assert a.read_bytes() == b.read_bytes() == plain.read_bytes() and not list(d.rglob("*.zst"))
    assert compression.decompress_path(a)[0]["status"] == "skipped"


def test_bench_rows(ckpt):
    _, _, plain = ckpt
    rows = bench(plain, levels={"gzip": [1], "lz4": [0], "zstd": [1, 3]}, min_time=0.0, max_repeats=1)
    assert [(r["method"], r["level"], r["shuffle"]) for r in rows] == [(m, lv, s) for m, lvs in (("gzip", [1]), ("lz4", [0]), ("zstd", [1, 3])) for lv in lvs for s in (False, True)]
    for r in rows:
        assert 0 < r["ratio"] < 1.05 and r["size"] == round(r["ratio"] * r["original"]) and r["compress_mb_s"] > 0 and r["decompress_mb_s"] > 0
        assert abs(r["saved_percent"] - 100 * (1 - r["ratio"])) < 1e-9
