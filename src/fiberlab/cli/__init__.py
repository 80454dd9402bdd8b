"""The ``fiberlab`` command line. What every command shares lives here:

- :class:`Parser`: the one ``ArgumentParser`` class of the root parser and so of every subparser
  (``add_subparsers`` makes its parsers of the parent's class): a usage mistake is one line
  ``fiberlab: error: ... (see 'fiberlab SUB --help')``, exit code 2.
- Bad input is the library's to judge: it raises :class:`~fiberlab.errors.BadInput` (one line
  naming the value and what is allowed), which the single handler in :func:`fiberlab.cli.main.main`
  prints; the CLI adds no checks of its own beyond its flags, so Python users get the same errors.
- :func:`count` and :func:`resolve_train_dir`: checks shared by several commands.

Light on purpose: importing it must not import torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fiberlab.errors import BadInput


class Parser(argparse.ArgumentParser):
    """argparse without the usage block: a mistake is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        msg = " ".join(str(message).split())
        self.exit(2, f"fiberlab: error: {msg} (see '{self.prog} --help')\n")


def count(flag: str, value: int | None, minimum: int = 0) -> int | None:
    """``value`` if it is None or at least ``minimum``; else BadInput naming ``flag``."""
    if value is not None and value < minimum:
        allowed = "a non-negative integer" if minimum == 0 else "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise BadInput(f"bad value {value} for {flag}: {allowed} is allowed")
    return value


def resolve_train_dir(flag: str | None, items: list[str]) -> tuple[str | None, list[str]]:
    """``--train-dir DIR`` and ``train_dir=DIR`` are one setting: return (DIR or None, ``items``
    without their ``train_dir=`` entries). Given more than once with different values: BadInput."""
    given = [("--train-dir", flag)] if flag is not None else []
    rest = []
    for item in items:
        key, sep, val = item.partition("=")
        if sep and key == "train_dir":
            given.append((f"train_dir={val}", val))
        else:
            rest.append(item)
    for spelling, val in given:
        if not val:
            raise BadInput(f"bad value {spelling!r}: train_dir needs a folder")
    for spelling, val in given[1:]:
        first, first_val = given[0]
        if Path(val) != Path(first_val):
            first_text = f"--train-dir {first_val}" if first == "--train-dir" else first
            raise BadInput(f"train_dir given twice with different values ({first_text} and {spelling}): give it once")
    return (given[0][1] if given else None), rest


def overrides_with_train_dir(flag: str | None, items: list[str]) -> list[str]:
    """``items`` with the one ``train_dir`` setting (from ``--train-dir`` or ``train_dir=``, see
    :func:`resolve_train_dir`) as a single ``train_dir=DIR`` override at the end, when given."""
    train_dir, rest = resolve_train_dir(flag, items)
    return rest if train_dir is None else [*rest, f"train_dir={train_dir}"]
