"""Darkroom stepping speed: fiberlab's batched ``GridTasks`` against one-env-at-a-time Python.

Figures: env steps per second of all 81 goals x 100 streams stepped as one tensor operation, and of
a straightforward reference measured in the same run: a plain Python Darkroom (one env object per
stream, stepped in a loop, as gym-style code and DICP's collection do). The machine's limit is the
same arithmetic with no env logic: one clamp-add over the [n, 2] state tensor per step.

    python benchmarks/darkroom_env.py            # 8,100 envs, 200 steps
"""
from __future__ import annotations

import argparse
import time

import bench_common  # noqa: F401  (puts src/ on the path)
import torch
from bench_common import machine_line, median_time

from fiberlab.envs.darkroom import GridTasks


class PythonDarkroom:
    """The reference: one env, plain Python."""

    MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1), (0, 0))

    def __init__(self, goal: tuple[int, int]) -> None:
        self.goal, self.pos, self.t = goal, (4, 4), 0

    def step(self, a: int) -> tuple[tuple[int, int], float, bool]:
        dx, dy = self.MOVES[a]
        self.pos = (min(max(self.pos[0] + dx, 0), 8), min(max(self.pos[1] + dy, 0), 8))
        self.t += 1
        reward = float(self.pos == self.goal)
        done = self.t >= 20
        if done:
            self.pos, self.t = (4, 4), 0
        return self.pos, reward, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tasks = torch.arange(81).repeat_interleave(args.streams)
    n = len(tasks)
    env = GridTasks("darkroom", tasks)
    actions = torch.randint(0, 5, (args.steps, n), generator=torch.Generator().manual_seed(0))

    def batched() -> None:
        env.reset()
        for t in range(args.steps):
            env.step(actions[t])

    state = torch.full((n, 2), 4, dtype=torch.long)
    moves = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]])

    def limit() -> None:
        s = state
        for t in range(args.steps):
            s = (s + moves[actions[t]]).clamp_(0, 8)

    ref_n = min(n, 2000)
    ref_envs = [PythonDarkroom((int(g) // 9, int(g) % 9)) for g in tasks[:ref_n]]
    ref_actions = actions[:, :ref_n].tolist()

    def reference() -> None:
        for t in range(args.steps):
            row = ref_actions[t]
            for i, e in enumerate(ref_envs):
                e.step(row[i])

    t_batched = median_time(batched, 5)
    t_limit = median_time(limit, 5)
    t0 = time.perf_counter()
    reference()
    t_ref = time.perf_counter() - t0
    sps, sps_limit, sps_ref = n * args.steps / t_batched, n * args.steps / t_limit, ref_n * args.steps / t_ref
    print(machine_line())
    print(f"envs {n} (81 goals x {args.streams} streams), {args.steps} steps, 1 torch thread")
    print(f"GridTasks (batched):       {sps / 1e6:8.2f} M steps/s")
    print(f"reference (Python loop):   {sps_ref / 1e6:8.2f} M steps/s   -> batched is {sps / sps_ref:.0f}x the reference")
    print(f"limit (clamp-add only):    {sps_limit / 1e6:8.2f} M steps/s   -> batched is at {sps / sps_limit:.0%} of the limit")


if __name__ == "__main__":
    main()
