"""End to end through the CLI: train 2 epochs, checkpoint, resume, eval; determinism; NaN."""
import json

import pytest

from conftest import tiny
from fiberlab.checkpoint import read_manifest
from fiberlab.rl.logging import read_metrics
from fiberlab.rl.run_dir import list_checkpoints

FAMILIES = [
    ("demo", {}),
    ("beam_rider", {"env.num_envs": 2, "trainer.minibatch_size": 16}),
    ("arena", {"env.num_envs": 1, "env.mettagrid.max_steps": 20, "agents": 24}),
    ("navigation", {"env.num_envs": 1, "env.mettagrid.max_steps": 20, "agents": 4}),
    ("assembly_lines", {"env.num_envs": 4, "env.mettagrid.max_steps": 20, "agents": 4}),
    ("popgym.CountRecallEasy", {}),
]


@pytest.mark.parametrize("recipe, extra", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_train_resume_eval_each_env_family(cli, tmp_path, recipe, extra):
    r = cli("train", *tiny(tmp_path, recipe=recipe, **extra))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "t"
    ckpts = list_checkpoints(run)
    assert [c[0] for c in ckpts] == [1, 2]
    m = read_manifest(ckpts[-1][2])
    assert m.progress.epoch == 2 and m.run == "t" and m.env_spec.name.split(".")[0] in ("popgym", "atari", "mettagrid")
    steps_per_epoch = m.progress.agent_step // 2
    # resume: ask for 2 more epochs; counters continue from the checkpoint
    r = cli("train", *tiny(tmp_path, recipe=recipe, epochs=4, **extra))
    assert r.returncode == 0, r.stderr
    rows = read_metrics(run)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert rows[-1]["agent_step"] == 4 * steps_per_epoch
    assert list_checkpoints(run)[-1][0] == 4
    r = cli("eval", str(list_checkpoints(run)[-1][2]), "episodes=2", *(f"{k}={v}" for k, v in extra.items() if k.startswith("env.")))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["episodes"] == 2 and out["steps"] > 0 and isinstance(out["mean_return"], float)
    assert (run / "learning_curve.png").stat().st_size > 1000


def test_resume_restores_weights_and_optimizer(tmp_path):
    import torch

    from fiberlab.checkpoint import load
    from fiberlab.config import apply_overrides
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.callbacks import Callback
    from fiberlab.rl.trainer import Trainer

    class AtStart(Callback):  # what the loop starts from, seen through the hook
        def on_train_start(self, trainer):
            self.epoch, self.step, self.path = trainer.epoch, trainer.agent_step, trainer.last_checkpoint
            self.weights = [p.detach().clone() for p in trainer.policy.parameters()]
            self.adam_steps = [int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()]

    cfg = apply_overrides(get_recipe("demo"), tiny(tmp_path, epochs=2)[1:])
    Trainer(cfg).train()
    ck2 = load(list_checkpoints(tmp_path / "t")[-1][2])
    seen = AtStart()
    Trainer(apply_overrides(cfg, ["trainer.total_timesteps=192"]), callbacks=[seen]).train()
    assert (seen.epoch, seen.step) == (2, 128) and seen.path == ck2.path
    for a, b in zip(seen.weights, ck2.policy.parameters()):
        assert torch.equal(a, b)
    assert seen.adam_steps and all(s == 2 * 4 * 2 for s in seen.adam_steps)  # 2 epochs x 4 update epochs x 2 minibatches


def test_resume_false_starts_over(cli, tmp_path):
    assert cli("train", *tiny(tmp_path, epochs=3)).returncode == 0
    r = cli("train", *tiny(tmp_path, epochs=1, resume=False))
    assert r.returncode == 0, r.stderr
    assert [c[0] for c in list_checkpoints(tmp_path / "t")] == [1]
    assert [row["epoch"] for row in read_metrics(tmp_path / "t")] == [1]


def test_resume_skips_a_corrupt_latest_checkpoint(cli, tmp_path):
    assert cli("train", *tiny(tmp_path, epochs=2)).returncode == 0
    last = list_checkpoints(tmp_path / "t")[-1][2]
    last.write_bytes(last.read_bytes()[:200])
    r = cli("train", *tiny(tmp_path, epochs=3))
    assert r.returncode == 0, r.stderr
    assert "skipping unreadable checkpoint" in r.stdout
    # resumed from epoch 1: the rows the lost checkpoint covered are dropped and re-run
    assert [row["epoch"] for row in read_metrics(tmp_path / "t")] == [1, 2, 3]


def test_same_seed_same_metrics(cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert cli("train", *tiny(d, epochs=3, seed=11)).returncode == 0
    keys = ("agent_step", "epoch", "episode_return", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance", "learning_rate")
    ra, rb = read_metrics(a / "t"), read_metrics(b / "t")
    assert [{k: r[k] for k in keys} for r in ra] == [{k: r[k] for k in keys} for r in rb]
    c = tmp_path / "c"
    assert cli("train", *tiny(c, epochs=3, seed=12)).returncode == 0
    assert [r["policy_loss"] for r in read_metrics(c / "t")] != [r["policy_loss"] for r in ra]


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    import torch

    import fiberlab
    from fiberlab.rl.callbacks import Callback
    from fiberlab.rl.ppo import TrainingDiverged

    class PoisonRewards(Callback):  # from the third rollout on, the rewards are NaN
        calls = 0

        def on_rollout_end(self, rollout):
            self.calls += 1
            if self.calls >= 3:
                rollout.rewards.fill_(torch.nan)

    with pytest.raises(TrainingDiverged) as e:
        fiberlab.train("demo", tiny(tmp_path, epochs=5)[1:], callbacks=[PoisonRewards()])
    msg = str(e.value)
    assert "\n" not in msg and "loss became nan at epoch 2" in msg and "last good checkpoint:" in msg and "t__e2__s128" in msg
    assert e.value.exit_code == 1  # the CLI's one handler prints it as one line, exit 1
    assert [c[0] for c in list_checkpoints(tmp_path / "t")] == [1, 2]


def test_tensorboard_and_wandb_offline(cli, tmp_path):
    pytest.importorskip("wandb")
    r = cli("train", *tiny(tmp_path, epochs=2, **{"wandb.enabled": True, "wandb.mode": "offline"}), env={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "t" / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "t" / "wandb").glob("offline-run-*"))


def test_plain_progress_when_not_a_terminal(cli, tmp_path):
    r = cli("train", *tiny(tmp_path, epochs=2, progress="auto"))
    assert r.returncode == 0
    assert "[t] step 128/128" in r.stdout and "run:" in r.stdout and "curve:" in r.stdout


def test_bf16_update_trains_and_stays_close_to_fp32(tmp_path):
    """precision=bf16 autocasts acting and the update's forward pass (the encoder and heads; mlp_lstm's
    encoder is one layer); the first epoch's losses stay close to fp32's."""
    from fiberlab.config import apply_overrides
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.trainer import Trainer

    rows = {}
    for p in ("fp32", "bf16"):
        cfg = apply_overrides(get_recipe("demo"), tiny(tmp_path / p, epochs=2, **{"trainer.precision": p, "tensorboard": False})[1:])
        Trainer(cfg).train()
        rows[p] = read_metrics(tmp_path / p / "t")
    assert len(rows["bf16"]) == 2 and all(r["policy_loss"] is not None for r in rows["bf16"])
    a, b = rows["fp32"][0], rows["bf16"][0]
    assert a["value_loss"] != b["value_loss"]  # bf16 really ran
    assert abs(a["value_loss"] - b["value_loss"]) < 0.05 * abs(a["value_loss"]) + 1e-4
    assert abs(a["entropy"] - b["entropy"]) < 0.01
