"""Comparison plot of runs (seed groups, kinds, scratch placement, 90 % step) and fibers over time."""
import csv
import json
import math

import pytest
from conftest import tiny
from scipy import stats

from fiberlab.errors import BadInput
from fiberlab.experiments.compare import compare_runs, group_name
from fiberlab.experiments.fibers_over_time import (
    fibers_over_time,
    write_fibers_over_time,
)
from fiberlab.rl.run_dir import list_checkpoints


def make_run(train_dir, name, steps, returns, report=None, seed=0):
    d = train_dir / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"run": name, "seed": seed}))
    lines = [json.dumps({"epoch": i + 1, "agent_step": s, "episode_return": r}) for i, (s, r) in enumerate(zip(steps, returns))]
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if report is not None:
        (d / "collapse_report.json").write_text(json.dumps(report))
    return d


def report(kind, source_run="base_seed1", step=2000, nf=0.4, pf=0.3):
    return {"kind": kind, "source_run": source_run, "source_checkpoint": "x.safetensors", "source_epoch": 20,
            "source_agent_step": step, "thresholds": {"linear": 0.7}, "layers": {"linear0": {"before": 10, "after": 4}},
            "node_fraction": nf, "param_fraction": pf, "return_original": 10.0, "return_collapsed": 0.0, "draw": None}


STEPS = [100 * i for i in range(1, 21)]  # 20 epochs: no smoothing (window = 20 // 20 = 1)
AFTER = [2000 + s for s in STEPS]


@pytest.fixture
def runs(tmp_path):
    td = tmp_path / "train_dir"
    return {
        "o1": make_run(td, "base_seed1", STEPS, [10.0] * 20, seed=1),
        "o2": make_run(td, "base_seed2", STEPS, [12.0] * 19 + [None], seed=2),  # a null return is skipped
        # collapsed: return = (step - 2000) / 100: 90 % of the originals' final (mean 11 -> 9.9) first at step 3000
        "c1": make_run(td, "base_col_seed1", AFTER, [(s - 2000) / 100 for s in AFTER], report("collapsed", "base_seed1")),
        "a1": make_run(td, "base_abl", AFTER, [5.0] * 20, report("ablation", nf=0.5, pf=0.45)),
        "s1": make_run(td, "base_scr", STEPS, [s / 100 for s in STEPS], report("scratch", nf=0.4, pf=0.3)),
    }


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def md_row(md, group):
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {group} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_group_name():
    assert group_name("exp_seed12") == "exp" and group_name("exp") == "exp" and group_name("exp_seed1_x") == "exp_seed1_x"
    assert group_name("exp_seed2_epoch_977_continued") == group_name("exp_seed3_epoch_977_continued") == "exp_epoch_977_continued"
    assert group_name("exp_seed2_epoch_9_base_1_0.5_1.1_0.8_scratch") == "exp_epoch_9_base_1_0.5_1.1_0.8_scratch"
    thr = {"linear": 0.35, "cnn": 0.25, "lstm": 0.5, "critic": 0.4}
    with_target = {"thresholds": thr, "target": {"measure": "params", "fraction": 0.25}}
    assert group_name("e_seed2_epoch_9_ablationsrandom0.35_0.25_0.5_0.4_draw1", with_target) == "e_epoch_9_ablationsrandom_target_params0.25_draw1"
    assert group_name("e_seed2_epoch_9_base_0.35_0.25_0.5_0.4", {"thresholds": thr}) == "e_epoch_9_base_0.35_0.25_0.5_0.4"  # no target: thresholds stay
    assert group_name("e_seed2_epoch_9_base_0.9_0.25_0.5_0.4", with_target) == "e_epoch_9_base_0.9_0.25_0.5_0.4"  # name and report disagree: left alone


def target_report(kind, seed, thr, nf):
    r = report(kind, f"exp_seed{seed}", nf=nf, pf=nf + 0.05)
    r["thresholds"] = dict(zip(("linear", "cnn", "lstm", "critic"), thr))
    r["target"] = {"measure": "nodes", "fraction": 0.2, "reached": nf, "scale": thr[2]}
    return r


def test_runs_collapsed_to_one_target_group_across_seeds_whatever_their_thresholds(tmp_path):
    """Each seed's target search finds its own thresholds, which the run names carry; compare must
    still pool the seeds per kind (n = 3), and keep runs made with hand-set thresholds apart."""
    td = tmp_path / "td"
    seeds = {1: (0.3052, 0.218, 0.436, 0.3488), 2: (0.35, 0.25, 0.5, 0.4), 3: (0.2779, 0.1985, 0.397, 0.3176)}
    dirs = []
    for seed, thr in seeds.items():
        tail = "_".join(f"{t:g}" for t in thr)
        dirs.append(make_run(td, f"exp_seed{seed}", STEPS, [10.0 + seed] * 20, seed=seed))
        dirs.append(make_run(td, f"exp_seed{seed}_epoch_20_base_{tail}", AFTER, [8.0 + seed] * 20, target_report("collapsed", seed, thr, 0.19 + seed / 100)))
        dirs.append(make_run(td, f"exp_seed{seed}_epoch_20_ablationsrandom{tail}", AFTER, [7.0] * 20, target_report("ablation", seed, thr, 0.2)))
        dirs.append(make_run(td, f"exp_seed{seed}_epoch_20_base_{tail}_scratch", STEPS, [5.0] * 20, target_report("scratch", seed, thr, 0.2)))
    hand = report("collapsed", "exp_seed1")
    hand["thresholds"] = {"linear": 0.7, "cnn": 0.5, "lstm": 1.0, "critic": 0.8}
    dirs.append(make_run(td, "exp_seed1_epoch_20_base_0.7_0.5_1_0.8", AFTER, [1.0] * 20, hand))
    _, _, md_path, summary_path = compare_runs(dirs, tmp_path / "cmp.png")
    rows = {r["group"]: r for r in read_csv(summary_path)}
    assert set(rows) == {"exp", "exp_epoch_20_base_target_nodes0.2", "exp_epoch_20_ablationsrandom_target_nodes0.2",
                         "exp_epoch_20_base_target_nodes0.2_scratch", "exp_epoch_20_base_0.7_0.5_1_0.8"}
    assert [rows[g]["n"] for g in sorted(rows)] == ["3", "3", "1", "3", "3"]
    collapsed = rows["exp_epoch_20_base_target_nodes0.2"]
    assert collapsed["kind"] == "collapsed" and float(collapsed["final_mean"]) == pytest.approx(10.0)
    assert float(collapsed["node_fraction_mean"]) == pytest.approx(0.21)  # (0.20 + 0.21 + 0.22) / 3
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # finals 9, 10, 11: sd 1
    assert float(collapsed["final_hi"]) - float(collapsed["final_mean"]) == pytest.approx(half)
    assert "| exp_epoch_20_base_target_nodes0.2 | collapsed | 3 |" in md_path.read_text()


def test_compare_groups_seeds_places_scratch_and_writes_files(tmp_path, runs):
    png, csv_path, md_path, summary_path = compare_runs([runs[k] for k in ("o1", "o2", "c1", "a1", "s1")], tmp_path / "out" / "cmp.png")
    assert png.stat().st_size > 1000 and csv_path.name == "cmp.csv" and md_path.name == "cmp.md" and summary_path.name == "cmp_summary.csv"
    assert not list((tmp_path / "out").glob("*.tmp*"))
    rows = read_csv(csv_path)
    by = {}
    for r in rows:
        by.setdefault(r["group"], []).append(r)
    assert set(by) == {"base", "base_col", "base_abl", "base_scr"}
    base = by["base"]
    assert base[0]["kind"] == "original" and base[0]["seeds"] == "2"
    assert [float(r["step"]) for r in base] == STEPS
    half = stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2)  # seeds 10 and 12: sd sqrt(2), n 2
    assert float(base[0]["mean"]) == pytest.approx(11.0) and base[0]["n"] == "2"
    assert float(base[0]["lo"]) == pytest.approx(11.0 - half, rel=1e-5) and float(base[0]["hi"]) == pytest.approx(11.0 + half, rel=1e-5)
    assert base[-1]["n"] == "1" and float(base[-1]["mean"]) == pytest.approx(10.0)  # seed 2 has no return at the last step
    assert base[-1]["lo"] == base[-1]["hi"] == ""  # one seed: no interval
    scr = by["base_scr"]
    assert scr[0]["kind"] == "scratch" and float(scr[0]["step"]) == 2100 and float(scr[-1]["step"]) == 4000
    assert float(by["base_col"][0]["step"]) == 2100  # collapsed runs keep their own (continued) steps

    md = md_path.read_text()
    o = md_row(md, "base")
    assert o[1:3] == ["original", "2"] and o[3] == f"11 [{11 - half:.4g}, {11 + half:.4g}]" and o[6:] == ["1.000 [1.000, 1.000]"] * 2
    c = md_row(md, "base_col")
    # final: mean of the last 10 % (2 epochs: 19, 20); originals' final 11 -> target 9.9 -> first at 3000 = collapse + 1000
    assert c[1:3] == ["collapsed", "1"] and c[3] == "19.5" and c[4] == "2000" and c[5] == "1000"  # n = 1: the value alone
    assert c[6:] == ["0.400", "0.300"]
    a = md_row(md, "base_abl")
    assert a[5] == "not reached" and a[6:] == ["0.500", "0.450"]
    s = md_row(md, "base_scr")
    assert s[1] == "scratch" and s[5] == "1000"  # return 10 at its own step 1000, placed at 2000 + 1000


def test_steps_to_90_on_known_curve(tmp_path):
    td = tmp_path / "td"
    make_run(td, "orig", STEPS, [10.0] * 20)
    make_run(td, "col", AFTER, [(s - 2000) / 100 for s in AFTER], report("collapsed", "orig"))
    _, _, md, _ = compare_runs([td / "orig", td / "col"], tmp_path / "c.png")
    assert md_row(md.read_text(), "col")[5] == "900"  # 9.0 = 90 % of 10 at step 2900 = collapse + 900
    # the original is found next to the collapsed run even when it is not compared
    _, _, md, _ = compare_runs([td / "col"], tmp_path / "d.png")
    assert md_row(md.read_text(), "col")[5] == "900"


def test_identical_names_in_two_train_dirs_form_one_group(tmp_path):
    a = make_run(tmp_path / "td1", "exp", STEPS, [1.0] * 20)
    b = make_run(tmp_path / "td2", "exp", STEPS, [3.0] * 20)
    _, csv_path, md, _ = compare_runs([a, b], tmp_path / "e.png")
    rows = read_csv(csv_path)
    assert {r["group"] for r in rows} == {"exp"} and rows[0]["seeds"] == "2"
    half = stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2)
    assert float(rows[0]["mean"]) == pytest.approx(2.0) and float(rows[0]["hi"]) == pytest.approx(2.0 + half, rel=1e-5)
    assert md_row(md.read_text(), "exp")[2:4] == ["2", f"2 [{2 - half:.4g}, {2 + half:.4g}]"]


def test_three_seeds_t_interval_n_and_zero_shot_table(tmp_path):
    """3 synthetic seeds with known returns: the table's interval is the t-interval of the mean
    (not a std, not a normal interval), n is 3, and the zero-shot table pairs each kind with its original."""
    td = tmp_path / "td"
    finals, zero, orig = [1.0, 2.0, 4.0], [0.1, 0.3, 0.8], [0.9, 0.95, 1.0]
    for s, (f, z, o) in enumerate(zip(finals, zero, orig), start=1):
        make_run(td, f"x_seed{s}", STEPS, [5.0] * 20, seed=s)
        rep = report("collapsed", f"x_seed{s}", nf=0.2 + 0.1 * s) | {"return_collapsed": z, "return_original": o, "source_checkpoint": f"ck{s}"}
        make_run(td, f"x_seed{s}_epoch_20_base_1_1_1_1", AFTER, [f] * 20, rep)
        abl = report("ablation", f"x_seed{s}") | {"return_collapsed": -z, "return_original": None, "source_checkpoint": f"ck{s}"}
        make_run(td, f"x_seed{s}_epoch_20_ablationsrandom1_1_1_1", AFTER, [f] * 20, abl)  # an old folder: no original's return
    _, _, md_path, summary_path = compare_runs(sorted(td.iterdir()), tmp_path / "t.png")

    def interval(x):
        m, sd, n = sum(x) / len(x), stats.tstd(x), len(x)
        h = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        return m, m - h, m + h

    rows = {r["group"]: r for r in read_csv(summary_path)}
    col = rows["x_epoch_20_base_1_1_1_1"]
    assert col["kind"] == "collapsed" and col["n"] == col["final_n"] == col["zero_shot_n"] == col["original_zero_shot_n"] == "3"
    for name, x in (("final", finals), ("zero_shot", zero), ("original_zero_shot", orig), ("node_fraction", [0.3, 0.4, 0.5])):
        m, lo, hi = interval(x)
        assert [float(col[f"{name}_{k}"]) for k in ("mean", "lo", "hi")] == pytest.approx([m, lo, hi], rel=1e-5), name
    m, lo, hi = interval(finals)
    sd = stats.tstd(finals)
    assert not math.isclose(hi - m, sd) and not math.isclose(hi - m, sd / math.sqrt(3))  # neither a std nor a std error
    abl = rows["x_epoch_20_ablationsrandom1_1_1_1"]
    assert float(abl["zero_shot_mean"]) == pytest.approx(-0.4) and abl["original_zero_shot_n"] == "3"  # found from the collapsed runs
    assert float(abl["original_zero_shot_mean"]) == pytest.approx(0.95)
    assert rows["x"]["zero_shot_n"] == "0" and rows["x"]["zero_shot_mean"] == ""  # no zero-shot for the original

    md = md_path.read_text()
    assert md_row(md, "x_epoch_20_base_1_1_1_1")[2:4] == ["3", f"{m:.4g} [{lo:.4g}, {hi:.4g}]"]
    zero_md = md.split("## Zero-shot")[1]
    z = md_row(zero_md, "x_epoch_20_base_1_1_1_1")
    zm, zlo, zhi = interval(zero)
    om, olo, ohi = interval(orig)
    assert z[1:6] == ["collapsed", "3", f"{zm:.4g} [{zlo:.4g}, {zhi:.4g}]", f"{om:.4g} [{olo:.4g}, {ohi:.4g}]", "3"]
    assert md_row(zero_md, "x_epoch_20_ablationsrandom1_1_1_1")[1] == "ablation" and "| x |" not in zero_md


def test_compare_errors(tmp_path):
    good = make_run(tmp_path, "good", STEPS, [1.0] * 20)
    with pytest.raises(BadInput, match="unknown run dir"):
        compare_runs([good, tmp_path / "nope"], tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no metrics"):
        compare_runs([tmp_path / "empty"], tmp_path / "x.png")
    make_run(tmp_path, "nulls", STEPS[:3], [None] * 3)
    with pytest.raises(BadInput, match="no finished episodes") as e:
        compare_runs([tmp_path / "nulls"], tmp_path / "x.png")
    assert "\n" not in str(e.value)
    with pytest.raises(BadInput, match="no runs"):
        compare_runs([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_fibers_over_time_one_row_per_checkpoint(tmp_path):
    from fiberlab.config import apply_overrides
    from fiberlab.fibration import Thresholds
    from fiberlab.recipes import get_recipe
    from fiberlab.rl.trainer import Trainer

    Trainer(apply_overrides(get_recipe("demo"), tiny(tmp_path, epochs=2)[1:])).train()
    run = tmp_path / "t"
    ckpts = list_checkpoints(run)
    rows = fibers_over_time(run, Thresholds(linear=0.3))
    assert [(r["epoch"], r["agent_step"]) for r in rows] == [(e, s) for e, s, _ in ckpts] and len(rows) == 2
    assert all(0 < r["node_fraction"] <= 1 and r["nodes"] <= r["units"] for r in rows)
    csv_path, png_path = write_fibers_over_time(run, {"linear": 0.3})
    assert (csv_path, png_path) == (run / "fibers_over_time.csv", run / "fibers_over_time.png")
    got = read_csv(csv_path)
    assert len(got) == len(ckpts) and list(got[0])[:2] == ["epoch", "agent_step"] and "node_fraction" in got[0]
    layers = [k for k in got[0] if k not in ("epoch", "agent_step", "nodes", "units", "node_fraction")]
    assert layers and all(sum(int(r[k]) for k in layers) == int(r["nodes"]) for r in got)
    assert png_path.stat().st_size > 1000
    out = tmp_path / "elsewhere"
    assert write_fibers_over_time(run, None, out_dir=out)[0].parent == out

    with pytest.raises(BadInput, match="not found"):
        fibers_over_time(tmp_path / "missing", None)
    (tmp_path / "bare").mkdir()
    with pytest.raises(BadInput, match="no checkpoints"):
        write_fibers_over_time(tmp_path / "bare", None)


def test_random_play_reference_is_measured_on_the_runs_env_and_reported(tmp_path):
    """RepeatPreviousEasy (the demo recipe's env): uniform play earns -0.5 per episode in expectation
    (reward +-1/n per step, right with probability 1/4), so the reference must land near it, be
    drawn from the original run's config, and appear in both tables."""
    from fiberlab.recipes import get_recipe

    td = tmp_path / "td"
    orig = make_run(td, "demo_seed1", STEPS, [0.9] * 20, seed=1)
    (orig / "config.json").write_text(get_recipe("demo").model_dump_json())
    _, _, md_path, summary_path = compare_runs([orig], tmp_path / "r.png", random_episodes=64)
    row = next(r for r in read_csv(summary_path) if r["kind"] == "random")
    assert row["final_n"] == "64" and "popgym" in row["group"]
    assert float(row["final_lo"]) < -0.5 < float(row["final_hi"]) and float(row["final_hi"]) - float(row["final_lo"]) < 0.2
    assert "Random play (uniform actions) on popgym" in md_path.read_text()
    _, _, md_path, summary_path = compare_runs([orig], tmp_path / "n.png")  # default: none
    assert "Random play" not in md_path.read_text() and all(r["kind"] != "random" for r in read_csv(summary_path))


def test_random_play_reference_needs_a_readable_run_config(tmp_path):
    run = make_run(tmp_path, "x", STEPS, [1.0] * 20)
    (run / "config.json").write_text('{"env": 5}')
    with pytest.raises(BadInput, match="config.json.*--random-episodes 0"):
        compare_runs([run], tmp_path / "x.png", random_episodes=4)
    assert not (tmp_path / "x.png").exists()
    (run / "config.json").write_text('{"env": {"name": "nope.thing"}}')  # valid config, env unknown here
    with pytest.raises(BadInput, match="nope.thing.*--random-episodes 0"):
        compare_runs([run], tmp_path / "x.png", random_episodes=4)
    assert not (tmp_path / "x.png").exists()


def test_evaluate_averages_the_envs_episode_extras():
    """evaluate() reports each per-episode extra (mettagrid's hearts, ...) averaged over the episodes
    it counts, and only those: the first ``episodes`` to finish."""
    import numpy as np

    from fiberlab.envs.base import EpisodeStats
    from fiberlab.rl.evaluate import UniformPolicy, evaluate

    class TwoAgents:
        num_agents = 2

        class spec:
            num_actions = 3

        def __init__(self):
            self.t = 0

        def reset(self, seed):
            return np.zeros((2, 4), dtype=np.float32)

        def step(self, actions):
            self.t += 1  # agent 0 ends an episode every step, agent 1 every other step
            eps = [EpisodeStats(1.0, 1, {"heart": float(self.t)})]
            if self.t % 2 == 0:
                eps.append(EpisodeStats(3.0, 2, {"heart": 10.0, "ore": 1.0}))
            return np.zeros((2, 4), dtype=np.float32), np.zeros(2), np.array([True, self.t % 2 == 0]), eps

    res = evaluate(UniformPolicy(3), TwoAgents(), episodes=3)
    # episodes: t=1 (heart 1), t=2 (heart 2), t=2 (heart 10, ore 1)
    assert res["episodes"] == 3 and res["mean_return"] == pytest.approx(5 / 3)
    assert res["extras"] == {"heart": pytest.approx(13 / 3), "ore": pytest.approx(1.0)}
