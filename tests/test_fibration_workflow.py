"""collapse / ablate / scratch through the command line on a tiny real run."""
import json
import re
from pathlib import Path

import pytest

from conftest import tiny
from fiberlab.experiments.collapse_report import CollapseReport
from fiberlab.fibration.fibers import LSTM_KEYS
from fiberlab.rl.logging import read_metrics

# collapse_report.json keys per kind, in order, as written before CollapseReport (old run folders must read the same)
SRC = ["source_run", "source_checkpoint", "source_epoch", "source_agent_step"]
REPORT_KEYS = {
    "collapsed": ["kind", *SRC, "thresholds", *LSTM_KEYS, "layers", "nodes_before", "nodes_after", "node_fraction", "param_fraction",
                  "params_before", "params_after", "return_original", "return_collapsed", "draw"],
    "ablation": ["kind", *SRC, "thresholds", *LSTM_KEYS, "layers", "kept", "node_fraction", "param_fraction", "return_original", "return_collapsed", "draw"],
    "continued": ["kind", *SRC, "thresholds", "layers", "nodes_before", "nodes_after", "node_fraction", "param_fraction",
                  "params_before", "params_after", "return_original", "return_collapsed", "draw"],
    "scratch": [*SRC, "thresholds", "layers", "node_fraction", "param_fraction", "kind", "like", "return_original", "return_collapsed", "draw"],
}


@pytest.mark.parametrize("kind", list(REPORT_KEYS))
def test_report_keys_per_kind(kind):
    d = CollapseReport(kind, source_run="exp", node_fraction=0.5).to_dict()
    assert list(d) == REPORT_KEYS[kind] and d["kind"] == kind and d["source_run"] == "exp"
    assert CollapseReport.from_dict(d).to_dict() == d  # and it reads back
    assert CollapseReport.from_dict({"source_agent_step": 3, "extra": 1}).kind == "collapsed"  # an old file without kind


def test_method_package_imports_policies_only():
    """fiberlab.fibration is the method: it may use fiberlab.policies (and errors/config), never the run machinery."""
    src = Path(__file__).resolve().parents[1] / "src" / "fiberlab" / "fibration"
    used = {m for f in src.glob("*.py") for m in re.findall(r"^\s*(?:from|import) (fiberlab(?:\.\w+)?)", f.read_text(), re.MULTILINE)}
    assert used <= {"fiberlab.fibration", "fiberlab.policies", "fiberlab.errors", "fiberlab.config"}, used


@pytest.fixture
def source(cli, tmp_path):
    r = cli("train", *tiny(tmp_path, run="exp", epochs=3))
    assert r.returncode == 0, r.stderr
    return tmp_path


def test_collapse_ablate_scratch(cli, source):
    td = str(source)
    small = ["trainer.total_timesteps=128", "progress=none", "env.num_envs=8"]
    r = cli("collapse", "--run", "exp", "--train-dir", td, "--epoch", "5", "--linear-thr", "0.4", "--eval-episodes", "8", *small)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    name = "exp_epoch_3_base_0.4_0.5_1_0.8"  # epoch 5 does not exist: the closest (3) is used
    assert out["run"] == name and out["source_epoch"] == 3 and out["source_agent_step"] == 192
    run = source / name
    report = json.loads((run / "collapse_report.json").read_text())
    fibers = json.loads((run / "fibers.json").read_text())
    assert report["thresholds"] == {"linear": 0.4, "cnn": 0.5, "lstm": 1.0, "critic": 0.8}
    assert set(report["layers"]) == set(fibers["layers"]) and 0 < report["node_fraction"] <= 1
    lstm = {k: fibers[k] for k in LSTM_KEYS}  # how the LSTM partition was reached, in both files
    assert {k: report[k] for k in LSTM_KEYS} == lstm and isinstance(lstm["lstm_converged"], bool) and lstm["lstm_rounds"] >= 1
    assert isinstance(report["return_original"], float) and isinstance(report["return_collapsed"], float)
    rows = read_metrics(run)
    assert rows[0]["agent_step"] == 192 + 64 and rows[-1]["agent_step"] == 192 + 128  # continues the counter
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["policy"]["linear"] == [report["layers"]["linear0"]["after"]]

    r = cli("ablate", "--run", "exp", "--train-dir", td, "--linear-thr", "0.4", "--draws", "2", "--eval-episodes", "0", *small)
    assert r.returncode == 0, r.stderr
    runs = [json.loads(line)["run"] for line in r.stdout.strip().splitlines()]
    assert runs == ["exp_epoch_3_ablationsrandom0.4_0.5_1_0.8", "exp_epoch_3_ablationsrandom0.4_0.5_1_0.8_draw1"]
    for name in runs:
        rep = json.loads((source / name / "collapse_report.json").read_text())
        assert rep["kind"] == "ablation" and rep["layers"] == report["layers"]  # same per-layer widths
        assert {k: rep[k] for k in LSTM_KEYS} == lstm
    kept = [json.loads((source / n / "collapse_report.json").read_text())["kept"] for n in runs]
    assert kept[0] != kept[1]

    r = cli("scratch", "--like", name_c := "exp_epoch_3_base_0.4_0.5_1_0.8", "--train-dir", td, "progress=none", "env.num_envs=8")
    assert r.returncode == 0, r.stderr
    scratch = source / f"{name_c}_scratch"
    rows = read_metrics(scratch)
    assert rows[0]["agent_step"] == 64 and rows[-1]["agent_step"] == 128  # from zero, same budget
    assert json.loads((scratch / "config.json").read_text())["policy"] == cfg["policy"]
    assert json.loads((scratch / "collapse_report.json").read_text())["kind"] == "scratch"

    r = cli("continue", "--run", "exp", "--train-dir", td, "--eval-episodes", "8", *small)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    cont = source / "exp_epoch_3_continued"
    assert out["run"] == cont.name and out["kind"] == "continued" and out["node_fraction"] == 1.0
    assert out["return_original"] == report["return_original"]  # same checkpoint, same evaluation seed
    rows = read_metrics(cont)
    assert rows[0]["agent_step"] == 192 + 64 and rows[-1]["agent_step"] == 192 + 128  # continues the counter
    src_cfg = json.loads((source / "exp" / "config.json").read_text())
    assert json.loads((cont / "config.json").read_text())["policy"] == src_cfg["policy"]  # the original network


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["collapse", "--run", "exp", "--threshold", "2.5"], "thresholds are in [0, 2]"),
        (["collapse", "--run", "exp", "--lstm-thr", "-1"], "thresholds are in [0, 2]"),
        (["collapse", "--run", "nope"], "unknown run 'nope'"),
        (["ablate", "--run", "exp", "--draws", "0"], "--draws"),
        (["scratch", "--like", "exp"], "not a collapsed run"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(cli, source, args, fragment):
    before = sorted(p.name for p in source.iterdir())
    r = cli(*args, "--train-dir", str(source))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr
    assert sorted(p.name for p in source.iterdir()) == before


@pytest.mark.parametrize("flag, value", [("--jobs", "0"), ("--seeds", "0"), ("--retrain-fraction", "0")])
def test_pipeline_bad_counts_one_line_exit_2_nothing_written(cli, tmp_path, flag, value):
    r = cli("pipeline", "fibration", "demo", flag, value, f"train_dir={tmp_path}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and flag in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_run_without_checkpoints(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("collapse", "--run", "empty", "--train-dir", str(tmp_path))
    assert r.returncode == 2 and "has no checkpoints" in r.stderr


def test_fibers_compare_and_resumable_pipeline(cli, tmp_path):
    over = ["progress=none", "env.num_envs=8", "trainer.bptt_horizon=8", "trainer.minibatch_size=32", "trainer.total_timesteps=512", "trainer.checkpoint_interval=4", f"train_dir={tmp_path}", "run=p"]
    r = cli("pipeline", "fibration", "demo", "--threshold", "0.5", "--retrain-fraction", "1", "--eval-episodes", "8", *over)
    assert r.returncode == 0, r.stderr
    assert "figure:" in r.stdout
    names = [p.name for p in tmp_path.iterdir()]
    for expected in ("p", "p_epoch_8_continued", "p_epoch_8_base_0.5_0.5_0.5_0.5", "p_epoch_8_ablationsrandom0.5_0.5_0.5_0.5", "p_epoch_8_base_0.5_0.5_0.5_0.5_scratch", "p_compare.png", "p_compare.md", "p_compare.csv"):
        assert expected in names, (expected, names)
    md = (tmp_path / "p_compare.md").read_text()
    assert all(f"| {kind} |" in md for kind in ("original", "continued", "collapsed", "ablation", "scratch"))
    # --jobs 2 (the default): the runs trained side by side split the cores for their updates
    from fiberlab.runtime import available_cores
    for run in ("p", "p_epoch_8_continued", "p_epoch_8_base_0.5_0.5_0.5_0.5_scratch"):
        assert json.loads((tmp_path / run / "config.json").read_text())["trainer"]["update_threads"] == max(1, available_cores() // 2), run
    # a second run skips every finished stage
    r = cli("pipeline", "fibration", "demo", "--threshold", "0.5", "--retrain-fraction", "1", "--eval-episodes", "8", *over)
    assert r.returncode == 0, r.stderr
    assert "skipped (already finished): p, p_epoch_8_continued, p_epoch_8_base" in r.stdout
    r = cli("fibers", "--run", "p", "--train-dir", str(tmp_path), "--threshold", "0.5")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p" / "fibers_over_time.csv").read_text().count("\n") == 1 + 2  # header + 2 checkpoints
    r = cli("compare", "p", "nope", "--out", str(tmp_path / "x.png"), "--train-dir", str(tmp_path))
    assert r.returncode == 2 and "unknown run dir" in r.stderr
