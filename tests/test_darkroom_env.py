"""Darkroom and its variants against hand-worked cases and the published best returns (DICP)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fiberlab.config import EnvConfig
from fiberlab.envs import make_vecenv
from fiberlab.envs.darkroom import GridTasks, best_return, goal_xy, num_tasks, task_split
from fiberlab.errors import BadInput


def scripted_optimal(env: GridTasks, state: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Greedy Manhattan moves towards ``targets`` (x first), then stay: in the unpermuted action space."""
    dx, dy = targets[:, 0] - state[:, 0], targets[:, 1] - state[:, 1]
    a = torch.full_like(dx, 4)
    a = torch.where(dy < 0, 3, a)
    a = torch.where(dy > 0, 2, a)
    a = torch.where(dx < 0, 1, a)
    return torch.where(dx > 0, 0, a)


def play(env: GridTasks, policy) -> torch.Tensor:
    """Returns of one episode of every env."""
    s = env.reset()
    total = torch.zeros(env.num_envs)
    for _ in range(env.horizon):
        out = env.step(policy(s))
        total += out.reward
        s = out.obs
    assert out.done.all()
    return total


def test_hand_worked_moves_clip_and_reward() -> None:
    env = GridTasks("darkroom", [4 * 9 + 6])  # goal (4, 6): two steps of y+1 from the centre
    assert env.reset().tolist() == [[4, 4]]
    out = env.step(torch.tensor([2]))
    assert out.next_state.tolist() == [[4, 5]] and out.reward.tolist() == [0.0] and not out.done[0]
    out = env.step(torch.tensor([2]))
    assert out.next_state.tolist() == [[4, 6]] and out.reward.tolist() == [1.0]
    out = env.step(torch.tensor([4]))  # staying on the goal is rewarded again
    assert out.reward.tolist() == [1.0]
    out = env.step(torch.tensor([0]))  # leaving it is not
    assert out.next_state.tolist() == [[5, 6]] and out.reward.tolist() == [0.0]
    corner = GridTasks("darkroom", [0])
    corner.reset()
    for _ in range(6):
        out = corner.step(torch.tensor([1]))
    assert out.next_state.tolist() == [[0, 4]]  # x clipped at 0 after 4 moves


def test_horizon_done_terminal_state_and_auto_reset() -> None:
    env = GridTasks("darkroom", [0, 80])
    env.reset()
    for t in range(20):
        out = env.step(torch.tensor([0, 0]))
        assert bool(out.done.all()) == (t == 19) and bool(out.done.any()) == (t == 19)
    # the true terminal state is next_state; the agent sees the start state again
    assert out.next_state.tolist() == [[8, 4], [8, 4]]
    assert out.obs.tolist() == [[4, 4], [4, 4]]
    out = env.step(torch.tensor([3, 3]))
    assert out.next_state.tolist() == [[4, 3], [4, 3]] and not out.done.any()


def test_split_matches_dicp_seed_0() -> None:
    train, test = task_split("darkroom", 0)
    assert len(train) == 73 and len(test) == 8 and sorted(train + test) == list(range(81))
    assert [goal_xy(t) for t in test] == [(4, 2), (5, 6), (6, 8), (7, 2), (3, 6), (0, 5), (5, 8), (5, 4)]
    assert task_split("darkroom", 1)[1] != test
    k_train, k_test = task_split("dark_key_to_door", 0)
    assert len(k_train) == round(6561 * 0.95) and len(k_test) == 6561 - len(k_train)


def test_best_returns_are_the_published_ones_and_reachable() -> None:
    best = best_return("darkroom", range(81))
    assert best.mean() == pytest.approx(16.54, abs=0.005)
    assert best_return("darkroom", task_split("darkroom", 0)[1]).mean() == pytest.approx(17.25)
    env = GridTasks("darkroom", range(81))
    got = play(env, lambda s: scripted_optimal(env, s, env.goal))
    np.testing.assert_array_equal(got.numpy(), best)


def test_permuted_actions_and_best_return() -> None:
    env = GridTasks("darkroom_permuted", range(120))
    assert env.reset()[0].tolist() == [0, 0]
    # an agent that knows the permutation: invert it and walk to (8, 8)
    from fiberlab.envs.darkroom import _PERMUTATIONS

    inverse = torch.argsort(_PERMUTATIONS, dim=1)  # unpermuted action -> the action that does it
    got = play(env, lambda s: inverse[torch.arange(120), scripted_optimal(env, s, env.goal)])
    np.testing.assert_array_equal(got.numpy(), best_return("darkroom_permuted", range(120)))
    # the identity permutation is task 0; some other task moves differently
    env2 = GridTasks("darkroom_permuted", [0, 119])
    env2.reset()
    out = env2.step(torch.tensor([0, 0]))
    assert out.next_state[0].tolist() == [1, 0] and out.next_state[1].tolist() != [1, 0]


def test_key_to_door_rewards_key_then_door_once_each() -> None:
    tasks = torch.arange(0, 6561, 37)
    env = GridTasks("dark_key_to_door", tasks)
    s = env.reset()
    total = torch.zeros(env.num_envs)
    for _ in range(env.horizon):
        target = torch.where(env.has_key[:, None], env.door, env.key)
        out = env.step(scripted_optimal(env, s, target))
        total += out.reward
        s = out.obs
    assert total.tolist() == [2.0] * env.num_envs
    # the door before the key gives nothing: key (8,8), door (1,0)
    t = 8 * 729 + 8 * 81 + 1 * 9 + 0
    one = GridTasks("dark_key_to_door", [t])
    one.reset()
    assert one.step(torch.tensor([0])).reward.item() == 0.0  # (1,0) = the door, no key yet


def test_vecenv_and_gymnasium_front_doors() -> None:
    vec = make_vecenv(EnvConfig(name="darkroom.darkroom", num_envs=6), seed=3)
    obs = vec.reset(seed=3)
    assert obs.shape == (6, 2) and obs.dtype == np.float32 and vec.spec.num_actions == 5
    episodes = []
    for _ in range(20):
        obs, rew, done, eps = vec.step(np.zeros(6, dtype=np.int64))
        episodes += eps
    assert done.all() and len(episodes) == 6 and all(e.length == 20 for e in episodes)
    import gymnasium as gym

    from fiberlab.envs.darkroom import register_gymnasium

    register_gymnasium()
    g = gym.make("fiberlab/Darkroom-v0", task=40)  # goal (4, 4): the start
    obs, info = g.reset(seed=0)
    assert obs.tolist() == [4, 4] and info["task"] == 40
    rewards = []
    for _ in range(20):
        obs, r, term, trunc, _ = g.step(4)
        rewards.append(r)
    assert sum(rewards) == 20.0 and trunc and not term


def test_bad_inputs_are_one_line() -> None:
    with pytest.raises(BadInput, match="unknown env 'lightroom'"):
        GridTasks("lightroom", [0])
    with pytest.raises(BadInput, match="bad task index 81 for darkroom: integers 0..80"):
        GridTasks("darkroom", [81])
    with pytest.raises(BadInput, match="actions outside"):
        GridTasks("darkroom", [0]).step(torch.tensor([5]))
    assert num_tasks("darkroom_permuted") == 120
