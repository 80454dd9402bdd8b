"""``fiberlab ckpt ...``: inspect, check, migrate, compress, decompress, bench. Parse, call, print.

Exit codes: 0 fine (``inspect`` shows any header it can parse, with a "will not load" line for
each fault); 1 ``check`` found the checkpoint INCOMPATIBLE or UNKNOWN, or some file of a batch
failed; 2 bad input (unreadable file, bad flag).
Errors raised here (``CheckpointError``, ``ConfigError``) reach the CLI's one handler.

``migrate`` has its own module (``ckpt_migrate.py``: its flags and summary), and so does what
``bench`` measures (``fiberlab.experiments.checkpoint_bench``). The library is imported inside each command, so building
the parser (every ``--help``) does not import torch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fiberlab.cli import ckpt_migrate
from fiberlab.errors import BadInput


def _field(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...`` of an unvalidated header, or None where any level is missing or no dict."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def inspect_summary(path: Path) -> dict[str, Any]:
    """What ``ckpt inspect`` prints, from the header alone, whatever the header holds: sizes of
    the entries that are well formed, and ``problems``, one line each, that stop it loading."""
    from fiberlab.checkpoint.format import read_raw_header
    from fiberlab.checkpoint.manifest import TensorEntry
    from fiberlab.checkpoint.reader import header_problems

    raw = read_raw_header(path)
    tensors = []
    for name, info in sorted(raw.index.items()):
        try:
            entry = TensorEntry.model_validate(info)
            tensors.append({"name": name, "shape": entry.shape, "dtype": entry.dtype, "bytes": entry.nbytes, "numel": entry.numel})
        except ValueError:  # shown as stored; header_problems says what is wrong with it
            tensors.append({"name": name, "shape": _field(info, "shape"), "dtype": _field(info, "dtype"), "bytes": None, "numel": None})
    sizes = lambda pred, key: sum(t[key] or 0 for t in tensors if pred(t["name"]))  # noqa: E731
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "tensor_bytes": sizes(lambda n: True, "bytes"),
        "policy_parameters": sizes(lambda n: n.startswith("policy/"), "numel"),
        "optimizer_bytes": sizes(lambda n: n.startswith("optimizer/"), "bytes"),
        "manifest": raw.manifest,
        "tensors": [{k: v for k, v in t.items() if k != "numel"} for t in tensors],
        "problems": header_problems(raw),
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect_summary(Path(args.path))
    if args.json:
        print(json.dumps(info))
        return 0
    m = info["manifest"]
    print(f"{info['path']}: fiberlab checkpoint format v{m.get('format_version')} (fiberlab {m.get('fiberlab_version')}, torch {m.get('torch_version')})")
    print(f"  run {m.get('run')}  epoch {_field(m, 'progress', 'epoch')}  agent_step {_field(m, 'progress', 'agent_step')}  seed {m.get('seed')}")
    print(f"  architecture {m.get('architecture')}  parameters {info['policy_parameters']:,}")
    print(f"  env {_field(m, 'env_spec', 'name')}  obs {_field(m, 'env_spec', 'obs_shape')} {_field(m, 'env_spec', 'obs_dtype')}  actions {_field(m, 'env_spec', 'num_actions')} {_field(m, 'env_spec', 'action_names')}")
    print(f"  file {info['file_bytes']:,} bytes  tensors {info['tensor_bytes']:,} bytes (optimizer {info['optimizer_bytes']:,})  checksum {m.get('checksum', 'none')}")
    for t in info["tensors"]:
        size = "?" if t["bytes"] is None else f"{t['bytes']:,}"
        print(f"    {str(t['name'])[:48]:<48} {str(t['dtype'])[:5]:<5} {str(t['shape'])[:20]:<20} {size:>12}")
    for problem in info["problems"]:
        print(f"  will not load: {problem}")
    return 0


def env_spec_of_recipe(recipe: str):
    """The EnvSpec a recipe's environment has (built with one env, then closed)."""
    from fiberlab.envs import make_vecenv
    from fiberlab.recipes import get_recipe

    cfg = get_recipe(recipe)
    env = make_vecenv(cfg.env.model_copy(update={"num_envs": 1}), 0)
    try:
        return env.spec
    finally:
        env.close()


def cmd_check(args: argparse.Namespace) -> int:
    from fiberlab.checkpoint.reader import check_file

    path = Path(args.path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    spec = env_spec_of_recipe(args.env) if args.env else None
    report = check_file(path, spec)
    if args.json:
        print(json.dumps({"path": str(path), "env": args.env, **report.to_dict()}))
    else:
        print(f"{path}: {report.level}" + (f" for {args.env}" if args.env else ""))
        for kind, items in (("error", report.errors), ("warning", report.warnings), ("recommendation", report.recommendations)):
            for item in items:
                print(f"  {kind}: {item}")
    return 0 if report.level in ("FULL", "PARTIAL") else 1


def _print_rows(rows: list[dict[str, Any]]) -> int:
    failed = 0
    for r in rows:
        line = f"{r['status']:<8} {r['path']}"
        if r.get("output") and r["status"] == "ok":
            ratio = f" ({r['bytes_out'] / r['bytes_in']:.3f} of {r['bytes_in']:,} bytes)" if r.get("bytes_in") else ""
            line += f" -> {r['output']}{ratio}"
        if r.get("reason"):
            line += f": {r['reason']}"
        failed += r["status"] == "failed"
        print(line)
    return 1 if failed else 0


def cmd_compress(args: argparse.Namespace) -> int:
    from fiberlab.checkpoint import compression

    if not Path(args.path).exists():
        raise BadInput(f"{args.path}: no such file or directory")
    rows = compression.compress_path(args.path, method=args.method, level=args.level, shuffle=args.shuffle, remove_originals=args.remove_originals, recursive=args.recursive)
    return _print_rows(rows)


def cmd_decompress(args: argparse.Namespace) -> int:
    from fiberlab.checkpoint import compression

    if not Path(args.path).exists():
        raise BadInput(f"{args.path}: no such file or directory")
    return _print_rows(compression.decompress_path(args.path, remove_originals=args.remove_originals))


def cmd_bench(args: argparse.Namespace) -> int:
    from fiberlab.experiments.checkpoint_bench import bench

    if not Path(args.path).is_file():
        raise BadInput(f"{args.path}: no such file")
    rows = bench(args.path)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'method':<7} {'level':>5} {'shuffle':>7} {'bytes':>12} {'ratio':>6} {'saved':>6} {'comp MB/s':>10} {'decomp MB/s':>11}")
    for r in rows:
        print(f"{r['method']:<7} {r['level']!s:>5} {r['shuffle']!s:>7} {r['size']:>12,} {r['ratio']:>6.3f} {r['saved_percent']:>5.1f}% {r['compress_mb_s']:>10.1f} {r['decompress_mb_s']:>11.1f}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    ck = sub.add_parser("ckpt", help="inspect, check, migrate and compress checkpoints")
    cks = ck.add_subparsers(dest="ckpt_command", required=True)
    p = cks.add_parser("inspect", help="manifest, tensors, sizes (reads the header only)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = cks.add_parser("check", help="compatibility report: FULL, PARTIAL, INCOMPATIBLE or UNKNOWN")
    p.add_argument("path")
    p.add_argument("--env", metavar="RECIPE", help="judge against this recipe's environment")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)
    ckpt_migrate.add_parser(cks)
    p = cks.add_parser("compress", help="compress a checkpoint or a directory of them")
    p.add_argument("path")
    p.add_argument("--method", required=True, choices=["zstd", "lz4", "gzip"])
    p.add_argument("--level", type=int)
    p.add_argument("--shuffle", action="store_true", help="group float bytes by significance first (about 2x the gain)")
    p.add_argument("--remove-originals", action="store_true")
    p.add_argument("--recursive", action="store_true")
    p.set_defaults(func=cmd_compress)
    p = cks.add_parser("decompress", help="decompress a checkpoint or a directory of them")
    p.add_argument("path")
    p.add_argument("--remove-originals", action="store_true")
    p.set_defaults(func=cmd_decompress)
    p = cks.add_parser("bench", help="size, ratio and speed of every method and level on one checkpoint")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
