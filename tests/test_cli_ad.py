"""``fiberlab ad ...`` and ``fiberlab pipeline ad``: bad input is one line and exit 2, the commands
work on a tiny hand-written history file, and (slow) the pipeline runs end to end and resumes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fiberlab.cli.main import build_parser, main

T, S = 40, 3  # steps per stream, streams: two Darkroom episodes


def write_tiny_history(path, goals=(0, 40), seed=0):
    """A valid history file (fiberlab's schema) with random behaviour and rising confidence."""
    from fiberlab.distill.histories import GoalHistory, write_history
    from fiberlab.distill.segments import segment_mask

    rng = np.random.default_rng(seed)

    def goal(g):
        probs = np.clip(np.linspace(0.2, 1.0, T)[:, None] + rng.normal(0, 0.1, (T, S)), 0, 1).astype(np.float32)
        dones = np.zeros((T, S), bool)
        dones[19::20] = True
        return GoalHistory(states=rng.integers(0, 9, (T, S, 2)), actions=rng.integers(0, 5, (T, S)),
                           rewards=(rng.random((T, S)) < 0.2).astype(np.float32), next_states=rng.integers(0, 9, (T, S, 2)),
                           dones=dones, action_probs=probs, compression_mask=segment_mask(probs, 0.7, 5, "lookahead"))

    attrs = {"env": "darkroom", "alg": "PPO", "alg_seed": 0, "n_stream": S, "horizon": 20, "on_policy_threshold": 0.7,
             "compression_window": 5, "mask_rule": "lookahead", "total_steps": T * S * len(goals), "compressed_steps": 0,
             "compression_ratio": 0.4}
    return write_history(path, ((g, goal(g)) for g in goals), attrs)


@pytest.fixture
def history(tmp_path):
    return write_tiny_history(tmp_path / "history_darkroom_PPO_alg-seed0_compressed.hdf5")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fiberlab: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_threshold_outside_unit_interval(capsys, history):
    assert_one_line_error(capsys, ["ad", "stats", str(history), "--threshold", "1.5"], "threshold=1.5")
    assert_one_line_error(capsys, ["ad", "plot-segments", str(history), "--goal", "0", "--stream", "0", "--threshold", "-0.1"], "threshold")


def test_window_below_one(capsys, history):
    assert_one_line_error(capsys, ["ad", "stats", str(history), "--window", "0"], "window=0")


def test_not_an_hdf5_file(capsys, tmp_path):
    bad = tmp_path / "notes.hdf5"
    bad.write_text("not hdf5 at all")
    assert_one_line_error(capsys, ["ad", "stats", str(bad)], "not an HDF5 file")


def test_hdf5_file_of_another_schema(capsys, tmp_path):
    import h5py

    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f.attrs["schema"] = "someone.else/3"
        f.create_dataset("x", data=np.arange(3))
    assert_one_line_error(capsys, ["ad", "stats", str(other)], "schema")
    assert_one_line_error(capsys, ["ad", "train", str(other), "train_steps=1"], "schema")


def test_missing_goal_group(capsys, history, tmp_path):
    assert_one_line_error(capsys, ["ad", "plot-segments", str(history), "--goal", "7", "--stream", "0", "--out", str(tmp_path / "p.png")],
                          "no goal group '7'")


def test_missing_paths(capsys, tmp_path):
    missing = str(tmp_path / "nope.hdf5")
    assert_one_line_error(capsys, ["ad", "stats", missing], "nope.hdf5")
    assert_one_line_error(capsys, ["ad", "train", missing], "nope.hdf5")
    assert_one_line_error(capsys, ["ad", "evaluate", str(tmp_path / "nope.safetensors")], "nope.safetensors")
    assert_one_line_error(capsys, ["ad", "compare", str(tmp_path / "no_runs"), "--out", str(tmp_path / "o")], "no_runs")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(capsys, ["ad", "compare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "run folder")


def test_unknown_model_kind_and_bad_override(capsys, history):
    assert_one_line_error(capsys, ["ad", "train", str(history), "model=transformer_xl"], "model")
    assert_one_line_error(capsys, ["ad", "train", str(history), "lr=-1"], "lr")
    assert_one_line_error(capsys, ["ad", "collect", "n_stream=0"], "n_stream")
    assert_one_line_error(capsys, ["ad", "collect", "colour=red"], "unknown key 'colour'")


def test_pipeline_names_and_overrides(capsys):
    assert_one_line_error(capsys, ["pipeline", "other", "darkroom"], "allowed are fibration, ad")
    assert_one_line_error(capsys, ["pipeline", "ad", "lightroom"], "unknown env 'lightroom'")
    assert_one_line_error(capsys, ["pipeline", "ad", "darkroom", "--seeds", "0"], "--seeds")
    assert_one_line_error(capsys, ["pipeline", "ad", "darkroom", "seed=3"], "the pipeline sets")
    assert_one_line_error(capsys, ["pipeline", "ad", "darkroom", "bogus=1"], "unknown key 'bogus'")
    assert_one_line_error(capsys, ["pipeline", "ad", "darkroom", "--threshold", "0.5"], "on_policy_threshold")
    assert_one_line_error(capsys, ["pipeline", "ad", "darkroom", "eval_timesteps=x"], "eval_timesteps")
    assert_one_line_error(capsys, ["pipeline", "ad", "darkroom", "batch_size=32"], "train.batch_size=32")


def test_pipeline_fibration_still_parses():
    args = build_parser().parse_args(["pipeline", "fibration", "demo", "trainer.total_timesteps=64", "--seeds", "2", "--threshold", "0.5"])
    assert (args.name, args.recipe, args.seeds, args.threshold, args.overrides) == ("fibration", "demo", 2, 0.5, ["trainer.total_timesteps=64"])
    args = build_parser().parse_args(["pipeline", "ad", "darkroom", "n_stream=2", "train.lr=1e-3"])
    assert (args.name, args.recipe, args.overrides) == ("ad", "darkroom", ["n_stream=2", "train.lr=1e-3"])


def test_pipeline_overrides_route_to_the_config_that_has_the_key():
    from fiberlab.cli.ad import split_pipeline_overrides

    collect, train, own = split_pipeline_overrides(
        ["n_stream=2", "lr=1e-3", "on_policy_threshold=0.8", "collect.device=cpu", "train.device=cpu", "eval_timesteps=40"])
    assert collect == ["n_stream=2", "on_policy_threshold=0.8", "device=cpu"]
    assert train == ["lr=1e-3", "on_policy_threshold=0.8", "device=cpu"]
    assert own == {"eval_timesteps": "40"}


def test_stats_and_plot_segments_on_a_tiny_file(capsys, history, tmp_path):
    code, out, _ = run(capsys, "ad", "stats", str(history))
    assert code == 0
    assert "marked" in out and "on-policy by construction" in out
    code, out2, _ = run(capsys, "ad", "stats", str(history), "--threshold", "0.99", "--window", "30", "--rule", "causal")
    assert code == 0 and out2 != out and "recomputed" in out2
    png = tmp_path / "seg.png"
    code, out, _ = run(capsys, "ad", "plot-segments", str(history), "--goal", "40", "--stream", "2", "--out", str(png), "--rule", "both")
    assert code == 0 and png.stat().st_size > 0 and str(png) in out


def test_importing_the_cli_module_imports_no_torch():
    code = "import sys, fiberlab.cli.ad, fiberlab.cli.main; fiberlab.cli.main.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- end to end (slow)
TINY = ["n_stream=2", "steps_per_goal=400", "collect.progress=none", "train_steps=20", "eval_interval=10", "train.batch_size=32",
        "tf_n_layer=1", "tf_n_embd=16", "tf_n_head=2", "tf_dim_feedforward=32", "n_transit=20", "eval_timesteps=40", "train.device=cpu",
        "train.torch_threads=1", "on_policy_threshold=0.3", "compression_window=3"]


@pytest.mark.slow
def test_pipeline_ad_end_to_end_then_everything_skipped(capsys, tmp_path):
    argv = ["pipeline", "ad", "darkroom", "--seeds", "2", f"out_dir={tmp_path / 'datasets'}", f"train_dir={tmp_path / 'runs'}", *TINY]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    compare = tmp_path / "runs" / "darkroom_compare"
    for suffix in ("md", "csv", "png", "pdf", "json"):
        assert (compare / f"ad_compare.{suffix}").stat().st_size > 0
    table = (compare / "ad_compare.md").read_text()
    for label in ("AD", "CompressedAD, causal markers", "CompressedAD, no markers", "random markers", "PPO source", "best possible"):
        assert label in table
    assert "± n/a" not in table  # two seeds: real intervals
    summary = json.loads((compare / "ad_compare.json").read_text())
    assert abs(summary["references"]["best_return"] - 17.25) < 1e-9
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name != "darkroom_compare")
    assert runs == sorted(f"darkroom_{m}_seed{s}" for m in ("ad", "compressed", "random_markers") for s in (0, 1))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file() and "darkroom_compare" not in str(p)}
    stamps[next((tmp_path / "datasets").iterdir())] = next((tmp_path / "datasets").iterdir()).stat().st_mtime_ns

    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "collect" in out and out.count("skipped") >= 1
    for stage in ["collect"] + [f"train {r}" for r in runs]:
        assert stage in out.split("skipped (already done):")[1]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten


# --------------------------------------------------------------------------- compare on synthetic runs
def fake_run(root, model, seed, accs, curve, markers):
    """A run folder as train_ad and the pipeline leave it: config, test metrics, an evaluation."""
    from fiberlab.envs.darkroom import task_split

    run = root / f"darkroom_{model}_seed{seed}"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": model, "seed": seed, "env_split_seed": 0}))
    rows = [{"step": 100 * (i + 1), "test_accuracy": a, "test_loss": 2.0 - a} for i, a in enumerate(accs)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = {"env": "darkroom", "goals": "test", "tasks": task_split("darkroom", 0)[1], "markers": markers,
          "mean_per_episode": list(curve), "auc": float(np.mean(curve))}
    (run / f"in_context_test_{markers}_T100.json").write_text(json.dumps(ev))
    return run


def test_compare_table_intervals_claims_and_figure(capsys, tmp_path):
    from fiberlab.envs.darkroom import task_split
    from fiberlab.intervals import t_interval

    runs = tmp_path / "runs"
    ad_final = [0.50, 0.70, 0.60]
    for s, final in enumerate(ad_final):  # AD reaches 0.57 at step 300 (seed 0: never)
        fake_run(runs, "ad", s, [0.2, 0.4, final], [1.0 + s, 2.0, 3.0, 4.0, 5.0], "none")
    for s, final in enumerate([0.62, 0.66]):  # CompressedAD reaches 0.57 at step 200
        fake_run(runs, "compressed", s, [0.55, 0.6, final], [2.0, 3.0, 4.0, 5.0, 6.0 + s], "causal")
    fake_run(runs, "random_markers", 0, [0.3, 0.5, 0.55], [0.0, 1.0, 1.0, 2.0, 2.0], "random")
    history = write_tiny_history(tmp_path / "h.hdf5", goals=task_split("darkroom", 0)[1])
    code, _, err = run(capsys, "ad", "compare", str(runs), "--out", str(tmp_path / "cmp"), "--history", str(history), "--no-evaluate")
    assert code == 0, err
    table = (tmp_path / "cmp" / "ad_compare.md").read_text()
    mean, half = t_interval(ad_final)
    ad_row = next(l for l in table.splitlines() if l.startswith("| AD |"))
    assert f"{100 * mean:.1f} % ± {100 * half:.1f} %" in ad_row and "| 3 |" in ad_row
    rm_row = next(l for l in table.splitlines() if l.startswith("| random markers |"))
    assert "± n/a" in rm_row and "| 1 |" in rm_row  # one seed: no interval
    assert "± 0" not in rm_row
    assert "17.25" in table and "PPO source" in table
    # sample efficiency: level = 0.95 * min(0.6, 0.64) = 0.57 -> AD: steps 300, 300 (seed 0 never); compressed: 200, 200
    claims = {c["claim"]: c for c in json.loads((tmp_path / "cmp" / "ad_compare.json").read_text())["claims"]}
    eff = claims["sample efficiency (steps to a test accuracy)"]
    assert eff["measured"] == f"{300 / 200:.2f}x" and "AD 2/3 runs" in eff["how"]
    assert claims["on-policy (compression) ratio of the dataset"]["measured"] == "40.0 %"
    import csv

    rows = list(csv.DictReader((tmp_path / "cmp" / "ad_compare.csv").read_text().splitlines()))
    by = {r["group"]: r for r in rows}
    assert float(by["AD"]["return_ep1_mean"]) == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert by["random markers"]["return_ep1_ci95"] == "n/a"
    assert by["best possible"]["auc_mean"] == "17.25"
    assert (tmp_path / "cmp" / "ad_compare.png").stat().st_size > 0 and (tmp_path / "cmp" / "ad_compare.pdf").stat().st_size > 0


def test_evaluations_are_kept_until_the_best_checkpoint_changes(tmp_path):
    import torch

    from fiberlab.distill.ad_checkpoint import save_ad
    from fiberlab.distill.config import ADConfig
    from fiberlab.distill.model import ADTransformer
    from fiberlab.distill.pipeline import evaluate_runs

    cfg = ADConfig(model="ad", tf_n_embd=8, tf_n_head=2, tf_n_layer=1, tf_dim_feedforward=16, n_transit=6, device="cpu")
    run_dir = tmp_path / "darkroom_ad_seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "env": "darkroom"}))
    torch.manual_seed(0)
    save_ad(run_dir / "checkpoints" / "best.safetensors", ADTransformer(cfg), cfg, {"env": "darkroom", "step": 10})
    logs: list[str] = []
    files, skipped = evaluate_runs([tmp_path], eval_timesteps=20, log=logs.append)
    assert [f.name for f in files] == ["in_context_test_none_T20.json"] and not skipped and len(logs) == 1
    assert json.loads(files[0].read_text())["checkpoint_step"] == 10
    _, skipped = evaluate_runs([tmp_path], eval_timesteps=20, log=logs.append)
    assert skipped == ["evaluate darkroom_ad_seed0 (none)"] and len(logs) == 1
    save_ad(run_dir / "checkpoints" / "best.safetensors", ADTransformer(cfg), cfg, {"env": "darkroom", "step": 30})
    _, skipped = evaluate_runs([tmp_path], eval_timesteps=20, log=logs.append)
    assert not skipped and len(logs) == 2  # the run trained on: evaluated again
    assert json.loads(files[0].read_text())["checkpoint_step"] == 30


def test_compare_keeps_config_variants_apart(tmp_path):
    from fiberlab.distill.compare import compare_ad_runs

    runs = tmp_path / "runs"
    for s in range(2):
        fake_run(runs, "ad", s, [0.3, 0.4], [1.0, 2.0 + s], "none")
        r = fake_run(runs / "causal", "compressed", s, [0.3, 0.5], [1.0, 3.0], "causal")
        (r / "config.json").write_text(json.dumps({"model": "compressed", "seed": s, "mask_rule": "causal"}))
        r = fake_run(runs / "look", "compressed", s, [0.3, 0.45], [1.0, 4.0], "causal")
        (r / "config.json").write_text(json.dumps({"model": "compressed", "seed": s, "mask_rule": "lookahead"}))
    res = compare_ad_runs([runs, runs / "causal", runs / "look"], tmp_path / "cmp")
    groups = {r["group"]: r for r in res.rows}
    assert set(groups) == {"AD", "CompressedAD, causal markers [mask_rule=causal]", "CompressedAD, causal markers [mask_rule=lookahead]"}
    assert groups["CompressedAD, causal markers [mask_rule=causal]"]["auc"]["mean"] == pytest.approx(2.0)
    assert groups["CompressedAD, causal markers [mask_rule=lookahead]"]["auc"]["mean"] == pytest.approx(2.5)
    assert all(g["test_acc_final"]["n"] == 2 for g in res.rows)
    assert any("several configs" in c["how"] for c in res.claims)
