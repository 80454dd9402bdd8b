"""AD training (fiberlab.distill.train): the schedule, count-weighted evaluation, learning on a
tiny synthetic history, best vs last checkpoints, resume and skip, run folders."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_distill_model import expert_history, random_transitions, tiny_cfg

from fiberlab.distill.config import ADConfig
from fiberlab.errors import BadInput


def train_cfg(tmp_path, **kw) -> ADConfig:
    base = {"train_dir": str(tmp_path / "runs"), "tf_n_embd": 16, "tf_n_head": 2, "tf_n_layer": 2, "tf_dim_feedforward": 32,
            "n_transit": 10, "batch_size": 64, "lr": 3e-3, "train_steps": 60, "eval_interval": 20, "tf_dropout": 0.1, "device": "cpu",
            "torch_threads": 1}
    return ADConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    from fiberlab.envs.darkroom import task_split

    train, test = task_split("darkroom", 0)
    return expert_history(tmp_path_factory.mktemp("h") / "history_darkroom_PPO_alg-seed0_compressed.hdf5", train[:4] + test[:2], T=60, S=3,
                          eps=0.3, policy="state")


def test_learning_rate_warms_up_then_decays_to_zero():
    from fiberlab.distill.train import learning_rate

    cfg = ADConfig(lr=1e-2, warmup_steps=10, train_steps=110)
    lrs = [learning_rate(cfg, s) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))  # linear warm-up
    assert lrs[60] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] < 1e-5 and learning_rate(cfg, 110) == pytest.approx(0.0)
    assert learning_rate(ADConfig(lr=1.0, train_steps=4), 0) == 1.0  # no warm-up: starts at lr


def test_test_metrics_are_weighted_by_count():
    """Batches of unequal size: the result is the mean over windows, not the mean of batch means."""
    from fiberlab.distill.model import ADTransformer
    from fiberlab.distill.train import evaluate_windows
    from fiberlab.distill.windows import Windows

    gen = torch.Generator().manual_seed(0)
    tr, _ = random_transitions(3, 25, gen)
    w = Windows(tr.to(torch.uint8), 10)  # 3 x 16 = 48 windows
    torch.manual_seed(0)
    m = ADTransformer(tiny_cfg(n_transit=10)).eval()
    b = w.gather(torch.arange(len(w)))
    with torch.no_grad():
        logits = m(b.transitions, b.query)
    want_loss = F.cross_entropy(logits, b.target).item()
    want_acc = (logits.argmax(-1) == b.target).float().mean().item()
    for batch in (7, 48, 1000):  # 7: six batches of 7 and one of 6
        loss, acc, n = evaluate_windows(m, w, batch)
        assert n == 48 and loss == pytest.approx(want_loss, abs=1e-5) and acc == pytest.approx(want_acc, abs=1e-9)
    # the mean of the batch means (the guide's bug) is a different number here, so this test can tell them apart
    with torch.no_grad():
        per_batch = [(m(x.transitions, x.query).argmax(-1) == x.target).float().mean().item() for x in w.batches(7)]
    assert abs(sum(per_batch) / len(per_batch) - want_acc) > 1e-4


def test_training_learns_the_expert_and_keeps_best_and_last(tmp_path, history):
    from fiberlab.distill.ad_checkpoint import load_ad, read_ad
    from fiberlab.distill.train import train_ad

    cfg = train_cfg(tmp_path, model="compressed")
    res = train_ad(cfg, history, progress=False)
    rows = res.rows
    assert [r["step"] for r in rows] == [20, 40, 60]
    assert res.run_dir == tmp_path / "runs" / "darkroom_compressed_seed0"
    # the scripted policy takes (x + 2y) mod 5 with probability 0.7 + 0.3 / 5 = 0.76 (the best a
    # model can do); chance is 1/5, and an untrained model's test loss is about log 5
    assert rows[-1]["test_accuracy"] > 0.6
    assert rows[0]["train_loss"] > rows[-1]["train_loss"]
    assert rows[-1]["test_loss"] < math.log(5) - 0.4
    best = max(rows, key=lambda r: r["test_accuracy"])
    assert res.best_test_accuracy == pytest.approx(best["test_accuracy"])
    _, cfg2, meta = load_ad(res.best_checkpoint)
    assert cfg2 == cfg and meta["step"] == best["step"] and meta["test_accuracy"] == pytest.approx(best["test_accuracy"])
    assert meta["marker_rates"]["start"] > 0 and meta["env"] == "darkroom" and meta["dataset"] == str(history.resolve())
    last = read_ad(res.last_checkpoint)
    assert last.meta["step"] == 60 and last.optimizer is not None and set(last.rng) == {"torch_cpu", "sampler"}
    assert read_ad(res.best_checkpoint).optimizer is None
    lines = (res.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [20, 40, 60]
    record = json.loads((res.run_dir / "config.json").read_text())
    assert record["config"]["model"] == "compressed" and record["dataset"] == str(history.resolve())
    assert record["segments"] == {"on_policy_threshold": 0.7, "compression_window": 10, "mask_rule": "lookahead", "markers": True, "random": False}


class Stop(Exception):
    pass


def test_resume_continues_from_last_bit_for_bit_and_a_finished_run_is_skipped(tmp_path, history):
    from fiberlab.distill.ad_checkpoint import read_ad
    from fiberlab.distill.train import run_finished, train_ad

    straight = train_ad(train_cfg(tmp_path / "a", train_steps=40, eval_interval=10), history, progress=False)

    def stop_at_20(row):
        if row["step"] == 20:
            raise Stop

    cfg = train_cfg(tmp_path / "b", train_steps=40, eval_interval=10)
    with pytest.raises(Stop):
        train_ad(cfg, history, progress=False, on_eval=stop_at_20)
    assert read_ad(tmp_path / "b" / "runs" / "darkroom_ad_seed0" / "checkpoints" / "last.safetensors").meta["step"] == 20
    assert not run_finished(tmp_path / "b" / "runs" / "darkroom_ad_seed0", cfg)
    seen = []
    resumed = train_ad(cfg, history, progress=False, on_eval=lambda r: seen.append(r["step"]))
    assert seen == [30, 40] and [r["step"] for r in resumed.rows] == [10, 20, 30, 40]
    a, b = read_ad(straight.last_checkpoint).model.state_dict(), read_ad(resumed.last_checkpoint).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["test_loss"] for r in straight.rows] == [r["test_loss"] for r in resumed.rows]
    assert run_finished(resumed.run_dir, cfg)
    stamps = {p: p.stat().st_mtime_ns for p in resumed.run_dir.rglob("*") if p.is_file()}
    again = train_ad(cfg, history, progress=False)
    assert again.skipped and [r["step"] for r in again.rows] == [10, 20, 30, 40]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_runs_of_different_models_never_share_a_folder_and_a_changed_config_is_refused(tmp_path, history, capsys):
    from fiberlab.distill.train import train_ad

    runs = {m: train_ad(train_cfg(tmp_path, model=m, train_steps=4, eval_interval=2), history).run_dir
            for m in ("ad", "random_markers")}
    assert runs["ad"] != runs["random_markers"] and runs["random_markers"].name == "darkroom_random_markers_seed0"
    out = capsys.readouterr().out
    assert out.count("[ad darkroom_ad_seed0] step") == 2 and "test loss" in out  # one plain line per eval
    with pytest.raises(BadInput, match="lr=0.003, not 0.001") as e:
        train_ad(train_cfg(tmp_path, model="ad", train_steps=4, eval_interval=2, lr=1e-3), history)
    assert "\n" not in str(e.value)
    # settings that do not change the computation may differ
    assert train_ad(train_cfg(tmp_path, model="ad", train_steps=4, eval_interval=2, torch_threads=2), history).skipped
