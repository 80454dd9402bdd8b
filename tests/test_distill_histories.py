"""The learning-history HDF5 file: round trip, schema (dtypes, shapes, attributes, gzip), DICP's
plain files, and each bad file as one BadInput line naming the file and the fault."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from fiberlab.distill.histories import (
    REQUIRED_ATTRS,
    SCHEMA,
    GoalHistory,
    goal_ranges,
    history_path,
    open_history,
    write_history,
)
from fiberlab.errors import BadInput

T, S = 7, 3


def goal_history(seed: int, mask: bool = True) -> GoalHistory:
    rng = np.random.default_rng(seed)
    dones = np.zeros((T, S), bool)
    dones[[2, 5]] = True  # two episodes of 3 steps, then an unfinished one
    return GoalHistory(
        states=rng.integers(0, 9, (T, S, 2)), actions=rng.integers(0, 5, (T, S)),
        rewards=rng.integers(0, 2, (T, S)).astype(float), next_states=rng.integers(0, 9, (T, S, 2)), dones=dones,
        action_probs=rng.random((T, S)), compression_mask=rng.integers(0, 2, (T, S)) if mask else None)


def attrs(**over: object) -> dict:
    a = {"env": "darkroom", "alg": "PPO", "alg_seed": 0, "n_stream": S, "horizon": 20, "on_policy_threshold": 0.7,
         "compression_window": 10, "mask_rule": "lookahead", "total_steps": 2 * T * S, "compressed_steps": 5,
         "compression_ratio": 5 / (2 * T * S)}
    a.update(over)
    return a


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[int, GoalHistory]]:
    goals = {4: goal_history(1), 56: goal_history(2)}
    path = write_history(history_path(tmp_path, "darkroom", 0), goals.items(), attrs())
    return path, goals


def one_line_fault(path: Path, *words: str) -> None:
    with pytest.raises(BadInput) as e:
        open_history(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg


def test_file_names_follow_the_seed() -> None:
    assert history_path("datasets", "darkroom", 0).as_posix() == "datasets/history_darkroom_PPO_alg-seed0_compressed.hdf5"
    assert history_path("d", "dark_key_to_door", 3, compressed=False).name == "history_dark_key_to_door_PPO_alg-seed3.hdf5"


def test_round_trip_keeps_every_array_in_the_schema_dtypes(written) -> None:
    path, goals = written
    with open_history(path) as h:
        assert h.goals == [4, 56] and h.steps == T and h.n_stream == S and h.env == "darkroom"
        assert h.attrs["schema"] == SCHEMA and h.attrs["compressed_steps"] == 5
        for g, src in goals.items():
            got = h.goal(g)
            for name, dtype in (("states", np.int32), ("actions", np.int32), ("rewards", np.float32),
                                ("next_states", np.int32), ("dones", np.bool_), ("action_probs", np.float32),
                                ("compression_mask", np.uint8)):
                arr = getattr(got, name)
                assert arr.dtype == dtype, name
                np.testing.assert_array_equal(arr, np.asarray(getattr(src, name)).astype(dtype))
        stacked = h.stack([56, 4], ["states", "action_probs"])
        assert stacked["states"].shape == (2, T, S, 2) and stacked["action_probs"].shape == (2, T, S)
        np.testing.assert_array_equal(stacked["states"][1], goals[4].states)
        assert set(h.stack()) == set(h.fields)


def test_file_layout_is_time_major_gzip_with_attributes(written) -> None:
    path, _ = written
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["4", "56"]
        assert set(REQUIRED_ATTRS) <= set(f.attrs)
        for name, ds in f["56"].items():
            assert ds.compression == "gzip", name
            assert ds.shape[:2] == (T, S), name
        assert f["56"]["states"].shape == (T, S, 2) and f["56"]["dones"].dtype == np.bool_


def test_episode_returns_sum_each_finished_episode() -> None:
    h = goal_history(3)
    ep = h.episode_returns()
    assert ep.shape == (2, S)  # the unfinished third episode is left out
    np.testing.assert_allclose(ep[0], h.rewards[0:3].sum(0))
    np.testing.assert_allclose(ep[1], h.rewards[3:6].sum(0))


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "h.hdf5"

    def goals():
        yield 0, goal_history(0)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_history(path, goals(), attrs())
    assert list(tmp_path.iterdir()) == []


def test_plain_dicp_file_is_read_and_converted(tmp_path: Path) -> None:
    path = history_path(tmp_path, "darkroom", 0, compressed=False)
    src = goal_history(5)
    with h5py.File(path, "w") as f:  # DICP's writer: no attributes, its own dtypes, no probabilities
        g = f.create_group("0")
        g["states"] = src.states.astype(np.int64)
        g["actions"] = src.actions.astype(np.int64)
        g["rewards"] = src.rewards.astype(np.float64)
        g["next_states"] = src.next_states.astype(np.int64)
        g["dones"] = src.dones
    with open_history(path) as h:
        assert h.env == "darkroom" and h.plain and h.fields == ("states", "actions", "rewards", "next_states", "dones")
        got = h.goal(0)
        assert got.actions.dtype == np.int32 and got.rewards.dtype == np.float32 and got.action_probs is None
        np.testing.assert_array_equal(got.states, src.states)


def test_missing_path_and_not_hdf5_and_directory(tmp_path: Path) -> None:
    one_line_fault(tmp_path / "nope.hdf5", "no such file")
    text = tmp_path / "notes.hdf5"
    text.write_text("not an hdf5 file\n")
    one_line_fault(text, "not an HDF5 file")
    one_line_fault(tmp_path, "directory")


def test_another_schema_is_refused(tmp_path: Path) -> None:
    path = write_history(tmp_path / "h.hdf5", [(0, goal_history(0))], attrs())
    with h5py.File(path, "a") as f:
        f.attrs["schema"] = "someone.else/2"
    one_line_fault(path, "schema", "someone.else/2")
    other = tmp_path / "model.hdf5"
    with h5py.File(other, "w") as f:  # an HDF5 file of another kind altogether
        f["weights"] = np.zeros(3)
    one_line_fault(other, "no goal groups")


def test_missing_goal_group_names_the_goals_held(written) -> None:
    path, _ = written
    with open_history(path) as h:
        with pytest.raises(BadInput) as e:
            h.goal(5)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and "no goal group '5'" in msg and "4, 56" in msg
        with pytest.raises(BadInput, match="no goal group '7'"):
            h.stack([4, 7])


@pytest.mark.parametrize("fault,words", [
    ("drop", ("goal '56'", "no dataset 'dones'")),
    ("shape", ("goal '56'", "'actions'", "shape (7, 2)")),
    ("dtype", ("goal '56'", "'rewards'", "dtype float64")),
    ("attr", ("missing file attribute 'compression_ratio'",)),
])
def test_bad_datasets_and_attributes(written, fault: str, words: tuple[str, ...]) -> None:
    path, _ = written
    with h5py.File(path, "a") as f:
        g = f["56"]
        if fault == "drop":
            del g["dones"]
        elif fault == "shape":
            del g["actions"]
            g["actions"] = np.zeros((T, S - 1), np.int32)
        elif fault == "dtype":
            del g["rewards"]
            g["rewards"] = np.zeros((T, S), np.float64)
        else:
            del f.attrs["compression_ratio"]
    one_line_fault(path, *words)


def test_goal_ranges_are_short() -> None:
    assert goal_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
