"""The ``fiberlab`` command line: parse, call the library, print. No logic of its own.

Errors have one path: commands raise (the library's :class:`~fiberlab.errors.FiberlabError`
kinds, ``OSError``) and :func:`main` alone turns that into one line ``fiberlab: error: ...`` on
stderr and an exit code. Exit codes: 0 success; 1 the work failed (training diverged, a batch had
failures, an OS error such as a full disk); 2 bad input (recipe, key, value, flag, path, file);
130 interrupted. Any other exception is a bug: one line ``fiberlab: internal error: ...``, exit 1,
and with ``FIBERLAB_DEBUG=1`` every error is raised again with its traceback.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from fiberlab.cli import Parser, overrides_with_train_dir
from fiberlab.errors import BadInput, FiberlabError, first_line

PROG = "fiberlab"
# OS errors about a path the user gave (exit 2); any other OS error (disk full, I/O error) is 1
USER_PATH_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)


def cmd_recipes(_: argparse.Namespace) -> int:
    from fiberlab.recipes import list_recipes

    rows = list_recipes()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fiberlab.api import train
    from fiberlab.experiments.plots import plot_learning_curve

    overrides = overrides_with_train_dir(args.train_dir, args.overrides)
    result = train(args.recipe, overrides)
    if not result.is_main:
        return 0
    curve = plot_learning_curve(result.run_dir)
    print(f"run:          {result.run_dir}")
    print(f"metrics:      {result.run_dir / 'metrics.jsonl'}")
    print(f"checkpoints:  {result.run_dir / 'checkpoints'} (last: {result.last_checkpoint.name if result.last_checkpoint else 'none'})")
    print(f"curve:        {curve}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    episodes, flags, rest = 10, {"greedy": False, "force": False}, []
    for item in args.overrides:
        key, _, val = item.partition("=")
        if key == "episodes":
            if not val.isdigit() or int(val) < 1:
                raise BadInput(f"bad value {val!r} for 'episodes': a positive integer is allowed")
            episodes = int(val)
        elif key in flags:
            if val not in ("true", "false"):
                raise BadInput(f"bad value {val!r} for {key!r}: true or false is allowed")
            flags[key] = val == "true"
        else:
            rest.append(item)
    from fiberlab.rl.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, episodes, rest, greedy=flags["greedy"], force=flags["force"])
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Train recurrent PPO agents, then make them smaller.",
               epilog="Errors: one line on stderr; exit 2 bad input, 1 failed work, 130 interrupted. FIBERLAB_DEBUG=1 shows tracebacks.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe: fiberlab train RECIPE [key.sub=value ...]")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", default=[], help="key.sub=value overrides, e.g. trainer.total_timesteps=200000")
    t.add_argument("--train-dir", help="where runs are written (the same as train_dir=DIR; default ./train_dir)")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint: fiberlab eval CHECKPOINT [episodes=N] [greedy=true] [force=true] [key=value ...]")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*", default=[])
    e.set_defaults(func=cmd_eval)
    r = sub.add_parser("recipes", help="list the named recipes")
    r.set_defaults(func=cmd_recipes)
    from fiberlab.cli.ckpt import add_parser as add_ckpt_parser

    add_ckpt_parser(sub)
    from fiberlab.cli.fibration import add_parsers as add_fibration_parsers

    add_fibration_parsers(sub)
    from fiberlab.cli.cortex import add_parser as add_cortex_parser

    add_cortex_parser(sub)
    from fiberlab.cli.sweep import add_parser as add_sweep_parser

    add_sweep_parser(sub)
    from fiberlab.cli.ad import add_parser as add_ad_parser

    add_ad_parser(sub)
    _remember_parsers(p)
    return p


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Every parser records itself (the innermost one parsed wins), so a late error can name its
    subcommand's ``--help``."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _remember_parsers(child)


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow flags that come after other positionals
    into = getattr(args, "_kv_into", "overrides")
    if extra and hasattr(args, into) and all("=" in e and not e.startswith("-") for e in extra):
        setattr(args, into, [*getattr(args, into), *extra])
    elif extra:
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


def _debug() -> bool:
    return os.environ.get("FIBERLAB_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _os_error(e: OSError) -> tuple[str, int]:
    """One line naming the path, and the exit code: 2 for a path the user gave, else 1."""
    what = e.strerror or first_line(e)
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    code = 2 if isinstance(e, USER_PATH_ERRORS) or e.errno == errno.EROFS else 1
    return (f"{' -> '.join(paths)}: {what}" if paths else what), code


def main(argv: list[str] | None = None) -> int:
    """The CLI's one error handler: every command, ``python -m fiberlab`` and the console script
    run through here. Returns the exit code (argparse's ``SystemExit`` included)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv)
    except SystemExit as e:  # argparse (--help: 0, a usage mistake: 2) or a command's own exit
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        _say(f"error: {first_line(str(e.code))}")
        return 1
    except KeyboardInterrupt:
        if _debug():
            raise
        _say("interrupted")
        return 130
    except FiberlabError as e:
        if _debug():
            raise
        _say(f"error: {first_line(e)}")
        return e.exit_code
    except OSError as e:
        if _debug():
            raise
        msg, code = _os_error(e)
        _say(f"error: {msg}")
        return code
    except Exception as e:
        if _debug():
            raise
        detail = first_line(str(e))
        _say(f"internal error: {type(e).__name__}{': ' + detail if detail else ''} (set FIBERLAB_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
