"""The ``fiberlab`` command line: parse, call the library, print. No logic of its own.

Exit codes: 0 success, 1 training stopped (diverged), 2 bad input (recipe, key, value, file).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fiberlab.config import ConfigError, TrainConfig, apply_overrides


def _fail(msg: str, code: int = 2) -> int:
    print(f"fiberlab: error: {msg}", file=sys.stderr)
    return code


def cmd_recipes(_: argparse.Namespace) -> int:
    from fiberlab.recipes import list_recipes

    rows = list_recipes()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fiberlab.checkpoint import CheckpointError
    from fiberlab.experiments.plots import plot_learning_curve
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.ppo import TrainingDiverged
    from fiberlab.rl.trainer import Trainer

    try:
        cfg = apply_overrides(get_recipe(args.recipe), args.overrides)
        trainer = Trainer(cfg)
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    try:
        result = trainer.train()
    except TrainingDiverged as e:
        from fiberlab.rl.run_dir import list_checkpoints

        ckpts = list_checkpoints(trainer.run_dir)
        last = ckpts[-1][2] if ckpts else "none"
        return _fail(f"{e}; last good checkpoint: {last}", 1)
    except (ValueError, CheckpointError) as e:
        return _fail(str(e))
    if not trainer.dist.is_main:
        return 0
    curve = plot_learning_curve(result.run_dir)
    print(f"run:          {result.run_dir}")
    print(f"metrics:      {result.run_dir / 'metrics.jsonl'}")
    print(f"checkpoints:  {result.run_dir / 'checkpoints'} (last: {result.last_checkpoint.name if result.last_checkpoint else 'none'})")
    print(f"curve:        {curve}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from fiberlab.checkpoint import CheckpointError, read_manifest
    from fiberlab.checkpoint.format import checkpoint_from, read_tensors
    from fiberlab.config import EnvConfig
    from fiberlab.envs import make_vecenv
    from fiberlab.rl.evaluate import evaluate
    from fiberlab.rl.trainer import resolve_device

    episodes, flags, rest = 10, {"greedy": False, "force": False}, []
    for item in args.overrides:
        key, _, val = item.partition("=")
        if key == "episodes":
            if not val.isdigit() or int(val) < 1:
                return _fail(f"bad value {val!r} for 'episodes': a positive integer is allowed")
            episodes = int(val)
        elif key in flags:
            if val not in ("true", "false"):
                return _fail(f"bad value {val!r} for {key!r}: true or false is allowed")
            flags[key] = val == "true"
        else:
            rest.append(item)
    try:
        stored = read_manifest(args.checkpoint)
        tensors = read_tensors(args.checkpoint)  # a corrupt file is reported before anything else
        if stored.get("config"):
            cfg = TrainConfig.model_validate(stored["config"])
        else:  # converted files do not know their env: it must be named
            cfg = TrainConfig(env=EnvConfig(name=stored.get("env_spec", {}).get("name") or "unknown"))
            if not any(item.startswith("env.name=") for item in rest):
                return _fail(f"{args.checkpoint}: records no run config (a migrated file?): name the env with env.name=FAMILY.NAME")
        cfg = apply_overrides(cfg, rest)
        device = resolve_device(cfg.device)
        torch.set_num_threads(cfg.trainer.torch_threads)
        env = make_vecenv(cfg.env, cfg.seed + 12_345)
        try:
            ck = checkpoint_from(Path(args.checkpoint), stored, tensors, env_spec=env.spec, force=flags["force"])
        except CheckpointError:
            env.close()
            raise
    except (CheckpointError, ConfigError, ValueError) as e:
        return _fail(str(e))
    policy = ck.policy.to(device).eval()
    with env:
        result = evaluate(policy, env, episodes, device, seed=cfg.seed, greedy=flags["greedy"])
    print(json.dumps({"checkpoint": str(args.checkpoint), "env": cfg.env.name, **result}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fiberlab", description="Train recurrent PPO agents, then make them smaller.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe: fiberlab train RECIPE [key.sub=value ...]")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. trainer.total_timesteps=200000")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint: fiberlab eval CHECKPOINT [episodes=N] [greedy=true] [force=true] [key=value ...]")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*")
    e.set_defaults(func=cmd_eval)
    r = sub.add_parser("recipes", help="list the named recipes")
    r.set_defaults(func=cmd_recipes)
    from fiberlab.cli.ckpt import add_parser as add_ckpt_parser

    add_ckpt_parser(sub)
    from fiberlab.cli.fibration import add_parsers as add_fibration_parsers

    add_fibration_parsers(sub)
    from fiberlab.cli.cortex import add_parser as add_cortex_parser

    add_cortex_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["ckpt", "migrate"]:  # its own parser, so flags may come before INPUT
        from fiberlab.checkpoint import migrate

        return migrate.main(argv[2:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow flags that come after other positionals
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
