"""The mettagrid adapter: spec, token -> box conversion, same-step auto-reset, seeding, stations."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

pytest.importorskip("mettagrid")

from fiberlab.config import EnvConfig, MettagridEnvConfig
from fiberlab.envs.base import EpisodeStats
from fiberlab.envs.mettagrid import MettagridVecEnv, TokenBox

SMALL = {
    "mettagrid.arena": MettagridEnvConfig(num_agents=6, max_steps=40),
    "mettagrid.navigation": MettagridEnvConfig(num_agents=4, max_steps=40),
    "mettagrid.assembly_lines": MettagridEnvConfig(max_steps=40, chain_length=2, num_sinks=1, terrain="dense"),
}
AGENTS_PER_ENV = {"mettagrid.arena": 6, "mettagrid.navigation": 4, "mettagrid.assembly_lines": 1}


def make(name: str, num_envs: int = 2, seed: int = 0, **over) -> MettagridVecEnv:
    m = SMALL[name].model_copy(update=over)
    return MettagridVecEnv(EnvConfig(name=name, num_envs=num_envs, mettagrid=m), seed)


def slow_box(tokens: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """Reference: one token at a time; global tokens (0xFE) at the centre, empty ones (0xFF) skipped."""
    out = np.zeros((tokens.shape[0], channels, height, width), dtype=np.uint8)
    for a in range(tokens.shape[0]):
        for loc, feature, value in tokens[a].tolist():
            if loc == 0xFF:
                continue
            row, col = (height // 2, width // 2) if loc == 0xFE else (loc >> 4, loc & 0x0F)
            if row < height and col < width and feature < channels:
                out[a, feature, row, col] = value
    return out


@pytest.mark.parametrize("name", list(SMALL))
def test_spec_shapes_and_dtypes(name):
    env = make(name, num_envs=2)
    spec = env.spec
    c = len(spec.feature_names)
    assert spec.name == name and spec.obs_dtype == "uint8"
    assert spec.obs_shape == (c, 11, 11) and len(spec.obs_scale) == c
    assert spec.agents_per_env == AGENTS_PER_ENV[name] and env.num_agents == 2 * spec.agents_per_env
    # vibes off: noop and four moves
    assert spec.num_actions == 5 == len(spec.action_names)
    assert spec.action_names[0] == "noop" and not any("vibe" in a for a in spec.action_names)
    obs = env.reset(0)
    assert obs.shape == (env.num_agents, *spec.obs_shape) and obs.dtype == np.uint8
    # channel i is feature id i of the env's own feature spec, scaled by its normalisation
    features = {f.id: f for f in env.episode_configs[0].game.id_map().features()}
    assert c == max(features) + 1
    for i in range(c):
        assert spec.feature_names[i] == features[i].name
        assert spec.obs_scale[i] == features[i].normalization
    assert spec.obs_scale[spec.feature_names.index("inv:heart")] == 256.0
    obs, rew, done, eps = env.step(np.zeros(env.num_agents, dtype=np.int64))
    assert obs.shape == (env.num_agents, *spec.obs_shape) and obs.dtype == np.uint8
    assert rew.shape == (env.num_agents,) and rew.dtype == np.float32
    assert done.shape == (env.num_agents,) and done.dtype == bool and eps == []
    assert obs.any(axis=(1, 2, 3)).all()  # every agent sees something (at least the global tokens)
    with pytest.raises(ValueError):
        env.step(np.full(env.num_agents, 5))
    env.close()


@pytest.mark.parametrize("name", ["mettagrid.arena", "mettagrid.assembly_lines"])
def test_token_box_matches_slow_reference_on_real_observations(name):
    env = make(name, num_envs=3)
    c, h, w = env.spec.obs_shape
    obs = env.reset(1)
    rng = np.random.default_rng(1)
    seen_global = False
    for t in range(12):
        np.testing.assert_array_equal(obs, slow_box(env._tokens, c, h, w))
        seen_global |= bool((env._tokens[:, :, 0] == 0xFE).any())
        obs = env.step(rng.integers(0, 5, env.num_agents))[0]
    assert seen_global  # episode_completion_pct / last_action tokens exercised the global path


def test_token_box_edge_cases():
    rng = np.random.default_rng(0)
    box = TokenBox(4, 9, 11, 11)
    tokens = np.full((4, 30, 3), 0xFF, dtype=np.uint8)
    tokens[:, :20] = rng.integers(0, 256, (4, 20, 3))  # out-of-window cells, unknown features, 0xFE
    tokens[0, 0] = (0xFE, 2, 7)
    tokens[1, :20, 0] = rng.integers(0, 0xAB, 20)  # rows/cols up to 10: mostly in the window
    tokens[1, :20, 1] = rng.integers(0, 9, 20)
    assert box(tokens)[0, 2, 5, 5] == 7  # a global token sits at the centre
    for _ in range(2):  # the reused box must forget the previous call
        np.testing.assert_array_equal(box(tokens), slow_box(tokens, 9, 11, 11))
        tokens = np.roll(tokens, 1, axis=0)
    full = rng.integers(0, 256, (3, 16, 3)).astype(np.uint8)  # no empty token at the end of the rows
    np.testing.assert_array_equal(TokenBox(3, 9, 11, 11)(full), slow_box(full, 9, 11, 11))


@pytest.mark.parametrize("name", list(SMALL))
def test_auto_reset_at_max_steps(name):
    max_steps = 7
    env = make(name, num_envs=2, max_steps=max_steps)
    env.reset(3)
    pct = env.spec.feature_names.index("episode_completion_pct")
    rng = np.random.default_rng(0)
    ended: list[list[EpisodeStats]] = []
    returns = np.zeros(env.num_agents)
    for t in range(1, 2 * max_steps + 1):
        obs, rew, done, eps = env.step(rng.integers(0, 5, env.num_agents))
        returns += rew
        if t % max_steps:
            assert not done.any() and eps == []
            assert (obs[:, pct, 5, 5] > 0).all()  # mid-episode: completion > 0
        else:
            assert done.all() and len(eps) == env.num_agents
            assert all(isinstance(e, EpisodeStats) and e.length == max_steps for e in eps)
            assert {"heart", "unique_cells"} <= set(eps[0].extras)
            assert all(e.extras["unique_cells"] >= 1 for e in eps)
            np.testing.assert_allclose([e.episode_return for e in eps], returns, rtol=1e-5, atol=1e-5)
            returns[:] = 0
            # same-step auto-reset: the rows already hold the next episode's first observation
            assert (obs[:, pct, 5, 5] == 0).all()
            ended.append(eps)
    assert len(ended) == 2


@pytest.mark.parametrize("name", list(SMALL))
def test_same_seed_same_observations(name):
    def rollout(seed: int) -> np.ndarray:
        env = make(name, num_envs=2, seed=seed, max_steps=10)
        rng = np.random.default_rng(0)
        frames = [env.reset(seed)]
        frames += [env.step(rng.integers(0, 5, env.num_agents))[0] for _ in range(25)]  # two auto-resets
        frames.append(env.reset(seed))  # reset reseeds: back to the first frame
        return np.stack(frames)

    a, b, other = rollout(5), rollout(5), rollout(6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[-1], a[0])
    assert not np.array_equal(a, other)


def test_bad_name_raises_value_error():
    with pytest.raises(ValueError, match=r"mettagrid\.nope.*mettagrid\.arena, mettagrid\.navigation, mettagrid\.assembly_lines"):
        MettagridVecEnv(EnvConfig(name="mettagrid.nope", num_envs=1), 0)


def _path_to(sim, target: str) -> list[int]:
    """Shortest move sequence that ends by bumping into the object of type ``target`` (BFS)."""
    objects = sim.grid_objects().values()
    blocked = {(o["r"], o["c"]) for o in objects}
    start = next((o["r"], o["c"]) for o in objects if o["type_name"] == "agent")
    goal = next((o["r"], o["c"]) for o in objects if o["type_name"] == target)
    moves = {(-1, 0): 1, (1, 0): 2, (0, -1): 3, (0, 1): 4}  # north, south, west, east
    prev: dict = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for (dr, dc), action in moves.items():
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt == goal:
                path = [action]
                while prev[cell] is not None:
                    cell, a = prev[cell]
                    path.append(a)
                return path[::-1]
            if nxt not in prev and nxt not in blocked:
                prev[nxt] = (cell, action)
                queue.append(nxt)
    raise AssertionError(f"no path to {target}")


def test_assembly_line_stations_pay_a_heart_only_through_the_chain():
    env = make("mettagrid.assembly_lines", num_envs=1, max_steps=400, chain_length=2, num_sinks=1, room_size="tiny",
               terrain="none")
    env.reset(11)
    game = env.episode_configs[0].game
    placed = list(game.map_builder.instance.objects)
    assert len(placed) == 2 + 1 + 1  # chain_length + 1 links and one sink

    def trade(name):
        deltas = game.objects[name].on_use_handler.mutations[0].deltas
        return {r for r, d in deltas.items() if d < 0}, {r for r, d in deltas.items() if d > 0}

    first = next(n for n in placed if not trade(n)[0] and trade(n)[1])
    sink = next(n for n in placed if not trade(n)[1])

    def walk(target):
        total = 0.0
        for action in _path_to(env.sims[0], target):
            total += float(env.step(np.array([action]))[1][0])
        return total

    # the sink takes the first link's product away
    def inventory():
        return next(o for o in env.sims[0].grid_objects().values() if o["type_name"] == "agent")["inventory"]

    walk(first)
    assert sum(inventory().values()) == 1
    assert walk(sink) == 0.0
    assert sum(inventory().values()) == 0
    # follow the chain: nothing -> r1 -> r2 -> heart (the first station is still cooling down: wait)
    for _ in range(int(game.objects[first].on_use_handler.mutations[1].deltas["cooldown"])):
        env.step(np.array([0]))
    reward, holding = 0.0, None
    for _ in range(3):
        station = next(n for n in placed if trade(n)[1] and trade(n)[0] == ({holding} if holding else set()))
        reward += walk(station)
        holding = next(iter(trade(station)[1]))
    assert holding == "heart" and reward == 1.0
