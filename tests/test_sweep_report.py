"""The sweep report on synthetic sweep folders with known curves (numbers computed by hand below).

Every curve rises linearly from 0 at step 0 to its final value F at step 500 and stays there, logged
every 100 steps to 1000 (11 points, no smoothing). So: final value (steps >= 900) = F; AUC = (0.5 * 500
* F + 500 * F) / 1000 = 0.75 F; convergence: band 0.05 F, first point within it is step 500.
"""
import json
import math

import pytest

from fiberlab.errors import BadInput
from fiberlab.sweep.report import tex_escape, write_report

T975_2 = 4.302653  # t_{0.975, 2}: three seeds
HALF3 = T975_2 / math.sqrt(3)  # half-width of three seeds one apart (sd 1)


def curve(final, null_at=None):
    rows = []
    for i, step in enumerate(range(0, 1001, 100)):
        ret = final * min(1.0, step / 500)
        rows.append({"epoch": i + 1, "agent_step": step, "wall_time": step / 100, "sps": 100.0,
                     "episode_return": None if step == null_at else ret, "loss": 0.1})
    return rows


def make_sweep(root, name, variants, extra=(), axes=("policy.pattern",)):
    """variants: {variant: (axes dict, [final per seed], params)}; extra: (variant, seed, status, rows|None)."""
    d = root / name
    cells = []

    def add(variant, ax, seed, status, rows, params):
        run_dir = f"runs/{variant.replace('=', '-').replace('^', 'c')}_s{seed}"
        if rows is not None:
            (d / run_dir).mkdir(parents=True)
            (d / run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cells.append({"name": f"{variant}.seed={seed}", "variant": variant, "axes": ax, "seed": seed,
                      "run_dir": run_dir, "status": status, "attempts": 1,
                      "exit_code": 1 if status == "failed" else (0 if status == "done" else None),
                      "error": "RuntimeError: diverged\nTraceback..." if status == "failed" else None,
                      "wall_time": 12.5 if status == "done" else None, "sps": None,
                      "agent_step": 1000 if status == "done" else None, "params": params})

    for variant, (ax, finals, params) in variants.items():
        for seed, f in enumerate(finals):
            add(variant, ax, seed, "done", curve(f, null_at=300 if seed == 0 else None), params)
    for variant, seed, status, rows in extra:
        ax, _, params = variants[variant]
        add(variant, ax, seed, status, rows, params)
    d.mkdir(parents=True, exist_ok=True)
    (d / "index.json").write_text(json.dumps({"sweep": name, "spec_hash": "abc", "metric": "episode_return",
                                              "axes": list(axes), "budget": 1000, "cells": cells}))
    return d


def pattern(p, params=1000):
    return {"policy.pattern": p}, params


def two_variants(tmp_path, name, good_finals):
    gax, gp = pattern("AgSA", 5000)
    bax, bp = pattern("L", 1000)
    return make_sweep(tmp_path, name, {
        "policy.pattern=AgSA": (gax, good_finals, gp),
        "policy.pattern=L": (bax, [1.0, 2.0, 3.0], bp),
    }, extra=[
        ("policy.pattern=L", 3, "failed", None),
        ("policy.pattern=AgSA", 3, "pending", None),
        ("policy.pattern=AgSA", 4, "done", None),  # done, but its metrics.jsonl is missing
    ])


def test_separated_best_numbers_and_files(tmp_path):
    d = two_variants(tmp_path, "sep", [10.0, 11.0, 12.0])
    written = write_report(d)
    out = d / "report"
    for f in ("report.md", "report.csv", "report.tex", "summary.json"):
        assert written[f] == out / f and (out / f).stat().st_size > 100
    for fig in ("learning_curves", "final_return", "scaling_params"):
        png, pdf = out / f"{fig}.png", out / f"{fig}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2000
        assert written[f"{fig}.png"] == png
    s = json.loads((out / "summary.json").read_text())
    good, bad = s["variants"]
    assert good["variant"] == "policy.pattern=AgSA"
    assert good["final"]["mean"] == pytest.approx(11.0) and good["final"]["half"] == pytest.approx(HALF3, abs=1e-5)
    assert bad["final"]["mean"] == pytest.approx(2.0) and bad["final"]["half"] == pytest.approx(2.48414, abs=1e-5)
    assert good["auc"]["mean"] == pytest.approx(0.75 * 11) and good["auc"]["half"] == pytest.approx(0.75 * HALF3, abs=1e-5)
    assert good["convergence"]["mean"] == 500.0 and good["convergence"]["converged"] == 3
    assert good["convergence"]["half"] == 0.0
    assert (good["done"], good["no_data"], good["pending"], good["failed"]) == (3, 1, 1, 0)
    assert (bad["done"], bad["failed"]) == (3, 1)
    assert good["params"] == 5000 and good["wall_time"] == 12.5 and good["sps"] == 100.0
    assert good["best"] and not bad["best"]
    assert s["best"][0]["best"] == "policy.pattern=AgSA" and s["best"][0]["separated"]
    assert s["counts"] == {"total": 9, "done": 7, "done_with_data": 6, "no_data": 1, "failed": 1, "pending": 1, "running": 0}
    nodata = [c for c in s["cells"] if c["no_data"]]
    assert [c["name"] for c in nodata] == ["policy.pattern=AgSA.seed=4"] and "missing" in nodata[0]["no_data"]
    assert s["cells"][0]["nonfinite_points"] == 0 and s["cells"][0]["points"] == 10  # the null is skipped
    assert "scaling_d_hidden" in s["skipped_figures"] and "aggregates" in s["skipped_figures"]
    assert "caret_comparison" in s["skipped_figures"]

    md = (out / "report.md").read_text()
    assert "| **policy.pattern=AgSA** |" in md and "**11 ± 2.5**" in md
    assert "no data" in md and "RuntimeError: diverged" in md and "Traceback" not in md
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[-1] == "best"
    assert csv_lines[1].startswith("policy.pattern=AgSA,AgSA,3,1,0,1,0,11,") and csv_lines[1].endswith(",1")
    assert csv_lines[2].endswith(",0")
    tex = (out / "report.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert rule in tex
    assert "\\textbf{policy.pattern=AgSA}" in tex and "$\\pm$" in tex


def test_overlapping_intervals_mark_nothing(tmp_path):
    d = two_variants(tmp_path, "overlap", [4.0, 5.0, 6.0])  # [2.52, 7.48] overlaps [-0.48, 4.48]
    out = tmp_path / "elsewhere"
    write_report(d, out=out)
    s = json.loads((out / "summary.json").read_text())
    assert not any(v["best"] for v in s["variants"])
    assert s["best"][0]["best"] is None and not s["best"][0]["separated"]
    md = (out / "report.md").read_text()
    assert "not separated" in md and "**" not in md.split("## Aggregates")[0].split("| variant")[1].split("\n\n")[0]
    assert "\\textbf" not in (out / "report.tex").read_text()
    assert all(line.endswith(",0") for line in (out / "report.csv").read_text().splitlines()[1:])


def test_one_seed_has_no_interval_and_d_hidden_scaling(tmp_path):
    d = make_sweep(tmp_path, "one", {"policy.d_hidden=32": ({"policy.d_hidden": 32}, [3.0], None),
                                     "policy.d_hidden=64": ({"policy.d_hidden": 64}, [1.0], None)},
                   axes=("policy.d_hidden",))
    write_report(d)
    s = json.loads((d / "report" / "summary.json").read_text())
    assert s["variants"][0]["final"]["half"] is None  # nan written as null
    assert "n/a (n=1)" in (d / "report" / "report.md").read_text()
    assert not s["best"][0]["separated"] and "one seed" in s["best"][0]["note"]
    assert s["skipped_figures"]["scaling_params"].startswith("no parameter counts")
    assert s["figures"]["scaling_d_hidden"] == ["scaling_d_hidden.png", "scaling_d_hidden.pdf"]
    assert "policy.num_layers is not an axis" in s["skipped_figures"]["scaling_num_layers"]


def test_env_axis_aggregates_caret_and_escaping(tmp_path):
    axes = ("policy.pattern", "env.name")
    v = {}
    finals = {("M", "e_one"): [1.0, 2.0], ("M^", "e_one"): [3.0, 4.0], ("M", "e_two"): [10.0, 30.0], ("M^", "e_two"): [20.0, 40.0]}
    for (p, e), f in finals.items():
        v[f"policy.pattern={p}.env.name={e}"] = ({"policy.pattern": p, "env.name": e}, f, 1000 if p == "M" else 2000)
    d = make_sweep(tmp_path, "sw_1&2%#", v, axes=axes)
    write_report(d, reps=400)
    out = d / "report"
    s = json.loads((out / "summary.json").read_text())
    agg = {a["architecture"]: a for a in s["aggregates"]["architectures"]}
    # e_one normalised by [1, 4]: M -> 0, 1/3; M^ -> 2/3, 1. e_two by [10, 40]: M -> 0, 2/3; M^ -> 1/3, 1
    m, mc = agg["policy.pattern=M"], agg["policy.pattern=M^"]
    assert m["mean"]["point"] == pytest.approx(0.25) and mc["mean"]["point"] == pytest.approx(0.75)
    assert m["iqm"]["point"] == pytest.approx(1 / 6) and mc["iqm"]["point"] == pytest.approx(5 / 6)  # middle 2 of 4
    for a in (m, mc):
        for k in ("iqm", "mean"):
            assert a[k]["low"] <= a[k]["point"] <= a[k]["high"]
        assert a["runs_per_env"] == 2 and a["dropped_runs"] == 0
    assert s["aggregates"]["normalisation"]["e_two"] == {"low": 10.0, "high": 40.0, "source": "observed"}
    # best per env: M^ vs M in e_one: 3.5 ± 6.35 vs 1.5 ± 6.35 -> overlap, nothing marked
    assert [b["group"] for b in s["best"]] == ["env.name=e_one", "env.name=e_two"]
    assert not any(b["separated"] for b in s["best"])
    pairs = s["caret_pairs"]
    assert len(pairs) == 2 and pairs[0]["pattern_a"] == "M" and pairs[0]["pattern_b"] == "M^"
    assert pairs[0]["difference"] == pytest.approx(2.0)
    for fig in ("learning_curves", "final_return", "scaling_params", "caret_comparison", "env_difficulty", "aggregates"):
        assert fig in s["figures"] and (out / f"{fig}.png").stat().st_size > 5000 and (out / f"{fig}.pdf").is_file()
    tex = (out / "report.tex").read_text()
    assert "sw\\_1\\&2\\%\\#" in tex and "e\\_one" in tex and "M\\^{}" in tex
    assert "env.name=e_one" not in tex
    assert tex_escape("a_b%c&d^e#f") == "a\\_b\\%c\\&d\\^{}e\\#f"
    md = (out / "report.md").read_text()
    assert "## Aggregates over envs" in md and "## `^` comparison" in md

    # a known range replaces the observed one
    write_report(d, out=tmp_path / "known", reps=50, score_ranges={"e_one": (0.0, 10.0), "e_two": (0.0, 100.0)})
    s2 = json.loads((tmp_path / "known" / "summary.json").read_text())
    a2 = {a["architecture"]: a for a in s2["aggregates"]["architectures"]}
    # M: e_one 0.1, 0.2; e_two 0.1, 0.3 -> mean 0.175
    assert a2["policy.pattern=M"]["mean"]["point"] == pytest.approx(0.175)


def test_bad_inputs_are_one_line(tmp_path):
    with pytest.raises(BadInput) as e:
        write_report(tmp_path)
    assert "index.json" in str(e.value)
    d = two_variants(tmp_path, "m", [10.0, 11.0, 12.0])
    with pytest.raises(BadInput) as e2:
        write_report(d, metric="score")
    assert "'score'" in str(e2.value) and "episode_return" in str(e2.value)
    idx = json.loads((d / "index.json").read_text())
    for c in idx["cells"]:
        c["status"] = "pending"
    (d / "index.json").write_text(json.dumps(idx))
    with pytest.raises(BadInput) as e3:
        write_report(d)
    assert "no done cells" in str(e3.value)
    (d / "index.json").write_text("{not json")
    with pytest.raises(BadInput) as e4:
        write_report(d)
    for err in (e, e2, e3, e4):
        assert "\n" not in str(err.value)


def test_difficulty_table_reads_every_env_axis_and_the_wall_time_to_convergence(tmp_path):
    """Two assembly_lines curricula and a control, told apart by env.* axes other than env.name. Each
    curve converges at step 500, where its wall clock (step / 100) reads 5 s."""
    axes = ("env.name", "env.mettagrid.curriculum")
    tasks = [("mettagrid.assembly_lines", "level_0", [1.0, 2.0, 3.0]), ("mettagrid.assembly_lines", "level_1", [0.5, 0.6, 0.7]),
             ("mettagrid.navigation", None, [4.0, 4.0, 4.0])]
    v = {f"name={e}.curriculum={c}": ({"env.name": e, "env.mettagrid.curriculum": c}, f, 1000) for e, c, f in tasks}
    d = make_sweep(tmp_path, "difficulty", v, axes=axes)
    write_report(d, reps=200)
    md = (d / "report" / "report.md").read_text()
    table = md.split("## Difficulty")[1]
    rows = [line for line in table.splitlines() if line.startswith("| env.name=")]
    assert len(rows) == 3
    assert "env.mettagrid.curriculum=level_1" in rows[1] and "| 3/3 | 500 ± 0 | 5 ± 0 |" in rows[1]
    s = json.loads((d / "report" / "summary.json").read_text())
    # every env.* axis names the task: three tasks, not two env names
    assert s["aggregates"]["envs"] == ["mettagrid.assembly_lines curriculum=level_0",
                                       "mettagrid.assembly_lines curriculum=level_1", "mettagrid.navigation curriculum=None"]
    csv_rows = (d / "report" / "report.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    assert float(csv_rows[1].split(",")[header.index("convergence_wall_mean")]) == pytest.approx(5.0)
