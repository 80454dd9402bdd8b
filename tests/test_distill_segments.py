"""Segments of learning histories: the mask rules, marker positions, the random control, the online
causal rule, and the stats/plot report on a tiny synthetic history file."""
from __future__ import annotations

import time

import h5py
import numpy as np
import pytest
import torch

from fiberlab.distill.segments import (
    OnlineCausalMask,
    boundaries,
    marker_rates,
    random_markers,
    run_lengths,
    segment_mask,
)
from fiberlab.errors import BadInput

# The guide's "example segment detection" table (threshold 0.7, its config's window 10).
GUIDE_PROBS = np.array([0.4, 0.8, 0.9, 0.85, 0.75, 0.72, 0.78, 0.6, 0.5, 0.4,
                        0.8, 0.85, 0.77, 0.73, 0.65])
GUIDE_MASK = np.array([0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0], dtype=np.uint8)


def ref_lookahead(p: np.ndarray, thr: float, w: int) -> np.ndarray:
    """The guide's loop, with its bug fixed (a run still open at the last step is closed too)."""
    mask = np.zeros(len(p), dtype=np.uint8)
    seg_start = None
    for i in range(len(p) + 1):
        if i < len(p) and p[i] >= thr:
            if seg_start is None:
                seg_start = i
        elif seg_start is not None:
            if i - seg_start >= w:
                mask[seg_start:i] = 1
            seg_start = None
    return mask


def ref_causal(p: np.ndarray, thr: float, w: int) -> np.ndarray:
    """Straight from the definition: the last w steps (t included) all confident."""
    return np.array([int(t + 1 >= w and all(p[u] >= thr for u in range(t - w + 1, t + 1)))
                     for t in range(len(p))], dtype=np.uint8)


def ref_boundaries(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    start = np.array([bool(m[t]) and (t == 0 or not m[t - 1]) for t in range(len(m))])
    end = np.array([t > 0 and bool(m[t - 1]) and not m[t] for t in range(len(m))])
    return start, end


def random_probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # mostly-confident with dips, so runs of many lengths occur; some exact threshold hits
    p = rng.beta(4, 1.5, size=shape)
    p[rng.random(shape) < 0.05] = 0.7
    return p


# ---------------------------------------------------------------- the rules on hand-made sequences


def test_guide_table_is_what_window_up_to_4_gives_not_window_10():
    # The guide's table marks both runs (6 and 4 confident steps) although its config says
    # window 10: with window 10 the lookahead rule marks NOTHING here. The table is right only for
    # window <= 4 (where it equals plain p >= 0.7), so it illustrates the threshold, not the window.
    assert segment_mask(GUIDE_PROBS, 0.7, 10).sum() == 0
    for w in (1, 2, 3, 4):
        np.testing.assert_array_equal(segment_mask(GUIDE_PROBS, 0.7, w), GUIDE_MASK)
    # window 5..6 keeps only the 6-step run
    expected = GUIDE_MASK.copy()
    expected[10:] = 0
    np.testing.assert_array_equal(segment_mask(GUIDE_PROBS, 0.7, 5), expected)
    np.testing.assert_array_equal(segment_mask(GUIDE_PROBS, 0.7, 6), expected)
    assert segment_mask(GUIDE_PROBS, 0.7, 7).sum() == 0


def test_guide_table_causal_rule_marks_only_after_window_steps():
    # causal, window 4: a run is marked from its 4th step on (steps 4..6 and 13)
    got = segment_mask(GUIDE_PROBS, 0.7, 4, rule="causal")
    want = np.zeros(15, dtype=np.uint8)
    want[[4, 5, 6, 13]] = 1
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint8 and got.shape == GUIDE_PROBS.shape


def test_hand_cases_both_rules():
    p = np.array([0.9, 0.9, 0.9, 0.1, 0.7, 0.7, 0.69, 0.95, 0.95])
    # threshold is inclusive (p == 0.7 is confident); a run reaching the last step counts (the
    # guide's loop drops it: it only closes runs at a low-probability step)
    np.testing.assert_array_equal(segment_mask(p, 0.7, 2), [1, 1, 1, 0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(segment_mask(p, 0.7, 3), [1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(segment_mask(p, 0.7, 2, "causal"), [0, 1, 1, 0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(segment_mask(p, 0.7, 3, "causal"), [0, 0, 1, 0, 0, 0, 0, 0, 0])
    # window 1: both rules are p >= threshold; window longer than T: nothing; extreme thresholds
    for rule in ("lookahead", "causal"):
        np.testing.assert_array_equal(segment_mask(p, 0.7, 1, rule), (p >= 0.7).astype(np.uint8))
        assert segment_mask(p, 0.7, 10, rule).sum() == 0
        assert segment_mask(p, 0.0, 9, rule).sum() == (9 if rule == "lookahead" else 1)
        assert not segment_mask(p, 1.0, 1, rule).any()
    assert segment_mask(np.zeros(0), 0.5, 3).shape == (0,)


def test_rules_match_slow_references_on_random_sequences():
    rng = np.random.default_rng(0)
    for trial in range(30):
        p = random_probs(rng, (int(rng.integers(1, 60)),))
        thr, w = float(rng.choice([0.5, 0.7, 0.9])), int(rng.integers(1, 8))
        np.testing.assert_array_equal(segment_mask(p, thr, w), ref_lookahead(p, thr, w))
        np.testing.assert_array_equal(segment_mask(p, thr, w, "causal"), ref_causal(p, thr, w))


def test_lookahead_is_the_causal_mask_spread_back_over_its_run():
    # every causal step is a lookahead step; each lookahead run holds exactly w-1 non-causal steps
    rng = np.random.default_rng(1)
    p = random_probs(rng, (400, 6))
    look, caus = segment_mask(p, 0.7, 5), segment_mask(p, 0.7, 5, "causal")
    assert np.all(look >= caus)
    starts, _ = boundaries(look)
    assert (look.astype(int) - caus).sum() == 4 * starts.sum()


def test_columns_are_streams_and_numpy_equals_torch():
    rng = np.random.default_rng(2)
    p = random_probs(rng, (300, 9))
    for rule in ("lookahead", "causal"):
        m = segment_mask(p, 0.7, 6, rule)
        assert m.shape == p.shape and m.dtype == np.uint8
        for s in range(p.shape[1]):
            np.testing.assert_array_equal(m[:, s], segment_mask(p[:, s], 0.7, 6, rule))
        mt = segment_mask(torch.tensor(p, dtype=torch.float32), 0.7, 6, rule)
        assert isinstance(mt, torch.Tensor) and mt.dtype == torch.uint8
        # float32 rounding may flip a value sitting on the threshold: compare at float32 values
        np.testing.assert_array_equal(mt.numpy(), segment_mask(p.astype(np.float32), 0.7, 6, rule))
        np.testing.assert_array_equal(segment_mask(torch.tensor(p), 0.7, 6, rule).numpy(), m)
        st, _ = boundaries(mt)
        _, en = boundaries(m)
        np.testing.assert_array_equal(st.numpy(), boundaries(mt.numpy())[0])
        np.testing.assert_array_equal(boundaries(torch.tensor(m))[1].numpy(), en)


def test_full_dataset_scale_is_fast():
    # [1000, 100] per goal x 81 goals, both rules: vectorised over streams (a per-step Python loop
    # would take tens of seconds); generous bound for a shared 2-core machine
    rng = np.random.default_rng(3)
    p = random_probs(rng, (1000, 100)).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(81):
        segment_mask(p, 0.7, 10)
        segment_mask(p, 0.7, 10, "causal")
    assert time.perf_counter() - t0 < 4.0


# ---------------------------------------------------------------- causality


def test_causal_mask_and_markers_never_depend_on_the_future():
    rng = np.random.default_rng(4)
    p = random_probs(rng, (120, 5))
    mask = segment_mask(p, 0.7, 4, "causal")
    start, end = boundaries(mask)
    for t in range(0, 120, 7):
        q = p.copy()
        q[t + 1:] = rng.random(q[t + 1:].shape)  # any future
        m2 = segment_mask(q, 0.7, 4, "causal")
        s2, e2 = boundaries(m2)
        np.testing.assert_array_equal(m2[: t + 1], mask[: t + 1])
        np.testing.assert_array_equal(s2[: t + 1], start[: t + 1])
        np.testing.assert_array_equal(e2[: t + 1], end[: t + 1])


def test_lookahead_leaks_the_future():
    # the same past, two futures: the lookahead start at t=0 depends on steps 1..3
    p = np.array([0.9, 0.9, 0.9, 0.9, 0.1])
    q = np.array([0.9, 0.9, 0.9, 0.1, 0.1])
    assert segment_mask(p, 0.7, 4)[0] == 1 and segment_mask(q, 0.7, 4)[0] == 0
    assert boundaries(segment_mask(p, 0.7, 4))[0][0] and not boundaries(segment_mask(q, 0.7, 4))[0][0]


# ---------------------------------------------------------------- boundaries


def test_boundaries_hand_cases():
    m = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=np.uint8)
    start, end = boundaries(m)
    assert start.dtype == np.bool_ and start.shape == m.shape
    # a stream starting inside a segment gets a start at 0; the last segment runs to the end: no end
    np.testing.assert_array_equal(start, [1, 0, 0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(end, [0, 0, 1, 0, 1, 0, 0, 0])
    start, end = boundaries(np.zeros(5, dtype=bool))
    assert not start.any() and not end.any()
    start, end = boundaries(np.ones(5, dtype=bool))
    np.testing.assert_array_equal(start, [1, 0, 0, 0, 0])
    assert not end.any()
    # [T, S]: per column along time, never across streams
    M = np.array([[1, 0], [0, 1], [1, 1]])
    s2, e2 = boundaries(M)
    np.testing.assert_array_equal(s2, [[1, 0], [0, 1], [1, 0]])
    np.testing.assert_array_equal(e2, [[0, 0], [1, 0], [0, 0]])
    rng = np.random.default_rng(5)
    R = rng.random((50, 4)) < 0.5
    s3, e3 = boundaries(R)
    for s in range(4):
        rs, re = ref_boundaries(R[:, s])
        np.testing.assert_array_equal(s3[:, s], rs)
        np.testing.assert_array_equal(e3[:, s], re)


def test_segment_lengths_from_run_lengths():
    m = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1])
    start, _ = boundaries(m)
    np.testing.assert_array_equal(run_lengths(m, total=True)[start], [2, 1, 3])
    np.testing.assert_array_equal(run_lengths(m, total=False), [1, 2, 0, 1, 0, 0, 1, 2, 3])


# ---------------------------------------------------------------- the random-marker control


def test_random_markers_keep_the_rates():
    rng = np.random.default_rng(6)
    mask = segment_mask(random_probs(rng, (2000, 100)), 0.7, 5)
    start, end = boundaries(mask)
    rs, re = marker_rates(start, end)
    assert 0.005 < rs < 0.2 and 0.005 < re < 0.2
    s, e = random_markers(start, end, np.random.default_rng(0))
    assert s.shape == start.shape and s.dtype == np.bool_
    n = start.size  # 200 k positions: the rate's standard error is < 0.001
    assert abs(s.mean() - rs) < 4 * np.sqrt(rs * (1 - rs) / n)
    assert abs(e.mean() - re) < 4 * np.sqrt(re * (1 - re) / n)
    # independent of where the real markers are
    assert abs(s[start].mean() - rs) < 0.03 and abs(s[~start].mean() - rs) < 0.01
    # seeded: reproducible; another seed: other positions
    s_again, _ = random_markers(start, end, np.random.default_rng(0))
    np.testing.assert_array_equal(s, s_again)
    assert (random_markers(start, end, 1)[0] != s).any()
    # tensors in, tensors out (torch.Generator)
    st, et = random_markers(torch.from_numpy(start), torch.from_numpy(end),
                            torch.Generator().manual_seed(0))
    assert isinstance(st, torch.Tensor) and st.dtype == torch.bool and st.shape == start.shape
    assert abs(st.double().mean().item() - rs) < 4 * np.sqrt(rs * (1 - rs) / n)
    assert abs(et.double().mean().item() - re) < 4 * np.sqrt(re * (1 - re) / n)


# ---------------------------------------------------------------- online causal rule


def test_online_causal_equals_offline():
    rng = np.random.default_rng(7)
    p = random_probs(rng, (200, 7))
    mask = segment_mask(p, 0.7, 5, "causal").astype(bool)
    start, end = boundaries(mask)
    online = OnlineCausalMask(7, 0.7, 5)
    for t in range(200):
        step = online.step(torch.tensor(p[t]))
        assert isinstance(step.mask, torch.Tensor)
        np.testing.assert_array_equal(step.mask.numpy(), mask[t])
        np.testing.assert_array_equal(step.start.numpy(), start[t])
        np.testing.assert_array_equal(step.end.numpy(), end[t])
    # numpy in, numpy out; reset starts over
    online.reset()
    rows = [online.step(p[t]) for t in range(200)]
    np.testing.assert_array_equal(np.stack([r.mask for r in rows]), mask)
    np.testing.assert_array_equal(np.stack([r.end for r in rows]), end)
    with pytest.raises(BadInput):
        online.step(p[0, :3])


# ---------------------------------------------------------------- bad inputs


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("kwargs, names", [
    ({"threshold": 1.5}, "1.5"), ({"threshold": -0.1}, "-0.1"), ({"threshold": float("nan")}, "nan"),
    ({"threshold": "0.7"}, "'0.7'"), ({"window": 0}, "window=0"), ({"window": -3}, "-3"),
    ({"window": 2.5}, "2.5"), ({"window": True}, "True"), ({"rule": "future"}, "'future'"),
    ({"probs": np.zeros((2, 3, 4))}, "(2, 3, 4)"), ({"probs": np.array([0.5, 1.2])}, "1.2"),
    ({"probs": np.array([0.5, -0.5])}, "-0.5"), ({"probs": np.array([[0.5], [np.nan]])}, "nan"),
    ({"probs": np.array([0.5, np.inf])}, "inf"), ({"probs": torch.tensor([0.5, 1.5])}, "1.5"),
    ({"probs": np.array(["a", "b"])}, "dtype"), ({"probs": np.float64(0.5)}, "shape ()"),
])
def test_bad_inputs_are_one_line(kwargs, names):
    args = {"probs": np.array([0.5, 0.9]), "threshold": 0.7, "window": 2, "rule": "causal"}
    args.update(kwargs)
    with pytest.raises(BadInput) as exc:
        segment_mask(args["probs"], args["threshold"], args["window"], args["rule"])
    assert names in _one_line(exc)


def test_bad_masks_and_online_settings_are_one_line():
    with pytest.raises(BadInput) as exc:
        boundaries(np.array([0, 2, 1]))
    _one_line(exc)
    with pytest.raises(BadInput) as exc:
        OnlineCausalMask(3, 1.5, 2)
    assert "1.5" in _one_line(exc)
    with pytest.raises(BadInput) as exc:
        OnlineCausalMask(3, 0.5, 0)
    assert "window=0" in _one_line(exc)


# ---------------------------------------------------------------- stats and the plot


T, S, HORIZON = 40, 3, 5
GOALS = (0, 3)


def _write_history(path, stored_masks: dict[int, np.ndarray], probs: dict[int, np.ndarray]) -> None:
    """A tiny file in the contract's schema (written with h5py, independent of histories.py)."""
    with h5py.File(path, "w") as f:
        for g in GOALS:
            grp = f.create_group(str(g))
            grp.create_dataset("states", data=np.zeros((T, S, 2), np.int32), compression="gzip")
            grp.create_dataset("actions", data=np.zeros((T, S), np.int32), compression="gzip")
            grp.create_dataset("rewards", data=np.zeros((T, S), np.float32), compression="gzip")
            grp.create_dataset("next_states", data=np.zeros((T, S, 2), np.int32), compression="gzip")
            dones = np.zeros((T, S), bool)
            dones[HORIZON - 1::HORIZON] = True
            grp.create_dataset("dones", data=dones, compression="gzip")
            grp.create_dataset("action_probs", data=probs[g].astype(np.float32), compression="gzip")
            grp.create_dataset("compression_mask", data=stored_masks[g].astype(np.uint8),
                               compression="gzip")
        total = len(GOALS) * T * S
        marked = int(sum(m.sum() for m in stored_masks.values()))
        f.attrs.update({"env": "darkroom", "alg": "PPO", "alg_seed": 0, "n_stream": S,
                        "horizon": HORIZON, "on_policy_threshold": 0.7, "compression_window": 3,
                        "mask_rule": "lookahead", "total_steps": total, "compressed_steps": marked,
                        "compression_ratio": marked / total, "schema": "fiberlab.distill.history/1"})


@pytest.fixture
def history(tmp_path):
    rng = np.random.default_rng(8)
    probs = {g: random_probs(rng, (T, S)).astype(np.float32) for g in GOALS}
    # stored masks deliberately NOT the recomputed ones: stats must use the stored mask by default
    stored = {0: np.zeros((T, S), np.uint8), 3: np.zeros((T, S), np.uint8)}
    stored[0][2:6, 0] = 1   # length 4
    stored[0][10:12, 1] = 1  # length 2
    stored[3][35:, 2] = 1   # length 5, still open at the end
    path = tmp_path / "history_darkroom_PPO_alg-seed0_compressed.hdf5"
    _write_history(path, stored, probs)
    return path, probs, stored


def _histories_ready() -> None:
    pytest.importorskip("fiberlab.distill.histories", reason="histories.py (another helper) missing")


def test_stats_from_the_stored_mask(history):
    _histories_ready()
    from fiberlab.distill.segment_report import format_stats, segment_stats

    path, probs, _ = history
    st = segment_stats(path)
    assert st.source == "stored" and (st.threshold, st.window, st.rule) == (0.7, 3, "lookahead")
    assert st.total_steps == 2 * T * S and st.marked_steps == 11 and st.n_segments == 3
    assert st.compression_ratio == pytest.approx(11 / (2 * T * S))
    assert st.open_segments == 1 and st.max_length == 5
    assert st.mean_length == pytest.approx(11 / 3) and st.median_length == 4
    assert [g.goal for g in st.goals] == list(GOALS)
    assert [g.n_segments for g in st.goals] == [2, 1]
    assert st.goals[1].compression_ratio == pytest.approx(5 / (T * S))
    assert st.confident_ratio == pytest.approx(np.mean([(probs[g] >= 0.7).mean() for g in GOALS]))
    text = format_stats(st)
    assert str(path) in text and "on-policy" in text and len(text.splitlines()) == 5 + 1 + 1 + 2


def test_stats_recomputed_with_other_settings(history):
    _histories_ready()
    from fiberlab.distill.segment_report import segment_stats

    path, probs, _ = history
    for thr, w, rule in ((0.6, 2, "causal"), (0.8, 4, "lookahead")):
        st = segment_stats(path, threshold=thr, window=w, rule=rule)
        assert st.source == "recomputed" and (st.threshold, st.window, st.rule) == (thr, w, rule)
        masks = {g: np.stack([ref_lookahead(probs[g][:, s], thr, w) if rule == "lookahead"
                              else ref_causal(probs[g][:, s], thr, w) for s in range(S)], axis=1)
                 for g in GOALS}
        assert st.marked_steps == sum(int(m.sum()) for m in masks.values())
        lengths = []
        for m in masks.values():
            for s in range(S):
                runs = "".join(map(str, m[:, s])).split("0")
                lengths += [len(r) for r in runs if r]
        assert st.n_segments == len(lengths)
        if lengths:
            assert st.mean_length == pytest.approx(np.mean(lengths))
            assert st.length_percentiles[50] == pytest.approx(np.median(lengths))
    # only the window given: threshold and rule come from the file's attributes
    st = segment_stats(path, window=2)
    assert (st.threshold, st.window, st.rule) == (0.7, 2, "lookahead")
    with pytest.raises(BadInput) as exc:
        segment_stats(path, threshold=2.0)
    assert "2.0" in _one_line(exc)


def test_plot_writes_png_and_pdf(history, tmp_path):
    _histories_ready()
    from fiberlab.distill.segment_report import plot_segments

    path, _, _ = history
    out = plot_segments(path, goal=3, stream=2, out_path=tmp_path / "figs" / "seg.png",
                        threshold=0.7, window=3, rule="both")
    assert out == [tmp_path / "figs" / "seg.png"]
    assert out[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = plot_segments(path, 0, 0, tmp_path / "seg.pdf", None, None, None, steps=(5, 30))
    assert [p.suffix for p in out] == [".pdf", ".png"]
    assert out[0].read_bytes()[:5] == b"%PDF-" and out[1].stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp*"))


def test_report_bad_inputs_are_one_line(history, tmp_path):
    _histories_ready()
    from fiberlab.distill.segment_report import plot_segments, segment_stats

    path, _, _ = history
    cases = [
        (lambda: plot_segments(path, 7, 0, tmp_path / "a.png", 0.7, 3, "causal"), "7"),
        (lambda: plot_segments(path, 0, S, tmp_path / "a.png", 0.7, 3, "causal"), f"stream={S}"),
        (lambda: plot_segments(path, 0, -1, tmp_path / "a.png", 0.7, 3, "causal"), "stream=-1"),
        (lambda: plot_segments(path, 0, 0, tmp_path / "a.svg", 0.7, 3, "causal"), "a.svg"),
        (lambda: plot_segments(path, 0, 0, tmp_path / "a.png", 0.7, 3, "sideways"), "sideways"),
        (lambda: plot_segments(path, 0, 0, tmp_path / "a.png", 0.7, 3, "causal", steps=(9, 3)), "(9, 3)"),
        (lambda: segment_stats(path, goals=[0, 5]), "5"),
        (lambda: segment_stats(path, window=0), "window=0"),
    ]
    for call, name in cases:
        with pytest.raises(BadInput) as exc:
            call()
        assert name in _one_line(exc)
    assert not (tmp_path / "a.png").exists()


def test_plain_dicp_file_without_probs_is_one_line(tmp_path):
    _histories_ready()
    from fiberlab.distill.segment_report import segment_stats

    path = tmp_path / "history_darkroom_PPO_alg-seed0.hdf5"
    with h5py.File(path, "w") as f:  # DICP's plain schema: no attributes, no action_probs
        grp = f.create_group("0")
        for name, shape, dtype in (("states", (T, S, 2), np.int64), ("actions", (T, S), np.int64),
                                   ("rewards", (T, S), np.float64), ("next_states", (T, S, 2), np.int64),
                                   ("dones", (T, S), bool)):
            grp.create_dataset(name, data=np.zeros(shape, dtype))
    with pytest.raises(BadInput) as exc:
        segment_stats(path)
    assert "action_probs" in _one_line(exc)
