"""Fuzzing checkpoints: mutate real files, then read them every way fiberlab does.

The promise under test: whatever the bytes, every reader (``read_manifest``, ``read_tensors``,
``ckpt inspect``, ``ckpt check``, ``load``, ``ckpt migrate``, decompression) either works or raises
a one-line :class:`CheckpointError` naming the file, and nothing that was altered is ever loaded:
a load that succeeds gives exactly the original weights, optimizer state and manifest.

Mutations, drawn from a seeded ``random.Random`` so every case is reproducible by its number:
- bytes: truncate, flip, splice, insert, a piece of another file (plain and compressed files);
- header field edits: a manifest value (any depth) or a tensor-index field replaced by a value
  of another type or range (0, -1, 1e9, 10**30, NaN, a string, a list, null, deep nesting),
  a key dropped or added; the edited plain file is then stored plain or as a zstd stream.

The suite runs a few hundred cases (``tests/test_checkpoint_fuzz.py``); a long run:
``.venv/bin/python tests/fuzz_checkpoints.py --cases 10000`` prints the tally.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import shutil
import struct
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import zstandard

from conftest import policy_and_adam
from fiberlab.checkpoint import CheckpointError, compression, load, read_manifest, save
from fiberlab.checkpoint import migrate as mig
from fiberlab.checkpoint.reader import check_file
from fiberlab.checkpoint.format import read_tensors
from fiberlab.cli.ckpt import inspect_summary

SUFFIXES = (".safetensors", ".safetensors.zst", ".safetensors.lz4", ".safetensors.gz")
DEEP = "__deep__"  # serialised as 5,000 nested lists: more than json's recursion limit allows
ODD_VALUES: list[Any] = [0, -1, 1, 10**9, 10**30, 1e9, -0.5, float("nan"), float("inf"), "", "x", "3", [], [0], [-1, 2],
                         {}, {"a": 1}, None, True, False, [[[[[[1]]]]]], "sha256:" + "0" * 64]


@dataclass(frozen=True)
class Source:
    """A real checkpoint: its bytes and what loading it must give."""

    name: str
    data: bytes
    plain: bytes  # the plain safetensors bytes it decodes to


class Original:
    """The tiny checkpoint every case starts from, in plain and compressed forms."""

    def __init__(self, workdir: Path) -> None:
        p, opt = policy_and_adam(small=True)
        spec = {"name": "popgym.X", "obs_shape": [4], "obs_dtype": "float32", "num_actions": 3,
                "feature_names": ["a", "b", "c", "d"], "action_names": ["l", "m", "r"], "obs_scale": [1.0], "agents_per_env": 1}
        plain = save(workdir / "f.safetensors", p, env_spec=spec, progress={"epoch": 1, "agent_step": 8, "wall_time": 1.0},
                                run="r", seed=3, optimizer=opt, torch_rng=torch.get_rng_state())
        self.weights = {k: v.clone() for k, v in p.state_dict().items()}
        self.manifest = read_manifest(plain).as_dict()
        self.tensors = read_tensors(plain)
        self.sources = [Source("plain", plain.read_bytes(), plain.read_bytes())]
        for method, shuffle in [("zstd", False), ("zstd", True), ("lz4", True), ("gzip", False), ("gzip", True)]:
            packed = compression.compress_file(plain, workdir / f"f{method}{shuffle}{compression.EXTENSION_OF[method]}", method=method, shuffle=shuffle)
            self.sources.append(Source(f"{method}{'+shuffle' if shuffle else ''}", packed.read_bytes(), plain.read_bytes()))


# ----------------------------------------------------------------------------- mutations
def _byte_mutation(rng: random.Random, data: bytearray, others: list[bytes]) -> str:
    n = len(data)

    def pos() -> int:  # anywhere, or near the start (headers) or the end (checksums, trailers)
        return rng.choice([rng.randrange(n), rng.randrange(min(600, n)), rng.randrange(max(0, n - 64), n)])

    kind = rng.choice(["truncate", "flip", "splice", "insert", "foreign"])
    if kind == "truncate":
        del data[pos():]
    elif kind == "flip":
        data[pos()] ^= rng.randrange(1, 256)
    elif kind == "splice":
        i = pos()
        data[i: i + rng.randrange(1, 17)] = rng.randbytes(rng.randrange(1, 17))
    elif kind == "insert":
        i = pos()
        data[i:i] = rng.randbytes(rng.randrange(1, 33))
    else:
        other = rng.choice(others)
        data[pos():] = other[rng.randrange(len(other)):]
    return kind


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts and lists."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out += _paths(v, prefix + (i,))
    return out


def _edit(rng: random.Random, obj: dict[str, Any]) -> str:
    """Replace, drop or add one field somewhere in ``obj`` (in place); returns what was done."""
    path = rng.choice(_paths(obj))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    roll = rng.random()
    if roll < 0.1 and isinstance(parent, dict):
        del parent[last]
        return f"drop {'.'.join(map(str, path))}"
    if roll < 0.15 and isinstance(parent, dict):
        parent[f"extra{rng.randrange(9)}"] = rng.choice(ODD_VALUES)
        return f"add under {'.'.join(map(str, path[:-1])) or 'top'}"
    parent[last] = DEEP if rng.random() < 0.1 else copy.deepcopy(rng.choice(ODD_VALUES))
    return f"set {'.'.join(map(str, path))}"


def _header_mutation(rng: random.Random, plain: bytes) -> tuple[bytes, str]:
    """Edit one field of the manifest or of the tensor index and re-serialise the header."""
    (n,) = struct.unpack("<Q", plain[:8])
    header = json.loads(plain[8: 8 + n])
    manifest = json.loads(header["__metadata__"]["fiberlab"])
    if rng.random() < 0.6:
        what = "manifest " + _edit(rng, manifest)
        header["__metadata__"]["fiberlab"] = json.dumps(manifest).replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000)
    else:
        name = rng.choice([k for k in header if k != "__metadata__"])
        what = f"index {name} " + _edit(rng, header[name])
    text = json.dumps(header).replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000).encode()
    return struct.pack("<Q", len(text)) + text + plain[8 + n:], what


@dataclass(frozen=True)
class Case:
    data: bytes
    suffix: str
    what: str
    plains: frozenset[bytes]  # what decompressing it may faithfully give


def mutate(case: int, sources: list[Source]) -> Case:
    """Case number -> the mutated file."""
    rng = random.Random(case)
    src = rng.choice(sources)
    originals = frozenset(s.plain for s in sources)
    if rng.random() < 0.4:  # a header field edit on the plain bytes, stored plain or as zstd
        data, what = _header_mutation(rng, src.plain)
        if rng.random() < 0.5:
            return Case(data, ".safetensors", f"{what} (plain)", originals)
        packed = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(data)
        return Case(packed, ".safetensors.zst", f"{what} (zstd)", originals | {data})
    data = bytearray(src.data)
    kinds = [_byte_mutation(rng, data, [s.data for s in sources]) for _ in range(rng.randint(1, 3)) if data]
    return Case(bytes(data), rng.choice(SUFFIXES), f"{src.name}: {'+'.join(kinds)}", originals)


# ----------------------------------------------------------------------------- the readers
class Failure(AssertionError):
    pass


def _one_line(e: CheckpointError, path: Path, who: str) -> None:
    msg = str(e)
    if "\n" in msg or not msg.startswith(str(path)):
        raise Failure(f"{who}: not a one-line error naming the file: {msg!r}")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_case(path: Path, orig: Original, scratch: Path, plains: frozenset[bytes]) -> str:
    """Read ``path`` every way; return the outcome of ``load``, raise Failure on a broken promise."""
    for who, read in (("read_manifest", read_manifest), ("read_tensors", read_tensors), ("ckpt inspect", inspect_summary)):
        try:
            read(path)
        except CheckpointError as e:
            _one_line(e, path, who)
    report = check_file(path)
    if report.level not in ("FULL", "PARTIAL", "INCOMPATIBLE", "UNKNOWN"):
        raise Failure(f"check: level {report.level}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ck = load(path)
        except CheckpointError as e:
            _one_line(e, path, "load")
            outcome = "refused"
        else:
            if not _same(ck.policy.state_dict(), orig.weights):
                raise Failure("load: loaded altered weights")
            if not _same({f"optimizer/{k}": v for k, v in ck.optimizer_state.items()}, {k: v for k, v in orig.tensors.items() if k.startswith("optimizer/")}):
                raise Failure("load: loaded altered optimizer state")
            if ck.manifest.as_dict() != orig.manifest:
                raise Failure("load: loaded an altered manifest")
            if report.level not in ("FULL", "PARTIAL"):
                raise Failure(f"check said {report.level} of a file that loads")
            outcome = "loaded original"
    # migrate never raises for a file's faults, and what it writes loads as the original
    out = scratch / "migrated.safetensors"
    (res,) = mig.migrate(path, out, backup=False).results
    if res.status == "migrated":
        if not _same(load(out).policy.state_dict(), orig.weights):
            raise Failure("migrate: wrote altered weights")
    if outcome == "refused" and res.status == "skipped" and res.reason == "already current":
        raise Failure("migrate: called a file load refuses 'already current'")
    if compression.detect(path) is not None:
        plain = scratch / "decompressed.safetensors"
        try:
            compression.decompress_file(path, plain)
        except CheckpointError as e:
            _one_line(e, path, "decompress")
            if plain.exists():
                raise Failure("decompress: left a file behind")
        else:
            if plain.read_bytes() not in plains:
                raise Failure("decompress: wrote something other than what was compressed")
    return outcome


def run(cases: range, workdir: Path) -> collections.Counter:
    """Run ``cases``; the tally counts outcomes and broken promises (``failure: ...``)."""
    orig = Original(workdir)
    tally: collections.Counter = collections.Counter()
    for case in cases:
        c = mutate(case, orig.sources)
        what = c.what
        d = Path(tempfile.mkdtemp(dir=workdir))
        path = d / f"fuzz{c.suffix}"
        path.write_bytes(c.data)
        try:
            tally[check_case(path, orig, d, c.plains)] += 1
        except Failure as e:
            tally[f"failure: case {case} ({what}): {e}"] += 1
        except Exception as e:  # noqa: BLE001 - any other exception is a broken promise
            tally[f"failure: case {case} ({what}): {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"] += 1
        leftovers = sorted(f.name for f in d.iterdir() if f.name not in (path.name, "migrated.safetensors", "decompressed.safetensors"))
        if leftovers:
            tally[f"failure: case {case} ({what}): left {leftovers}"] += 1
        shutil.rmtree(d)
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--first", type=int, default=0, help="first case number (cases are reproducible by number)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fiberlab-fuzz-") as d:
        tally = run(range(args.first, args.first + args.cases), Path(d))
    failures = {k: v for k, v in tally.items() if k.startswith("failure")}
    print(f"{args.cases} mutated checkpoints (cases {args.first}..{args.first + args.cases - 1}) in {time.perf_counter() - t0:.0f} s")
    for k, v in sorted(tally.items()):
        if not k.startswith("failure"):
            print(f"  {k}: {v}")
    print(f"  broken promises (exceptions other than CheckpointError, altered data loaded, files left): {sum(failures.values())}")
    for k in sorted(failures)[:30]:
        print(f"    {k}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
