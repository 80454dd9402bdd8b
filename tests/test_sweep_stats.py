"""Sweep statistics on synthetic curves whose answers are computed by hand in the comments."""
import math

import numpy as np
import pytest

from fiberlab.errors import BadInput
from fiberlab.sweep.stats import (
    area_under_curve,
    final_value,
    intervals_separate,
    iqm,
    minmax_normalise,
    stratified_bootstrap_ci,
    steps_to_convergence,
    t_interval,
)

STEPS = np.arange(0, 1001, 10)  # 101 points: smoothing window k = 101 // 20 = 5 points


# ---------------------------------------------------------------- final value


def test_final_value_uses_the_last_10_percent_of_steps_not_of_rows():
    # window: steps >= 1000 - 0.1 * 1000 = 900 -> 950, 960, 1000 -> mean(3, 5, 7) = 5
    # (the last 10 % of the 6 rows would be the last row alone: 7)
    assert final_value([0, 100, 200, 950, 960, 1000], [0, 0, 0, 3, 5, 7]) == pytest.approx(5.0)


def test_final_value_window_is_inclusive_skips_nulls_and_sorts():
    # steps 0..1000 by 100: window >= 900 -> 900 and 1000 -> mean(9, 10) = 9.5; the null is dropped
    steps = list(range(0, 1001, 100)) + [950]
    values = [float(s // 100) for s in range(0, 1001, 100)] + [None]
    order = np.random.default_rng(0).permutation(len(steps))
    assert final_value(np.array(steps)[order], np.array(values, dtype=float)[order]) == pytest.approx(9.5)


def test_final_value_one_point_and_frac():
    assert final_value([7], [3.0]) == 3.0
    # frac 0.5 on 0..1000 by 100: steps >= 500 -> values 5..10 -> 7.5
    assert final_value(range(0, 1001, 100), range(11), frac=0.5) == pytest.approx(7.5)
    with pytest.raises(BadInput):
        final_value([0, 1], [1, 2], frac=0)
    with pytest.raises(BadInput):
        final_value([0, 1], [None, None])
    with pytest.raises(BadInput):
        final_value([0, 1, 2], [1, 2])


# ---------------------------------------------------------------- area under the curve


def test_auc_of_a_piecewise_linear_curve_is_its_mean_height():
    # (0,0)-(100,10)-(300,10): area 0.5*100*10 + 200*10 = 2500 over 300 steps -> 8.3333
    assert area_under_curve([0, 100, 300], [0, 10, 10]) == pytest.approx(2500 / 300)
    # uneven spacing and an offset start: (200,2)-(250,4)-(600,4): 50*3 + 350*4 = 1550 over 400 -> 3.875
    assert area_under_curve([200, 250, 600], [2, 4, 4]) == pytest.approx(3.875)
    assert area_under_curve(STEPS, np.full(len(STEPS), 4.0)) == pytest.approx(4.0)
    assert area_under_curve(STEPS, STEPS) == pytest.approx(500.0)  # a ramp 0..1000: mean height 500
    assert area_under_curve([5], [2.5]) == 2.5  # no width: the mean of the values


# ---------------------------------------------------------------- convergence


def test_step_function_converges_at_the_first_step_of_the_plateau():
    # 0 before step 500, 1 from 500 on. Trailing mean over 5 points: m[50..53] = .2 .4 .6 .8, m[54] = 1.
    # plateau 1, band 0.05 * (1 - 0) -> last point outside is index 53, i* = 54 (step 540, before the
    # final window from 900); reported: where that window starts, index 54 - 4 = 50 -> step 500
    values = (STEPS >= 500).astype(float)
    assert steps_to_convergence(STEPS, values) == 500.0


def test_without_smoothing_the_step_function_converges_at_the_jump():
    # 10 points: k = 1 (no smoothing); final window: steps >= 810 -> the last point, plateau 1
    assert steps_to_convergence(range(0, 1000, 100), [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]) == 300.0


def test_ramp_to_a_plateau():
    # v = min(step, 600). plateau 600; smoothed range 600 - 0 -> band 30: m >= 570.
    # m[i] = 10 i - 20 for 4 <= i <= 60 (m[59] = 570, m[58] = 560), then 588, 594, 598, 600...
    # i* = 59 -> reported step of index 59 - 4 = 55 -> 550
    values = np.minimum(STEPS, 600).astype(float)
    assert steps_to_convergence(STEPS, values) == 550.0
    # an absolute tolerance of 100 instead: m >= 500 from i* = 52 -> index 48 -> 480
    assert steps_to_convergence(STEPS, values, tol_abs=100) == 480.0


def test_linear_ramp_is_still_rising():
    # v = step: plateau = mean(900..1000) = 950; m[100] = 980, range 980 -> band 49: m >= 901 from
    # i* = 93 (m = 910, step 930), which lies inside the final window (>= 900): None
    assert steps_to_convergence(STEPS, STEPS.astype(float)) is None


def test_constant_converges_at_the_first_step_and_late_jump_does_not_converge():
    assert steps_to_convergence(STEPS + 40, np.full(len(STEPS), 0.1)) == 40.0
    # jump at 950: plateau = mean of 5 zeros and 6 ones over steps >= 900 = 6/11; the last smoothed
    # point (1) is 0.45 away, outside the band 0.05: no i*
    values = (STEPS >= 950).astype(float)
    assert steps_to_convergence(STEPS, values) is None
    assert steps_to_convergence([3], [1.0]) == 3.0


def test_convergence_of_a_decreasing_curve():
    # mirror of the step function: 1 then 0 from step 500 -> same answer
    values = (STEPS < 500).astype(float)
    assert steps_to_convergence(STEPS, values) == 500.0


# ---------------------------------------------------------------- intervals


def test_t_interval_by_hand():
    mean, half = t_interval([1, 2, 3])
    # sd = 1, t_{0.975, 2} = 4.302653 -> 4.302653 / sqrt(3) = 2.48414
    assert mean == 2.0
    assert half == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)
    assert half == pytest.approx(2.48414, abs=1e-5)
    # 99 %: t_{0.995, 2} = 9.924843 -> 5.73011
    assert t_interval([1, 2, 3], confidence=0.99)[1] == pytest.approx(9.924843 / math.sqrt(3), abs=1e-5)


def test_t_interval_one_and_zero_samples():
    mean, half = t_interval([4.0])
    assert mean == 4.0 and math.isnan(half)
    assert all(math.isnan(x) for x in t_interval([]))
    with pytest.raises(BadInput):
        t_interval([1, 2], confidence=1.0)


def test_iqm_trims_whole_points_like_rliable():
    assert iqm(range(8)) == pytest.approx(3.5)  # cut 2 each end -> mean(2, 3, 4, 5)
    assert iqm([1, 2, 3, 4, 100, 5]) == pytest.approx(3.5)  # floor(1.5) = 1 cut -> mean(2, 3, 4, 5)
    assert iqm([1, 2, 9]) == pytest.approx(4.0)  # n = 3: nothing cut
    assert iqm([[0, 7], [1, 6], [2, 5], [3, 4]]) == pytest.approx(3.5)  # a matrix is flattened
    assert iqm(range(10)) == pytest.approx(4.5)  # floor(2.5) = 2 cut -> mean(2..7)
    with pytest.raises(BadInput):
        iqm([])


def test_bootstrap_two_runs_one_task_by_hand():
    # replicate means of [0, 1]: 0 (p 1/4), 0.5 (1/2), 1 (1/4) -> 2.5 % and 97.5 % quantiles 0 and 1
    point, low, high = stratified_bootstrap_ci([[0.0], [1.0]], np.mean, reps=2000)
    assert (point, low, high) == (0.5, 0.0, 1.0)


def test_bootstrap_contains_point_narrows_and_is_deterministic():
    rng = np.random.default_rng(1)
    few = rng.normal(0.5, 0.2, size=(5, 3))
    many = rng.normal(0.5, 0.2, size=(80, 3))
    p1, lo1, hi1 = stratified_bootstrap_ci(few, iqm, reps=500, seed=3)
    p2, lo2, hi2 = stratified_bootstrap_ci(many, iqm, reps=500, seed=3)
    assert lo1 <= p1 <= hi1 and lo2 <= p2 <= hi2
    assert hi2 - lo2 < 0.5 * (hi1 - lo1)
    assert stratified_bootstrap_ci(few, iqm, reps=500, seed=3) == (p1, lo1, hi1)
    assert stratified_bootstrap_ci(few, iqm, reps=500, seed=4) != (p1, lo1, hi1)


def test_bootstrap_resamples_each_task_within_itself_and_independently():
    scores = np.column_stack([np.arange(5.0), 100 + np.arange(5.0)])  # [runs 5, tasks 2]
    own = stratified_bootstrap_ci(scores, lambda m: float(m[:, 0].max() < 100 <= m[:, 1].min()), reps=300)
    assert own == (1.0, 1.0, 1.0)  # a task's column only ever holds that task's runs
    # rows drawn jointly would keep run i of task 0 next to run i of task 1 (always 1.0)
    paired = stratified_bootstrap_ci(scores, lambda m: float(np.mean(m[:, 1] - m[:, 0] == 100)), reps=300)
    assert paired[0] == 1.0 and paired[1] < 1.0


def test_bootstrap_refuses_what_is_not_a_runs_by_tasks_matrix():
    for bad in ([1.0, 2.0], np.zeros((2, 2, 2)), np.zeros((0, 3)), [[1.0, np.nan]]):
        with pytest.raises(BadInput) as e:
            stratified_bootstrap_ci(bad, np.mean)
        assert "\n" not in str(e.value)
    with pytest.raises(BadInput):
        stratified_bootstrap_ci([[1.0]], np.mean, reps=0)


def test_intervals_separate():
    assert intervals_separate(2, 3, 0, 1) and intervals_separate(0, 1, 2, 3)
    assert not intervals_separate(0, 2, 1, 3)
    assert not intervals_separate(0, 1, 1, 2)  # touching closed intervals overlap
    assert not intervals_separate(5, math.nan, 0, 1)  # one seed: no interval, never separated


def test_minmax_normalise():
    assert minmax_normalise([1, 2.5, 4], 1, 4).tolist() == [0.0, 0.5, 1.0]
    assert minmax_normalise([3, 3], 3, 3).tolist() == [0.0, 0.0]


def test_iqm_matches_scipy_trim_mean_at_a_quarter():
    from scipy.stats import trim_mean

    rng = np.random.default_rng(2)
    for n in range(1, 30):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(trim_mean(x, 0.25))
