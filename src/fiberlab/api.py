"""The front door: the verbs a researcher would guess, each taking whatever they have in hand.

    import fiberlab
    result = fiberlab.train("demo", {"trainer.total_timesteps": 200_000}, run="exp1")
    fiberlab.evaluate(result, episodes=64)                 # or a checkpoint path, or a policy + env
    small = fiberlab.collapse(result)                      # find the fibers and merge them
    fiberlab.evaluate(small, env=result.config.env, episodes=64)
    ck = fiberlab.load("train_dir/exp1/checkpoints/...safetensors")

"Whatever they have in hand" means a policy, a :class:`~fiberlab.rl.trainer.TrainResult`, a
:class:`~fiberlab.checkpoint.Checkpoint` or a checkpoint path. Overrides are the CLI's: dotted names
in a dict (``{"trainer.total_timesteps": 1e5}``), keyword arguments (``seed=2``, or
``**{"env.num_envs": 8}``) or ``"key=value"`` strings, all through the one parser
(:func:`fiberlab.config.apply_overrides`), with the same one-line :class:`~fiberlab.errors.BadInput`.

This module sits on top of the library (it imports ``rl``, ``fibration``, ``checkpoint``,
``recipes``); nothing in the library imports it, and the CLI's ``train``/``eval`` call it too.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from fiberlab.config import EnvConfig, TrainConfig, apply_overrides, override_strings
from fiberlab.errors import BadInput

if TYPE_CHECKING:
    from torch import nn

    from fiberlab.checkpoint import Checkpoint
    from fiberlab.envs.base import VecEnv
    from fiberlab.fibration import Fibers, Thresholds
    from fiberlab.rl.callbacks import Callback
    from fiberlab.rl.trainer import TrainResult

Overrides = Mapping[str, Any] | Iterable[str] | None


def train(recipe_or_config: str | TrainConfig = "demo", overrides: Overrides = None, *, callbacks: Sequence["Callback"] = (),
          initial_policy: "nn.Module | None" = None, **more: Any) -> "TrainResult":
    """Train a recipe (``"demo"``, ``"atari.Breakout"``, ...) or a :class:`TrainConfig`; return the result.

    ``overrides`` and ``more`` are applied in that order (``more`` wins). A run that already has
    checkpoints resumes (``resume=False`` starts it over). The result holds the trained policy,
    the run folder, the last checkpoint and the final metrics row; ``callbacks`` hook into the loop
    (:mod:`fiberlab.rl.callbacks`). ``initial_policy`` starts from given weights (a collapsed policy).
    """
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.trainer import Trainer

    base = get_recipe(recipe_or_config) if isinstance(recipe_or_config, str) else recipe_or_config
    if not isinstance(base, TrainConfig):
        raise BadInput(f"bad value of type {type(recipe_or_config).__name__} for recipe_or_config: a recipe name or a TrainConfig is allowed")
    cfg = apply_overrides(base, [*override_strings(overrides), *override_strings(more)])
    return Trainer(cfg, initial_policy=initial_policy, callbacks=callbacks).train()


def evaluate(policy_or_path: "nn.Module | TrainResult | Checkpoint | str | Path", env: "str | EnvConfig | VecEnv | None" = None,
             episodes: int = 10, *, greedy: bool = False, overrides: Overrides = None, force: bool = False) -> dict[str, Any]:
    """Mean return (with a 95 % interval) of a policy over ``episodes`` finished episodes.

    ``env``: an env name (``"popgym.RepeatPreviousEasy"``), an :class:`EnvConfig`, or a built
    ``VecEnv``. When it is None, the env is built from the run config the checkpoint (or the
    :class:`TrainResult`) records. A checkpoint path goes through
    :func:`fiberlab.rl.evaluate.evaluate_checkpoint`, as ``fiberlab eval`` does: the same number.
    """
    from torch import nn

    from fiberlab.checkpoint import Checkpoint
    from fiberlab.envs.base import VecEnv
    from fiberlab.rl.evaluate import evaluate as run_episodes
    from fiberlab.rl.evaluate import evaluate_checkpoint, evaluate_in
    from fiberlab.rl.trainer import TrainResult

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise BadInput(f"bad value {episodes!r} for episodes: a positive integer is allowed")
    extra = override_strings(overrides)
    if isinstance(env, str):
        extra.insert(0, f"env.name={env}")
    elif isinstance(env, EnvConfig):
        extra[:0] = override_strings({f"env.{k}": v for k, v in env.model_dump().items()})
    if isinstance(policy_or_path, (str, Path)):
        if isinstance(env, VecEnv):
            raise BadInput("evaluate(PATH, env=VecEnv): a checkpoint builds its own env; give env as a name or an EnvConfig")
        return evaluate_checkpoint(policy_or_path, episodes, extra, greedy=greedy, force=force)
    if isinstance(policy_or_path, TrainResult):
        policy, cfg = policy_or_path.policy, policy_or_path.config
    elif isinstance(policy_or_path, Checkpoint):
        policy, cfg = policy_or_path.policy, policy_or_path.manifest.run_config(str(policy_or_path.path))
    elif isinstance(policy_or_path, nn.Module):
        policy, cfg = policy_or_path, None
    else:
        raise BadInput(f"bad value of type {type(policy_or_path).__name__} to evaluate: a policy, a TrainResult, a Checkpoint or a checkpoint path is allowed")
    if isinstance(env, VecEnv):
        device = next(policy.parameters()).device
        return run_episodes(policy.eval(), env, episodes, device, seed=(cfg.seed if cfg else 0), greedy=greedy)
    if cfg is None:
        if env is None:
            raise BadInput("evaluate(policy) needs env=: a policy alone does not know its env (give a name such as 'popgym.RepeatPreviousEasy')")
        cfg = TrainConfig(device=str(next(policy.parameters()).device))
    return evaluate_in(policy, apply_overrides(cfg, extra), episodes, greedy=greedy)


def load(path: str | Path, device: str = "cpu", *, force: bool = False, verify: bool = True) -> "Checkpoint":
    """Load a checkpoint: validated, checksum-verified, rebuilt through the policy registry.

    The same as :func:`fiberlab.checkpoint.load` (its docstring has the details); ``.policy`` is the
    network, ``.manifest`` the run's record.
    """
    from fiberlab.checkpoint import load as load_checkpoint_file

    return load_checkpoint_file(path, device, force=force, verify=verify)


def _policy_of(thing: Any) -> "nn.Module":
    """A policy from a policy, a TrainResult, a Checkpoint or a checkpoint path."""
    from torch import nn

    from fiberlab.checkpoint import Checkpoint
    from fiberlab.rl.trainer import TrainResult

    if isinstance(thing, (str, Path)):
        return load(thing).policy
    if isinstance(thing, (TrainResult, Checkpoint)):
        return thing.policy
    if isinstance(thing, nn.Module):
        return thing
    raise BadInput(f"bad value of type {type(thing).__name__}: a policy, a TrainResult, a Checkpoint or a checkpoint path is allowed")


def find_fibers(policy: Any, thresholds: "Thresholds | Mapping[str, float] | None" = None) -> "Fibers":
    """The fibers of every hidden layer: groups of units that receive equivalent input.

    ``thresholds`` per layer kind (``linear``, ``cnn``, ``lstm``, ``critic``; see
    :class:`fiberlab.fibration.Thresholds`); larger merges more. See :func:`fiberlab.fibration.find_fibers`.
    """
    from fiberlab.fibration import find_fibers as fibers_of

    return fibers_of(_policy_of(policy), dict(thresholds) if isinstance(thresholds, Mapping) else thresholds)


def collapse(policy: Any, fibers: "Fibers | None" = None, thresholds: "Thresholds | Mapping[str, float] | None" = None) -> "nn.Module":
    """A smaller policy with one unit per fiber and merged weights (the fibers found here when not given)."""
    from fiberlab.fibration import collapse as collapse_policy

    net = _policy_of(policy)
    return collapse_policy(net, fibers if fibers is not None else find_fibers(net, thresholds))
