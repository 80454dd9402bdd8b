"""The paper's sweep files (sweeps/cortex_paper/): each loads, builds every cell's config and policy,
dry-runs from the CLI, and has a small-budget twin that asks the same question."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from fiberlab.policies import build_policy
from fiberlab.sweep.cells import build_cells
from fiberlab.sweep.spec import load_spec

PAPER = Path(__file__).resolve().parents[1] / "sweeps" / "cortex_paper"
FULL = sorted(p for p in PAPER.glob("*.yaml") if "_small" not in p.stem)  # *_small*: 2-core variants
SMALL_BUDGET = 200_000  # agent steps: what 2 CPU cores run in about a minute per cell


def test_the_plan_has_every_question_of_the_seed():
    assert {p.stem for p in FULL} == {"single_cells", "column_ablation", "axonify_tbptt", "scaling", "difficulty"}


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_spec_builds_every_cell_and_its_policy(path, tmp_path):
    spec = load_spec(path)
    cells = build_cells(spec, tmp_path)
    n_variants = len(cells) // len(spec.seeds)
    assert len(cells) == n_variants * len(spec.seeds) and n_variants >= (1 if path.stem.endswith("_long") else 2)
    seen = set()
    for cell in cells:
        pcfg = cell.config.policy
        key = (pcfg.pattern, pcfg.d_hidden, pcfg.num_layers, cell.config.env.name)
        if key in seen:
            continue
        seen.add(key)
        if pcfg.name != "mlp_lstm":  # token/image encoders need the env's real shape: built in the env tests
            continue
        policy = build_policy(pcfg.model_copy(update={"obs_shape": [4], "num_actions": 4}))
        assert sum(p.numel() for p in policy.parameters()) > 0


@pytest.mark.parametrize("full", FULL, ids=lambda p: p.stem)
def test_full_size_specs_are_the_seeds_settings_and_have_a_small_twin(full, tmp_path):
    spec, small = load_spec(full), load_spec(full.with_name(full.stem + "_small.yaml"))
    assert len(spec.seeds) == 5 and spec.resources.gpus >= 1
    assert len(small.seeds) >= 3 and small.budget <= SMALL_BUDGET < spec.budget
    full_cells, small_cells = build_cells(spec, tmp_path / "a"), build_cells(small, tmp_path / "b")
    if full.stem in ("single_cells", "column_ablation"):  # same variants, smaller network and budget
        assert {c.variant for c in full_cells} == {c.variant for c in small_cells}
        assert all((c.config.policy.d_hidden, c.config.policy.num_layers) == (128, 3) for c in full_cells)
    if full.stem == "axonify_tbptt":  # strict TBPTT, span longer than a segment, traces only as an axis
        for c in [*full_cells, *small_cells]:
            t = c.config.trainer
            assert t.pass_state and t.reset_in_training
        assert {c.config.trainer.axon_traces for c in small_cells} == {False, True}


def test_a_full_size_sweep_dry_runs_with_its_cost(tmp_path):
    r = run_cli("sweep", "run", str(PAPER / "single_cells.yaml"), "--dry-run", "--sps", "256000", "--train-dir", str(tmp_path / "td"))
    assert r.returncode == 0, r.stderr
    assert "30 cells, 30 to run: 3,000,000,000 agent steps" in r.stdout
    assert not (tmp_path / "td").exists()
