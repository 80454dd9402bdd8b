"""``fiberlab ckpt migrate``: its flags and what it prints. The work is the library's
(:func:`fiberlab.checkpoint.migrate.migrate`), imported when the command runs so that building
the parser (every ``--help``) stays light.

Exit codes: 0 every file migrated or skipped, 1 some file failed, 2 bad arguments (a usage
mistake, a missing INPUT, a file OUTPUT for a directory INPUT), through the CLI's one handler.
Flags may come before or after INPUT (``ckpt migrate --no-backup old.pt``).
"""
from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = ("Convert legacy checkpoints (torch.save state dicts, training saves, Metta and PufferLib files, "
               "plain safetensors) and older fiberlab format versions into current fiberlab checkpoints.")
EPILOG = "Exit codes: 0 every file migrated or skipped, 1 some file failed, 2 bad arguments. See docs/checkpoints_migration.md."


def add_parser(cks: argparse._SubParsersAction) -> None:
    p = cks.add_parser("migrate", help="convert legacy or older checkpoints (see --help)", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("input", metavar="INPUT", help="a checkpoint file or a directory of them")
    p.add_argument("output", metavar="OUTPUT", nargs="?", help="output file, or directory for a directory INPUT (default: beside the input)")
    p.add_argument("--no-backup", action="store_true", help="do not copy each migrated input to <input>.bak")
    p.add_argument("--recursive", action="store_true", help="also migrate files in subdirectories")
    p.add_argument("--trust-pickle", action="store_true", help="fully unpickle files that need it (can run code: trusted sources only)")
    p.add_argument("-v", "--verbose", action="store_true", help="say what is detected and done for each file")
    p.set_defaults(func=cmd_migrate)


def _say(line: str) -> None:
    print(line, flush=True)


def print_summary(summary: Any) -> None:
    """One line per file (its warnings indented below), then the totals."""
    for r in summary.results:
        line = f"{r.status:<8} {r.path}"
        if r.status == "migrated":
            line += f" -> {r.output} ({r.kind}{', ' + r.layout + ' names' if r.layout and r.layout != 'fiberlab' else ''})"
            if r.backup:
                line += f", backup {r.backup}"
        else:
            line += f": {r.reason}"
        print(line)
        for w in r.warnings:
            print(f"         warning: {w}")
    total = f"{len(summary.results)} file{'s' if len(summary.results) != 1 else ''}: {summary.migrated} migrated, {summary.skipped} skipped, {summary.failed} failed"
    if summary.report_path:
        total += f"; report {summary.report_path}"
    print(total)


def cmd_migrate(args: argparse.Namespace) -> int:
    from fiberlab.checkpoint.migrate import migrate

    summary = migrate(args.input, args.output, backup=not args.no_backup, recursive=args.recursive,
                      trust_pickle=args.trust_pickle, say=_say if args.verbose else None)
    print_summary(summary)
    return 0 if summary.ok else 1
