"""Trainer callbacks: the one extension point of training (Stable-Baselines3 style).

A callback subclasses :class:`Callback` and overrides the hooks it needs; every hook is a no-op
by default. The trainer calls them in this order::

    on_train_start(trainer)         after the policy is built and any checkpoint is resumed
    per epoch:
        on_rollout_end(rollout)     the filled buffer, before advantages are computed from it
        on_epoch_end(row)           the epoch's metrics row (what metrics.jsonl gets)
        on_checkpoint(path)         after a checkpoint was written: a periodic one from within the
                                    built-in on_epoch_end (so before yours), the final one after the loop
    on_train_end(result)            the :class:`~fiberlab.rl.trainer.TrainResult`
    close()                         always, also when training fails: release files and displays

The trainer's own outputs use the same hooks: ``metrics.jsonl``/TensorBoard/W&B
(:class:`~fiberlab.rl.logging.MetricsLogger`), the progress display
(:class:`~fiberlab.rl.logging.ProgressDisplay`) and periodic checkpoints (:class:`PeriodicCheckpoint`)
are callbacks the trainer installs on rank 0 before the ones you pass. Your callbacks run on every
DDP rank (``trainer.dist.is_main`` tells rank 0). A hook may read the trainer's attributes
(``trainer.policy``, ``trainer.optimizer``, ``trainer.cfg``, ``trainer.epoch``, ``trainer.agent_step``,
``trainer.run_dir``) and may call ``trainer.save_checkpoint()``; it must not replace them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from fiberlab.rl.rollout import Rollout
    from fiberlab.rl.trainer import Trainer, TrainResult


class Callback:
    """Override the hooks you need; see the module docstring for when each is called."""

    def on_train_start(self, trainer: "Trainer") -> None:
        """The policy, optimizer and counters are ready (resumed if the run had checkpoints)."""

    def on_rollout_end(self, rollout: "Rollout") -> None:
        """A rollout was collected; tensors are ``[num_agents, bptt_horizon, ...]`` and are reused
        next epoch, so copy what you keep (a distillation dataset, say)."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """One PPO epoch finished; ``row`` holds its metrics by name."""

    def on_checkpoint(self, path: Path) -> None:
        """A checkpoint was written to ``path``."""

    def on_train_end(self, result: "TrainResult") -> None:
        """Training reached its budget; ``result`` holds the policy, run folder and final metrics."""

    def close(self) -> None:
        """Release what the callback holds (files, live displays); called on success and failure."""


class CallbackList(Callback):
    """Calls each hook on every callback in order; ``close`` reaches all of them even if one fails."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fiberlab.rl.callbacks.Callback instances, got {type(cb).__name__}")

    def on_train_start(self, trainer: "Trainer") -> None:
        for cb in self.callbacks:
            cb.on_train_start(trainer)

    def on_rollout_end(self, rollout: "Rollout") -> None:
        for cb in self.callbacks:
            cb.on_rollout_end(rollout)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(row)

    def on_checkpoint(self, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(path)

    def on_train_end(self, result: "TrainResult") -> None:
        for cb in self.callbacks:
            cb.on_train_end(result)

    def close(self) -> None:
        error: BaseException | None = None
        for cb in self.callbacks:
            try:
                cb.close()
            except BaseException as e:  # the others still close; the first failure is raised after
                error = error or e
        if error is not None:
            raise error


class PeriodicCheckpoint(Callback):
    """Writes a checkpoint every ``interval`` epochs (``trainer.checkpoint_interval``).

    The final state is saved by the trainer itself whatever the interval, so a run always ends
    with a checkpoint of its last epoch.
    """

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.trainer: "Trainer | None" = None

    def on_train_start(self, trainer: "Trainer") -> None:
        self.trainer = trainer

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        if row["epoch"] % self.interval == 0:
            self.trainer.save_checkpoint()
