"""In-context evaluation (issue 14, part 5): the loop feeds the model exactly what the envs did,
never more context than it was trained on, markers online from its own probabilities, and a model
that knows the goal gets the best return on every Darkroom goal."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fiberlab.distill.in_context import evaluate_in_context, resolve_goals
from fiberlab.distill.segments import boundaries, segment_mask
from fiberlab.envs.darkroom import GridTasks, best_return, num_tasks, task_split
from fiberlab.errors import BadInput


class ScriptedModel(nn.Module):
    """Knows each row's goal: logits favour the move that brings the query state closer to it."""

    def __init__(self, goals: torch.Tensor, n_transit: int = 80) -> None:
        super().__init__()
        self.goals = goals  # [n, 2]
        self.n_transit = n_transit

    def forward(self, transitions, query, start=None, end=None):
        dx, dy = self.goals[:, 0] - query[:, 0], self.goals[:, 1] - query[:, 1]
        action = torch.full_like(dx, 4)  # stay on the goal
        action = torch.where(dy < 0, 3, action)
        action = torch.where(dy > 0, 2, action)
        action = torch.where(dx < 0, 1, action)
        action = torch.where(dx > 0, 0, action)
        return torch.nn.functional.one_hot(action, 5).float() * 5.0


class RecordingModel(nn.Module):
    """Random logits from its own generator; records every call's inputs and outputs."""

    def __init__(self, n_transit: int, scale: float = 2.0, seed: int = 0) -> None:
        super().__init__()
        self.n_transit, self.scale = n_transit, scale
        self.gen = torch.Generator().manual_seed(seed)
        self.calls: list[dict] = []

    def forward(self, transitions, query, start=None, end=None):
        logits = torch.randn(query.shape[0], 5, generator=self.gen) * self.scale
        self.calls.append({"transitions": transitions.clone(), "query": query.clone(),
                           "start": None if start is None else start.clone(), "end": None if end is None else end.clone(),
                           "logits": logits.clone()})
        return logits


class RecordingEnv(GridTasks):
    """GridTasks that remembers every step's state, action and result."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.log: list[tuple] = []

    def step(self, actions):
        before = self.state.clone()
        out = super().step(actions)
        self.log.append((before, actions.clone(), out))
        return out


def _probs_taken(model: RecordingModel, env: RecordingEnv) -> np.ndarray:
    """p_t = softmax(logits_t)[a_t], [T, n]: the model's own probability of what it did."""
    rows = []
    for call, (_, action, _) in zip(model.calls, env.log):
        rows.append(torch.softmax(call["logits"], -1)[torch.arange(len(action)), action])
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("timesteps,episodes", [(20, 1), (45, 2), (100, 5)])
def test_shape_is_envs_by_whole_episodes(timesteps, episodes):
    env = GridTasks("darkroom", [0, 40, 80])
    out = evaluate_in_context(RecordingModel(n_transit=8), env, eval_timesteps=timesteps)
    assert out.shape == (3, episodes)
    assert np.all((out >= 0) & (out <= 20))


def test_fewer_steps_than_one_episode_is_bad_input():
    with pytest.raises(BadInput, match="eval_timesteps"):
        evaluate_in_context(RecordingModel(n_transit=8), GridTasks("darkroom", [0]), eval_timesteps=19)


def test_scripted_model_reaches_the_best_return_on_every_goal():
    tasks = list(range(num_tasks("darkroom")))
    env = GridTasks("darkroom", tasks)
    model = ScriptedModel(env.goal.clone())
    out = evaluate_in_context(model, env, eval_timesteps=60, sample=False)
    np.testing.assert_array_equal(out, np.repeat(best_return("darkroom", tasks)[:, None], 3, axis=1))


def test_context_is_the_envs_transitions_and_never_longer_than_n_transit_minus_one():
    n_transit = 6
    env = RecordingEnv("darkroom", [3, 38, 62, 77])
    model = RecordingModel(n_transit)
    evaluate_in_context(model, env, eval_timesteps=60, sample=True, generator=torch.Generator().manual_seed(1))
    assert len(model.calls) == len(env.log) == 60
    # the full record of what happened, as (s, a, r, s') with s' the true next state (terminal at done)
    full = torch.stack([torch.cat([s, a[:, None], out.reward.long()[:, None], out.next_state], 1) for s, a, out in env.log], 1)
    for t, call in enumerate(model.calls):
        lo = max(0, t - (n_transit - 1))
        assert call["transitions"].shape == (4, t - lo, 6)
        assert call["transitions"].shape[1] <= n_transit - 1
        torch.testing.assert_close(call["transitions"], full[:, lo:t])
        # the query is what the agent sees: the env's state before its step
        torch.testing.assert_close(call["query"], env.log[t][0])
        assert call["start"] is None and call["end"] is None  # markers="none"
    # at every episode end the stored s' is the terminal state, and the next query the start (4, 4)
    for t in (19, 39):
        torch.testing.assert_close(full[:, t, 4:6], env.log[t][2].next_state)
        assert (model.calls[t + 1]["query"] == 4).all()


def test_greedy_takes_the_argmax():
    env = RecordingEnv("darkroom", [5, 49])
    model = RecordingModel(n_transit=10)
    evaluate_in_context(model, env, eval_timesteps=20, sample=False)
    for call, (_, action, _) in zip(model.calls, env.log):
        torch.testing.assert_close(action, call["logits"].argmax(-1))


def test_causal_online_markers_equal_the_offline_rule_on_the_recorded_probabilities():
    threshold, window, n_transit = 0.45, 3, 12
    env = RecordingEnv("darkroom", [0, 20, 38, 51, 65, 80])
    model = RecordingModel(n_transit, scale=2.5, seed=3)
    counts: dict[str, int] = {}
    evaluate_in_context(model, env, eval_timesteps=100, markers="causal", threshold=threshold, window=window,
                        generator=torch.Generator().manual_seed(2), marker_counts=counts)
    p = _probs_taken(model, env)  # [T, n]
    start, end = boundaries(segment_mask(p, threshold, window, rule="causal"))
    assert start.any() and end.any(), "the fixture must exercise both markers"
    assert counts == {"start": int(start.sum()), "end": int(end.sum()), "env_steps": 6 * 100}
    for t, call in enumerate(model.calls):
        lo = max(0, t - (n_transit - 1))
        np.testing.assert_array_equal(call["start"].numpy(), start[lo:t].T)
        np.testing.assert_array_equal(call["end"].numpy(), end[lo:t].T)


def test_random_markers_follow_the_given_rates_and_need_them():
    env = GridTasks("darkroom", list(range(20)))
    model = RecordingModel(n_transit=200)
    evaluate_in_context(model, env, eval_timesteps=200, markers="random", marker_rates=(0.3, 0.05),
                        generator=torch.Generator().manual_seed(0))
    last = model.calls[-1]
    assert abs(last["start"].float().mean().item() - 0.3) < 0.04
    assert abs(last["end"].float().mean().item() - 0.05) < 0.02
    with pytest.raises(BadInput, match="marker_rates"):
        evaluate_in_context(model, env, eval_timesteps=20, markers="random")


def test_sampling_with_a_seeded_generator_is_reproducible():
    def actions(seed: int) -> torch.Tensor:
        env = RecordingEnv("darkroom", [1, 2, 3])
        model = RecordingModel(n_transit=8, scale=0.5, seed=7)  # the same logits every time
        evaluate_in_context(model, env, eval_timesteps=40, generator=torch.Generator().manual_seed(seed))
        return torch.stack([a for _, a, _ in env.log])

    torch.testing.assert_close(actions(11), actions(11))
    assert not torch.equal(actions(11), actions(12))


def test_bad_marker_mode_and_bad_threshold_are_bad_input():
    env = GridTasks("darkroom", [0])
    with pytest.raises(BadInput, match="markers"):
        evaluate_in_context(RecordingModel(8), env, eval_timesteps=20, markers="lookahead")
    with pytest.raises(BadInput, match="threshold"):
        evaluate_in_context(RecordingModel(8), env, eval_timesteps=20, markers="causal", threshold=1.5)
    with pytest.raises(BadInput, match="window"):
        evaluate_in_context(RecordingModel(8), env, eval_timesteps=20, markers="causal", window=0)


def test_goal_groups_follow_the_split():
    train, test = task_split("darkroom", 0)
    assert resolve_goals("darkroom", "test", 0) == ("test", test)
    assert resolve_goals("darkroom", "train", 0, n_train_goals=10) == ("train", train[:10])
    with pytest.raises(BadInput, match="goals"):
        resolve_goals("darkroom", "valid", 0)


def test_a_real_transformer_runs_in_context_with_every_marker_mode():
    from fiberlab.distill.config import ADConfig
    from fiberlab.distill.model import ADTransformer

    torch.manual_seed(0)
    model = ADTransformer(ADConfig(model="compressed", tf_n_embd=8, tf_n_head=2, tf_n_layer=1, tf_dim_feedforward=16, n_transit=10))
    env = GridTasks("darkroom", task_split("darkroom", 0)[1])
    for markers in ("none", "causal", "random"):
        out = evaluate_in_context(model, env, eval_timesteps=40, markers=markers, marker_rates=(0.1, 0.1),
                                  generator=torch.Generator().manual_seed(0))
        assert out.shape == (8, 2) and np.isfinite(out).all()
    assert model.training  # the evaluation restores the mode it found


def test_evaluate_checkpoint_on_the_split_goals_with_the_training_marker_rates(tmp_path):
    from fiberlab.distill.ad_checkpoint import save_ad
    from fiberlab.distill.config import ADConfig
    from fiberlab.distill.in_context import evaluate_checkpoint
    from fiberlab.distill.model import ADTransformer

    cfg = ADConfig(model="random_markers", tf_n_embd=8, tf_n_head=2, tf_n_layer=1, tf_dim_feedforward=16, n_transit=10, env_split_seed=1)
    torch.manual_seed(0)
    path = save_ad(tmp_path / "best.safetensors", ADTransformer(cfg), cfg, {"env": "darkroom", "marker_rates": {"start": 0.2, "end": 0.1}})
    res = evaluate_checkpoint(path, goals="test", eval_timesteps=40, markers="random", seed=3, device="cpu")
    assert res["tasks"] == task_split("darkroom", 1)[1] and res["marker_rates"] == [0.2, 0.1]
    assert np.asarray(res["returns"]).shape == (8, 2) and len(res["mean_per_episode"]) == 2
    assert res["best_return"] == best_return("darkroom", res["tasks"]).tolist()
    again = evaluate_checkpoint(path, goals="test", eval_timesteps=40, markers="random", seed=3, device="cpu")
    assert again["returns"] == res["returns"]  # the eval seed fixes sampling and markers
    train = evaluate_checkpoint(path, goals="train", n_train_goals=3, eval_timesteps=20, device="cpu")
    assert train["tasks"] == task_split("darkroom", 1)[0][:3]
    bare = save_ad(tmp_path / "bare.safetensors", ADTransformer(cfg), cfg, {"env": "darkroom"})
    with pytest.raises(BadInput, match="marker rates"):
        evaluate_checkpoint(bare, eval_timesteps=20, markers="random", device="cpu")
    with pytest.raises(BadInput, match="no such"):
        evaluate_checkpoint(tmp_path / "missing.safetensors", device="cpu")


def test_marker_rates_measured_on_the_train_goals_of_a_history(tmp_path):
    from fiberlab.distill.config import ADConfig
    from fiberlab.distill.histories import GoalHistory, write_history
    from fiberlab.distill.in_context import dataset_marker_rates

    rng = np.random.default_rng(0)
    T, S = 40, 2
    probs = {g: rng.random((T, S)).astype(np.float32) for g in (0, 1, 2)}

    def goal(g):
        z = np.zeros((T, S), np.int32)
        return GoalHistory(states=np.zeros((T, S, 2), np.int32), actions=z, rewards=z.astype(np.float32),
                           next_states=np.zeros((T, S, 2), np.int32), dones=np.zeros((T, S), bool),
                           action_probs=probs[g], compression_mask=z.astype(np.uint8))

    attrs = {"env": "darkroom", "alg": "PPO", "alg_seed": 0, "n_stream": S, "horizon": 20, "on_policy_threshold": 0.5,
             "compression_window": 2, "mask_rule": "causal", "total_steps": 3 * T * S, "compressed_steps": 0, "compression_ratio": 0.0}
    path = write_history(tmp_path / "h.hdf5", ((g, goal(g)) for g in (0, 1, 2)), attrs)
    cfg = ADConfig(on_policy_threshold=0.5, compression_window=2, mask_rule="causal")
    start, end = boundaries(segment_mask(np.concatenate([probs[0], probs[2]], axis=1), 0.5, 2, "causal"))
    assert start.any() and end.any()
    got = dataset_marker_rates(path, cfg, [0, 2, 77])  # goal 77 is not in the file: left out
    assert got == pytest.approx((start.mean(), end.mean()))
