"""Memory environments and their difficulty levels (issue 15 section 2, docs/environments.md).

assembly_lines curricula: the documented lists are what episodes draw from, max_steps follows
Metta's formula, bad names are one-line errors, the recipes resolve; popgym's memory tasks build
as recipes and as sweep axis values and score what the docs say under a random policy.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from fiberlab.config import ConfigError, EnvConfig, MettagridEnvConfig, apply_overrides
from fiberlab.envs.mettagrid.curricula import CURRICULA, ROOM_SIZES, draw_task, reference_max_steps
from fiberlab.recipes import get_recipe, list_recipes

ROOT = Path(__file__).resolve().parents[1]
needs_mettagrid = pytest.mark.skipif(importlib.util.find_spec("mettagrid") is None,
                                     reason="mettagrid is not installed (pip install mettagrid==0.26.22)")
POPGYM_LEVELS = [f"{task}{level}" for task in ("RepeatPrevious", "CountRecall", "Autoencode")
                 for level in ("Easy", "Medium", "Hard")]


def _doc_table(heading: str) -> list[list[str]]:
    """The rows (cells without backticks) of the first markdown table under ``heading``."""
    text = (ROOT / "docs" / "environments.md").read_text()
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip().replace("`", "") for c in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def _ints(cell: str) -> tuple[int, ...]:
    """'1-3' -> (1, 2, 3); '0, 2' -> (0, 2)."""
    out: list[int] = []
    for part in cell.split(","):
        lo, _, hi = part.strip().partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return tuple(out)


def _names(cell: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in cell.split(","))


# --------------------------------------------------------------------------- the table
def test_config_literal_names_the_curricula_of_the_table():
    annotation = MettagridEnvConfig.model_fields["curriculum"].annotation
    names = tuple(a for arg in get_args(annotation) for a in (get_args(arg) or (arg,)) if a is not type(None))
    assert names == tuple(CURRICULA)


def test_documented_curricula_table_is_the_code_table():
    rows = _doc_table("### assembly_lines curricula")
    documented = {r[0]: (_ints(r[1]), _ints(r[2]), _names(r[3]), _names(r[4])) for r in rows}
    assert documented == {name: (c.chain_lengths, c.num_sinks, c.room_sizes, c.terrains) for name, c in CURRICULA.items()}
    # the spec's fixed points (sweeps.md section 2)
    assert documented["level_0"] == ((1,), (0, 1), ("tiny",), ("none",))
    assert documented["level_1"][0] == (1, 2) and documented["level_2"][:2] == ((1, 2, 3), (0, 1, 2))
    assert documented["longer_chains"][0] == (1, 2, 3, 4, 5, 6)
    assert documented["full"][:2] == ((2, 3, 4, 5, 6), (0, 1, 2)) and len(documented["full"][3]) == 4


# --------------------------------------------------------------------------- max_steps
@pytest.mark.parametrize("chain, sinks, width, height, expected", [
    # avg_hop = w + h/2; max_steps = 4 * avg_hop * (sinks + 10 * chain)
    (1, 0, 5, 5, 300),         # avg_hop 7.5:  30 * 10
    (2, 1, 7, 9, 966),         # avg_hop 11.5: 46 * 21
    (3, 2, 20, 10, 3200),      # avg_hop 25:  100 * 32
    (6, 2, 40, 40, 14880),     # avg_hop 60:  240 * 62
    (1, 1, 10, 5, 550),        # avg_hop 12.5: 50 * 11 (width and height are not symmetric)
])
def test_max_steps_hand_worked(chain, sinks, width, height, expected):
    assert reference_max_steps(chain, sinks, width, height) == expected
    avg_hop = width + height / 2  # Metta's own float expression gives the same integer
    assert int(4 * avg_hop * sinks + 10 * 4 * avg_hop * chain) == expected
    assert reference_max_steps(chain, sinks, height, width) == (expected if width == height else
                                                               (4 * height + 2 * width) * (sinks + 10 * chain))


# --------------------------------------------------------------------------- drawing tasks
@pytest.mark.parametrize("name", list(CURRICULA))
def test_draws_stay_inside_the_lists_and_cover_them(name):
    c = CURRICULA[name]
    # the fixed knobs and max_steps are ignored under a curriculum
    m = MettagridEnvConfig(curriculum=name, chain_length=6, num_sinks=2, room_size="xlarge", terrain="dense", max_steps=7)
    rng = np.random.default_rng(0)
    tasks = [draw_task(m, rng) for _ in range(400)]
    for t in tasks:
        lo, hi = ROOM_SIZES[t.room_size]
        assert t.chain_length in c.chain_lengths and t.num_sinks in c.num_sinks
        assert t.room_size in c.room_sizes and t.terrain in c.terrains
        assert lo <= t.width <= hi and lo <= t.height <= hi
        assert t.max_steps == reference_max_steps(t.chain_length, t.num_sinks, t.width, t.height)
    assert {t.chain_length for t in tasks} == set(c.chain_lengths)
    assert {t.num_sinks for t in tasks} == set(c.num_sinks)
    assert {t.room_size for t in tasks} == set(c.room_sizes)
    assert {t.terrain for t in tasks} == set(c.terrains)


def test_no_curriculum_is_the_fixed_task_with_its_max_steps():
    m = MettagridEnvConfig(chain_length=4, num_sinks=2, room_size="xlarge", terrain="sparse", max_steps=123)
    rng = np.random.default_rng(3)
    for _ in range(50):
        t = draw_task(m, rng)
        assert (t.chain_length, t.num_sinks, t.room_size, t.terrain, t.max_steps) == (4, 2, "xlarge", "sparse", 123)
        assert 40 <= t.width <= 50 and 40 <= t.height <= 50


# --------------------------------------------------------------------------- errors and recipes
def test_bad_curriculum_name_is_one_clear_error():
    with pytest.raises(ConfigError) as e:
        apply_overrides(get_recipe("assembly_lines"), ["env.mettagrid.curriculum=level_9"])
    msg = str(e.value)
    assert "\n" not in msg and "env.mettagrid.curriculum" in msg and "'level_9'" in msg
    assert all(f"'{n}'" in msg for n in CURRICULA)
    with pytest.raises(ConfigError) as e:
        get_recipe("assembly_lines.level_9")
    msg = str(e.value)
    assert "\n" not in msg and "'level_9'" in msg and ", ".join(CURRICULA) in msg


def test_bad_curriculum_on_the_cli_exits_2_with_one_line(cli, tmp_path):
    r = cli("train", "assembly_lines.levl_0", f"train_dir={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "levl_0" in r.stderr and "level_0" in r.stderr and "full" in r.stderr


def test_curriculum_recipes_resolve_and_the_plain_recipe_is_unchanged():
    for name in CURRICULA:
        cfg = get_recipe(f"assembly_lines.{name}")
        assert cfg.recipe == f"assembly_lines.{name}" and cfg.env.name == "mettagrid.assembly_lines"
        assert cfg.env.mettagrid.curriculum == name
    plain = get_recipe("assembly_lines")
    assert plain.env.mettagrid.curriculum is None and plain.env.mettagrid.max_steps == 256
    assert (plain.env.mettagrid.chain_length, plain.env.mettagrid.room_size) == (3, "small")
    # the same PPO settings as the plain recipe: only the env's task distribution differs
    assert get_recipe("assembly_lines.full").trainer == plain.trainer
    assert get_recipe("assembly_lines.full").policy == plain.policy
    names = [n for n, _ in list_recipes()]
    assert "assembly_lines" in names and "assembly_lines.<Name>" in names


# --------------------------------------------------------------------------- the env itself
def _assembly_env(num_envs: int, seed: int = 0, **knobs):
    from fiberlab.envs.mettagrid import MettagridVecEnv

    cfg = EnvConfig(name="mettagrid.assembly_lines", num_envs=num_envs, mettagrid=MettagridEnvConfig(**knobs))
    return MettagridVecEnv(cfg, seed)


@needs_mettagrid
@pytest.mark.parametrize("name", list(CURRICULA))
def test_each_curriculum_builds_its_documented_tasks(name):
    from fiberlab.envs.mettagrid import assembly_task

    c = CURRICULA[name]
    cheap = c.terrains == ("none",)  # terrain in large rooms costs ~0.1 s a build
    env = _assembly_env(4 if cheap else 2, curriculum=name, max_steps=7)
    shapes = set()
    for seed in range(6 if cheap else 1):
        env.reset(seed)
        shapes.add(env.spec.obs_shape)
        for cfg in env.episode_configs:
            t = assembly_task(cfg)
            assert cfg.label.startswith(f"assembly_lines.{name}:")
            assert t.chain_length in c.chain_lengths and t.num_sinks in c.num_sinks
            assert t.room_size in c.room_sizes and t.terrain in c.terrains
            assert t.max_steps == cfg.game.max_steps == reference_max_steps(t.chain_length, t.num_sinks, t.width, t.height)
            assert len(cfg.game.map_builder.instance.objects) == t.chain_length + 1 + t.num_sinks
    assert shapes == {(34, 11, 11)}  # every task shows the policy the same channels


@needs_mettagrid
def test_episodes_last_their_own_max_steps_and_redraw_the_task():
    from fiberlab.envs.mettagrid import assembly_task

    env = _assembly_env(4, seed=5, curriculum="level_0")
    env.reset()
    current = [assembly_task(cfg) for cfg in env.episode_configs]
    ended: list[list] = [[] for _ in range(4)]
    rng = np.random.default_rng(0)
    while min(len(e) for e in ended) < 2:
        _, _, dones, episodes = env.step(rng.integers(0, 5, size=4))
        for i, stats in zip(np.flatnonzero(dones).tolist(), episodes):
            assert stats.length == current[i].max_steps  # this episode's own length, not env.mettagrid.max_steps
            ended[i].append(current[i])
            current[i] = assembly_task(env.episode_configs[i])
    tasks = [t for e in ended for t in e]
    assert len({(t.width, t.height, t.num_sinks) for t in tasks}) > 1  # each episode draws anew


@needs_mettagrid
def test_fixed_task_episodes_last_env_max_steps():
    env = _assembly_env(2, chain_length=2, num_sinks=0, room_size="tiny", max_steps=30)
    env.reset(1)
    lengths = []
    for _ in range(30):
        lengths += [e.length for e in env.step(np.zeros(2, dtype=np.int64))[3]]
    assert lengths == [30, 30]


@needs_mettagrid
def test_xlarge_rooms_build():
    from fiberlab.envs.mettagrid import assembly_task

    env = _assembly_env(1, chain_length=2, num_sinks=1, room_size="xlarge")
    env.reset(0)
    t = assembly_task(env.episode_configs[0])
    assert t.room_size == "xlarge" and 40 <= t.width <= 50 and 40 <= t.height <= 50


@needs_mettagrid
def test_documented_memoryless_control_sweep_builds():
    from fiberlab.envs import make_vecenv
    from fiberlab.sweep.cells import build_cells
    from fiberlab.sweep.spec import SweepSpec

    spec = SweepSpec(name="control", base={"recipe": "assembly_lines.level_0", "overrides": {"env.mettagrid.num_agents": 1}},
                     axes={"env.name": ["mettagrid.assembly_lines", "mettagrid.navigation"]})
    batches = {}
    for cell in build_cells(spec, "unused"):
        env = make_vecenv(cell.config.env.model_copy(update={"num_envs": 2}), 0)
        env.reset(0)
        batches[cell.config.env.name] = env.num_agents
    assert batches == {"mettagrid.assembly_lines": 2, "mettagrid.navigation": 2}  # one agent per simulation in both


# --------------------------------------------------------------------------- popgym
# Random-policy mean episode return documented in docs/environments.md (popgym table).
POPGYM_RANDOM = {"RepeatPrevious": -0.50, "CountRecall": -0.92, "Autoencode": -0.50}


@pytest.mark.parametrize("name", POPGYM_LEVELS)
def test_popgym_levels_build_as_recipes_and_score_as_documented(name):
    from fiberlab.envs import make_vecenv

    cfg = get_recipe(f"popgym.{name}")
    assert cfg.env.name == f"popgym.{name}" and cfg.recipe == f"popgym.{name}"
    env = make_vecenv(cfg.env.model_copy(update={"num_envs": 16}), 0)
    env.reset(0)
    rng = np.random.default_rng(0)
    first: dict[int, float] = {}
    while len(first) < 16:  # each env's first episode: an unbiased sample of episodes
        _, _, dones, episodes = env.step(rng.integers(0, env.spec.num_actions, size=16))
        for i, stats in zip(np.flatnonzero(dones).tolist(), episodes):
            first.setdefault(i, stats.episode_return)
    mean = float(np.mean(list(first.values())))
    task = re.sub(r"(Easy|Medium|Hard)$", "", name)
    assert abs(mean - POPGYM_RANDOM[task]) < 0.1, mean


def test_popgym_levels_as_a_sweep_axis():
    from fiberlab.envs import make_vecenv
    from fiberlab.sweep.cells import build_cells
    from fiberlab.sweep.spec import SweepSpec

    spec = SweepSpec(name="popgym_levels", base={"recipe": "popgym.RepeatPreviousEasy"},
                     axes={"env.name": [f"popgym.{n}" for n in POPGYM_LEVELS]})
    cells = build_cells(spec, "unused")
    assert [c.config.env.name for c in cells] == [f"popgym.{n}" for n in POPGYM_LEVELS]
    for cell in cells:
        assert make_vecenv(cell.config.env.model_copy(update={"num_envs": 1}), 0).spec.name == cell.config.env.name
