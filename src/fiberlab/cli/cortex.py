"""``fiberlab cortex eval``: train memory stacks on a synthetic task over seeds, print a table.

Parse, call :func:`fiberlab.experiments.cortex_eval.run_eval`, print. Several ``--pattern``
values give one comparison table. Exit codes: 0 done; 2 bad input (unknown task or pattern, a
non-positive size, a bad task parameter), raised as :class:`~fiberlab.errors.BadInput` before
anything is written and reported as one line by the handler in :func:`fiberlab.cli.main.main`.
"""
from __future__ import annotations

import argparse
from typing import Any

from fiberlab.errors import BadInput

SIZE_FLAGS = {"d_hidden": "--d-hidden", "num_layers": "--num-layers", "seeds": "--seeds", "epochs": "--epochs",
              "samples": "--samples", "length": "--length", "chunk_size": "--chunk-size", "threads": "--threads"}


def _positive(flag: str, text: str | None) -> int | None:
    """Sizes arrive as text so a bad one is reported in our one-line format, not argparse's usage."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise BadInput(f"bad value {text!r} for {flag}: a positive integer is allowed")
    return value


def _task_arg(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise BadInput(f"bad --task-arg {item!r}: KEY=VALUE is allowed (e.g. tail=16)")
    for cast in (int, float):
        try:
            return key, cast(text)
        except ValueError:
            pass
    raise BadInput(f"bad value {text!r} for task parameter {key!r}: a number is allowed")


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ["task", "pattern", "accuracy (95% CI)", "chance", "parameters", "tokens/s", "seeds"]
    body = []
    for r in rows:
        ci = "n/a" if r["acc_ci95"] is None else f"{r['acc_ci95']:.3f}"
        body.append([r["task"], r["pattern"], f"{r['acc_mean']:.3f} ± {ci}", f"{r['chance']:.3f}",
                     f"{r['parameters']:,}", f"{r['tokens_per_s']:,.0f}", str(len(r["seeds"]))])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text, same columns
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
        for line in [header, *body]:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        return
    table = Table(title=None)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right")
    for b in body:
        table.add_row(*b)
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)


def cmd_eval(args: argparse.Namespace) -> int:
    from fiberlab.experiments.cortex_eval import EvalConfig, check_config, run_eval
    from fiberlab.experiments.memory_tasks import TASKS

    if args.task not in TASKS:
        raise BadInput(f"unknown task {args.task!r}: allowed are {', '.join(TASKS)}")
    sizes = {name: _positive(flag, getattr(args, name)) for name, flag in SIZE_FLAGS.items()}
    overrides = dict(_task_arg(item) for item in args.task_arg)
    if sizes["length"] is not None:
        overrides[TASKS[args.task].length_param] = sizes["length"]
    configs = []
    for pattern in args.pattern:
        cfg = EvalConfig(task=args.task, pattern=pattern, task_overrides=overrides, chunk_size=sizes["chunk_size"], device=args.device,
                         **{k: v for k, v in sizes.items() if v is not None and k not in ("length", "chunk_size")})
        try:
            check_config(cfg)  # every pattern is checked before the first one trains
        except ImportError as e:  # a cell module missing from this install
            raise BadInput(f"pattern {pattern!r} needs a cell that cannot be imported: {e}") from e
        configs.append(cfg)
    rows = []
    for cfg in configs:
        summary = run_eval(cfg, args.out, log=lambda line: print(line, flush=True))
        if summary["reused"]:
            print(f"{summary['dir']}: seeds {summary['reused']} read back from earlier runs", flush=True)
        rows.append(summary)
    _print_table(rows)
    for r in rows:
        print(f"results: {r['dir']}/seed_<s>.json, summary.json")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cortex", help="cortex memory backbones: fiberlab cortex eval --task TASK --pattern P [P ...]")
    csub = p.add_subparsers(dest="cortex_command", required=True)
    e = csub.add_parser("eval", help="train stacks on a synthetic memory task over seeds; print accuracy ± 95%% CI")
    e.add_argument("--task", required=True, help="delayed_recall, majority, majority_headpad, dyck, two_needle_xor, assoc_recall")
    e.add_argument("--pattern", required=True, nargs="+", help="one or more patterns, e.g. --pattern L A AgSA")
    e.add_argument("--d-hidden", dest="d_hidden", default="128", help="stack width (default 128)")
    e.add_argument("--num-layers", dest="num_layers", default="3", help="stack depth (default 3)")
    e.add_argument("--seeds", default="5", help="seeds 0..N-1, one JSON each (default 5)")
    e.add_argument("--epochs", default="5", help="passes over the training split (default 5)")
    e.add_argument("--samples", default="2000", help="samples generated, split 80/10/10 (default 2000)")
    e.add_argument("--length", default=None, help="the task's length (delay, length or pairs)")
    e.add_argument("--chunk-size", dest="chunk_size", default=None, help="stream in chunks; backprop through the last one only")
    e.add_argument("--task-arg", dest="task_arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other task parameter, e.g. --task-arg tail=16 (repeatable)")
    e.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    e.add_argument("--threads", default="1", help="torch threads")
    e.add_argument("--out", default="train_dir/cortex_eval", help="result root folder")
    e.set_defaults(func=cmd_eval)
