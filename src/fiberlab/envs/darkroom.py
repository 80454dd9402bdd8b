"""Darkroom and its two variants as fully vectorized task batches: the environments of Algorithm
Distillation (Laskin et al. 2022) as DICP (Son et al., ICLR 2025, ``gridworld/``) defines them.

Why vectorized over tasks: learning histories are collected for every goal at once (81 goals x
100 streams = 8,100 envs) and in-context evaluation steps every test goal together, so one step is
a handful of tensor operations over all envs, never a Python loop. The same class runs on CPU or
CUDA (the AD evaluation steps it on the model's device).

The three families (``ENV_NAMES``), all on a 9 x 9 grid, state = own (x, y), 5 actions
(0: x+1, 1: x-1, 2: y+1, 3: y-1, 4: stay; positions clipped to the grid):

- ``darkroom``: start at the centre (4, 4); task i is the goal (i // 9, i % 9) (81 tasks); reward 1
  on every step spent on the goal (staying included); horizon 20. The best return of goal g is
  ``clip(21 - L1(g, centre), 0, 20)``: mean 16.54 over the 81 goals.
- ``darkroom_permuted``: start (0, 0), goal (8, 8), task i permutes the 5 actions (the i-th of
  ``itertools.permutations(range(5))``, 120 tasks): the agent must find out which action moves
  where. Horizon 50, reward as Darkroom; best return 50 - 16 + 1 = 35 for every task.
- ``dark_key_to_door``: start (0, 0) (our choice; DICP's code base leaves it to the task generator);
  task i = (key x, key y, door x, door y) in row-major order over 9^4 = 6,561 tasks; reward 1 the
  first time the agent stands on the key, and 1 the first time it stands on the door while holding
  the key (max return 2); horizon 50. The key state is hidden: the observation is only (x, y).

Every episode lasts exactly ``horizon`` steps (no early end; DICP's Darkroom has none either), so all
envs of a batch are done at the same step. At ``done`` the step returns the TRUE terminal state as
``next_state`` and the start state as ``obs``: DICP stores the reset state as the last
``next_state`` but evaluates on the terminal one; we use the terminal state in both places.

Splits follow DICP: ``random.seed(seed); random.shuffle(tasks)``; the first ``round(0.9 n)`` train
(darkroom: 73 train, 8 test; seed 0's test goals are (4,2), (5,6), (6,8), (7,2), (3,6), (0,5),
(5,8), (5,4)); key-to-door 95:5.

Reachable three ways: :class:`GridTasks` (the batch the distill package uses), :class:`DarkroomVecEnv`
(fiberlab's ``VecEnv``, so ``fiberlab train darkroom`` trains a recurrent PPO agent on random
train goals: an RL^2-style baseline) and :class:`DarkroomGym` (one env, gymnasium API, registered as
``fiberlab/Darkroom-v0``, ``fiberlab/DarkroomPermuted-v0``, ``fiberlab/DarkKeyToDoor-v0``).
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from fiberlab.envs.base import EnvSpec, EpisodeTracker, VecEnv
from fiberlab.errors import BadInput

GRID = 9
NUM_ACTIONS = 5
ACTION_NAMES = ("x+1", "x-1", "y+1", "y-1", "stay")
ENV_NAMES = ("darkroom", "darkroom_permuted", "dark_key_to_door")
_HORIZON = {"darkroom": 20, "darkroom_permuted": 50, "dark_key_to_door": 50}
_NUM_TASKS = {"darkroom": GRID * GRID, "darkroom_permuted": 120, "dark_key_to_door": GRID**4}
_TRAIN_FRACTION = {"darkroom": 0.9, "darkroom_permuted": 0.9, "dark_key_to_door": 0.95}
_START = {"darkroom": (GRID // 2, GRID // 2), "darkroom_permuted": (0, 0), "dark_key_to_door": (0, 0)}
# moves of the unpermuted actions, (dx, dy)
_MOVES = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], dtype=torch.long)
_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(NUM_ACTIONS))), dtype=torch.long)  # [120, 5]


def check_env(env: str) -> str:
    if env not in ENV_NAMES:
        raise BadInput(f"unknown env {env!r}: allowed are {', '.join(ENV_NAMES)}")
    return env


def num_tasks(env: str) -> int:
    return _NUM_TASKS[check_env(env)]


def horizon(env: str) -> int:
    return _HORIZON[check_env(env)]


def check_tasks(env: str, tasks: Sequence[int] | np.ndarray | torch.Tensor) -> list[int]:
    """``tasks`` as a list of ints, each a valid task index of ``env``; else one BadInput line."""
    n = num_tasks(env)
    out = [int(t) for t in (tasks.tolist() if hasattr(tasks, "tolist") else tasks)]
    bad = [t for t in out if not 0 <= t < n]
    if bad:
        raise BadInput(f"bad task index {bad[0]} for {env}: integers 0..{n - 1} are allowed")
    if not out:
        raise BadInput(f"no tasks given for {env}: at least one task index 0..{n - 1} is needed")
    return out


def task_split(env: str, seed: int = 0) -> tuple[list[int], list[int]]:
    """DICP's split: shuffle the task indices with Python's ``random`` seeded ``seed``; the first
    ``round(f n)`` are train tasks (f = 0.9, key-to-door 0.95), the rest test tasks."""
    n = num_tasks(env)
    order = list(range(n))
    state = random.getstate()
    try:
        random.seed(seed)
        random.shuffle(order)
    finally:
        random.setstate(state)  # do not disturb the caller's global random stream
    cut = round(n * _TRAIN_FRACTION[env])
    return order[:cut], order[cut:]


def goal_xy(task: int) -> tuple[int, int]:
    """Darkroom's goal of task index ``task``: (task // 9, task % 9)."""
    return task // GRID, task % GRID


def best_return(env: str, tasks: Sequence[int] | np.ndarray) -> np.ndarray:
    """The highest return an agent that knows the task can get, per task.

    Darkroom: reach the goal in L1 steps and stay: reward on steps L1..20, i.e. 21 - L1 (20 when
    the goal is the start). Permuted: L1((0,0),(8,8)) = 16, so 50 - 16 + 1 = 35. Key-to-door: 2
    when the key and the door can both be reached in 50 steps, which on a 9 x 9 grid they always can
    (at most 16 + 16 steps).
    """
    tasks = check_tasks(env, tasks)
    h = horizon(env)
    if env == "darkroom":
        cx, cy = _START[env]
        dist = np.array([abs(t // GRID - cx) + abs(t % GRID - cy) for t in tasks])
        return np.clip(h + 1 - dist, 0, h).astype(float)
    if env == "darkroom_permuted":
        return np.full(len(tasks), float(h + 1 - 2 * (GRID - 1)))
    return np.full(len(tasks), 2.0)


class Step(NamedTuple):
    """One batched step. ``next_state`` is the true next state (terminal at ``done``); ``obs`` is
    what the agent sees next (the start state where ``done``)."""

    next_state: torch.Tensor  # [n, 2] long
    reward: torch.Tensor  # [n] float32
    done: torch.Tensor  # [n] bool
    obs: torch.Tensor  # [n, 2] long


class GridTasks:
    """``len(tasks)`` envs of one family, one task each, stepped as one tensor operation."""

    num_actions = NUM_ACTIONS
    num_states = GRID * GRID
    grid = GRID

    def __init__(self, env: str, tasks: Sequence[int] | np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> None:
        self.env = check_env(env)
        self.device = torch.device(device)
        self.tasks = torch.tensor(check_tasks(env, tasks), dtype=torch.long, device=self.device)
        self.num_envs = len(self.tasks)
        self.horizon = horizon(env)
        self.start = torch.tensor(_START[env], dtype=torch.long, device=self.device)
        moves = _MOVES.to(self.device)
        if env == "darkroom_permuted":
            self.moves = moves[_PERMUTATIONS.to(self.device)[self.tasks]]  # [n, 5, 2]: action -> move
            self.goal = torch.full((self.num_envs, 2), GRID - 1, dtype=torch.long, device=self.device)
        else:
            self.moves = moves.expand(self.num_envs, NUM_ACTIONS, 2)
        if env == "darkroom":
            self.goal = torch.stack([self.tasks // GRID, self.tasks % GRID], dim=1)
        if env == "dark_key_to_door":
            t = self.tasks
            self.key = torch.stack([t // GRID**3, t // GRID**2 % GRID], dim=1)
            self.door = torch.stack([t // GRID % GRID, t % GRID], dim=1)
        self.state = self.start.expand(self.num_envs, 2).clone()
        self.t = 0
        self.has_key = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.opened = torch.zeros_like(self.has_key)

    def reset(self) -> torch.Tensor:
        """Every env back at its start state; returns the states [n, 2]."""
        self.state = self.start.expand(self.num_envs, 2).clone()
        self.t = 0
        self.has_key.zero_()
        self.opened.zero_()
        return self.state.clone()

    def step(self, actions: torch.Tensor) -> Step:
        """Move, clip to the grid, reward, and auto-reset every env at the horizon."""
        actions = torch.as_tensor(actions, device=self.device).long()
        if actions.shape != (self.num_envs,):
            raise BadInput(f"actions of shape {tuple(actions.shape)}: ({self.num_envs},) is allowed")
        if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= NUM_ACTIONS):
            raise BadInput(f"actions outside 0..{NUM_ACTIONS - 1}")
        move = self.moves[torch.arange(self.num_envs, device=self.device), actions]
        nxt = (self.state + move).clamp_(0, GRID - 1)
        if self.env == "dark_key_to_door":
            on_key = (nxt == self.key).all(1) & ~self.has_key
            # the door needs the key held BEFORE this step: a door on the key's cell opens on a later step there
            on_door = (nxt == self.door).all(1) & self.has_key & ~self.opened
            reward = on_key.float() + on_door.float()
            self.has_key |= on_key
            self.opened |= on_door
        else:
            reward = (nxt == self.goal).all(1).float()
        self.t += 1
        done_now = self.t >= self.horizon
        done = torch.full((self.num_envs,), done_now, dtype=torch.bool, device=self.device)
        if done_now:
            obs = self.reset()
        else:
            self.state = nxt
            obs = nxt.clone()
        return Step(nxt, reward, done, obs)


# --------------------------------------------------------------------------- fiberlab VecEnv
class DarkroomVecEnv(VecEnv):
    """``env.name = "darkroom.<variant>"`` for the PPO trainer: ``num_envs`` envs, each playing a
    train task drawn at random every episode, observation (x, y) as float32 scaled by 1/8.

    A memoryless policy cannot tell the goals apart; a recurrent one can learn to search and then
    return (within an episode): the RL^2-style baseline next to Algorithm Distillation.
    """

    def __init__(self, cfg: Any, seed: int = 0) -> None:
        variant = cfg.name.split(".", 1)[1]
        self.variant = check_env(variant)
        self.num_agents = cfg.num_envs
        self.rng = np.random.default_rng(seed)
        self.train_tasks, _ = task_split(self.variant, 0)
        self.spec = EnvSpec(
            name=cfg.name, obs_shape=(2,), obs_dtype="float32", num_actions=NUM_ACTIONS,
            feature_names=("x", "y"), action_names=ACTION_NAMES, obs_scale=(float(GRID - 1),),
        )
        self.tracker = EpisodeTracker(self.num_agents)
        self.batch = self._new_batch()

    def _new_batch(self) -> GridTasks:
        tasks = self.rng.choice(self.train_tasks, size=self.num_agents)
        return GridTasks(self.variant, tasks)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.batch = self._new_batch()
        self.tracker = EpisodeTracker(self.num_agents)
        return self.batch.reset().numpy().astype(np.float32)

    def step(self, actions: np.ndarray):  # type: ignore[override]
        out = self.batch.step(torch.from_numpy(np.asarray(actions, dtype=np.int64)))
        rewards = out.reward.numpy()
        dones = out.done.numpy()
        episodes = self.tracker.update(rewards, dones)
        obs = out.obs
        if dones.any():  # all envs end together: draw new tasks for the next episodes
            self.batch = self._new_batch()
            obs = self.batch.reset()
        return obs.numpy().astype(np.float32), rewards.astype(np.float32), dones, episodes


# --------------------------------------------------------------------------- gymnasium
def _gym_class() -> type:
    import gymnasium as gym
    from gymnasium import spaces

    class DarkroomGym(gym.Env):
        """One env of a family for gymnasium users; ``task`` fixed at construction or drawn from
        the train split at every reset (``options={"task": i}`` picks one for that episode)."""

        metadata = {"render_modes": []}

        def __init__(self, env: str = "darkroom", task: int | None = None) -> None:
            self.family = check_env(env)
            self.task = None if task is None else check_tasks(env, [task])[0]
            self.observation_space = spaces.Box(0, GRID - 1, shape=(2,), dtype=np.int64)
            self.action_space = spaces.Discrete(NUM_ACTIONS)
            self._train, _ = task_split(env, 0)
            self._batch: GridTasks | None = None

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
            super().reset(seed=seed)
            task = (options or {}).get("task", self.task)
            if task is None:
                task = int(self.np_random.choice(self._train))
            self._batch = GridTasks(self.family, [task])
            return self._batch.reset()[0].numpy(), {"task": int(task)}

        def step(self, action: int):
            if self._batch is None:
                raise RuntimeError("call reset() before step()")
            out = self._batch.step(torch.tensor([int(action)]))
            done = bool(out.done[0])
            # the episode ends only at the horizon: gymnasium calls that truncation
            return out.next_state[0].numpy(), float(out.reward[0]), False, done, {}

    return DarkroomGym


def __getattr__(name: str) -> Any:
    if name == "DarkroomGym":  # built on first use: importing this module does not import gymnasium
        cls = _gym_class()
        globals()["DarkroomGym"] = cls
        return cls
    raise AttributeError(name)


GYM_IDS = {"fiberlab/Darkroom-v0": "darkroom", "fiberlab/DarkroomPermuted-v0": "darkroom_permuted",
           "fiberlab/DarkKeyToDoor-v0": "dark_key_to_door"}


def register_gymnasium() -> None:
    """Register the three families with gymnasium (``gymnasium.make("fiberlab/Darkroom-v0", task=38)``)."""
    import gymnasium as gym

    for gym_id, family in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(gym_id, entry_point="fiberlab.envs.darkroom:DarkroomGym", kwargs={"env": family},
                         max_episode_steps=None)
