"""Trainer callbacks: the hooks fire in order with the documented arguments, a user callback sees
what the built-in ones see, and ``close`` runs even when training fails."""
from __future__ import annotations

import json

import pytest
import torch

import fiberlab
from conftest import tiny
from fiberlab.rl.callbacks import Callback
from fiberlab.rl.run_dir import list_checkpoints


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, trainer):
        self.events.append(("start", trainer.epoch, trainer.agent_step, type(trainer.policy).__name__))

    def on_rollout_end(self, rollout):
        self.events.append(("rollout", tuple(rollout.actions.shape), float(rollout.rewards.sum())))

    def on_epoch_end(self, row):
        self.events.append(("epoch", row["epoch"], row["agent_step"], sorted(row)))

    def on_checkpoint(self, path):
        self.events.append(("checkpoint", path))

    def on_train_end(self, result):
        self.events.append(("end", result))

    def close(self):
        self.events.append(("close",))


def test_hooks_fire_in_order_with_what_they_document(tmp_path):
    rec = Recorder()
    result = fiberlab.train("demo", tiny(tmp_path, epochs=3, **{"trainer.checkpoint_interval": 2})[1:], callbacks=[rec])
    kinds = [e[0] for e in rec.events]
    # built-in callbacks run first: epoch 2's periodic checkpoint is written (and reported) before
    # this callback's on_epoch_end; the final one after the loop
    assert kinds == ["start", "rollout", "epoch", "rollout", "checkpoint", "epoch", "rollout", "epoch", "checkpoint", "end", "close"]
    assert rec.events[0] == ("start", 0, 0, "RecurrentPolicy")
    assert rec.events[1][1] == (8, 8)  # [num_agents, bptt_horizon]
    rows = [e for e in rec.events if e[0] == "epoch"]
    assert [(e[1], e[2]) for e in rows] == [(1, 64), (2, 128), (3, 192)]
    # the row a callback gets is the row metrics.jsonl gets, by name
    logged = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in logged] == [e[3] for e in rows]
    assert {"policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance", "minibatches"} <= set(logged[-1])
    # periodic (epoch 2) and final (epoch 3) checkpoints, each reported once, as written
    reported = [e[1] for e in rec.events if e[0] == "checkpoint"]
    assert reported == [c[2] for c in list_checkpoints(tmp_path / "t")] and [c[0] for c in list_checkpoints(tmp_path / "t")] == [2, 3]
    assert rec.events[-2][1] is result and result.last_checkpoint == reported[-1]
    assert result.metrics == logged[-1] and (result.epoch, result.agent_step) == (3, 192)


def test_the_result_holds_the_trained_policy_of_the_last_checkpoint(tmp_path):
    result = fiberlab.train("demo", tiny(tmp_path, epochs=2)[1:])
    ck = fiberlab.load(result.last_checkpoint)
    for a, b in zip(result.policy.state_dict().values(), ck.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert result.config.policy == ck.policy.config  # the resolved widths, not the recipe's Nones


def test_close_runs_when_training_fails_and_the_error_reaches_the_caller(tmp_path):
    class Boom(Callback):
        closed = False

        def on_epoch_end(self, row):
            if row["epoch"] == 2:
                raise RuntimeError("callback failed at epoch 2")

        def close(self):
            Boom.closed = True

    with pytest.raises(RuntimeError, match="callback failed at epoch 2"):
        fiberlab.train("demo", tiny(tmp_path, epochs=4)[1:], callbacks=[Boom()])
    assert Boom.closed
    # the built-in callbacks ran before it: epoch 2 was logged and checkpointed before the failure
    assert [json.loads(x)["epoch"] for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_callback_can_save_a_checkpoint_and_collect_rollouts(tmp_path):
    class KeepFirstActions(Callback):  # e.g. a distillation dataset recorded during training
        def on_train_start(self, trainer):
            self.trainer, self.kept, self.extra = trainer, [], None

        def on_rollout_end(self, rollout):
            self.kept.append(rollout.actions.clone())

        def on_epoch_end(self, row):
            if row["epoch"] == 1:
                self.extra = self.trainer.save_checkpoint()

    cb = KeepFirstActions()
    fiberlab.train("demo", tiny(tmp_path, epochs=2, **{"trainer.checkpoint_interval": 10})[1:], callbacks=[cb])
    assert len(cb.kept) == 2 and not torch.equal(cb.kept[0], cb.kept[1])  # copies, not the reused buffer
    assert cb.extra is not None and [c[0] for c in list_checkpoints(tmp_path / "t")] == [1, 2]


def test_only_callbacks_are_accepted(tmp_path):
    with pytest.raises(TypeError, match="Callback instances"):
        fiberlab.train("demo", tiny(tmp_path)[1:], callbacks=[lambda row: None])
    assert not (tmp_path / "t").exists()
