"""The project's own errors: each message is one line meant for the user, and each kind has the
command line's exit code, so the CLI needs one handler (``fiberlab.cli.main``) instead of one per
command.

- :class:`BadInput` (exit 2): the user gave something we cannot use: a recipe, key, value, flag,
  path or file. ``ConfigError`` and ``CheckpointError`` are kinds of it.
- :class:`OperationFailed` (exit 1): the input was fine but the work did not succeed (training
  diverged, a batch had failures).
"""
from __future__ import annotations


class FiberlabError(Exception):
    """Base of every error fiberlab raises on purpose; ``str(e)`` is one line for the user."""

    exit_code = 1


class BadInput(FiberlabError, ValueError):
    """Something the user passed (a value, a flag, a path, a file) is not usable: exit code 2."""

    exit_code = 2


class OperationFailed(FiberlabError):
    """Valid input, failed work (a diverged run, a batch with failures): exit code 1."""

    exit_code = 1


def first_line(what: BaseException | str, fallback: str | None = None) -> str:
    """The first non-empty line of an error or a text, stripped: what a one-line message shows.

    An exception with no text gives its type's name (or ``fallback`` when given)."""
    for line in str(what).splitlines():
        if line.strip():
            return line.strip()
    if fallback is not None:
        return fallback
    return type(what).__name__ if isinstance(what, BaseException) else ""
