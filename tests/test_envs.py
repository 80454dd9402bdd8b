import numpy as np
import pytest

from fiberlab.config import AtariEnvConfig, EnvConfig
from fiberlab.envs import make_vecenv


def test_popgym_batch_flattens_and_autoresets():
    env = make_vecenv(EnvConfig(name="popgym.RepeatPreviousEasy", num_envs=3), seed=0)
    assert env.spec.obs_shape == (4,) and env.spec.num_actions == 4
    obs = env.reset(0)
    assert obs.shape == (3, 4) and np.all(obs.sum(1) == 1.0)  # one-hot suits
    episodes, steps = [], 0
    while len(episodes) < 3:
        obs, _, _, eps = env.step(np.zeros(3, dtype=np.int64))
        steps += 1
        episodes += eps
        assert np.all(obs.sum(1) == 1.0)
    assert steps == 51 and all(e.length == 51 for e in episodes)
    # reward is +-1/48 per scored step: the episode return equals the sum of the per-step rewards
    assert all(-1.0 - 1e-6 <= e.episode_return <= 1.0 + 1e-6 for e in episodes)


def test_popgym_same_seed_same_observations():
    a = make_vecenv(EnvConfig(name="popgym.RepeatFirstEasy", num_envs=2), 3)
    b = make_vecenv(EnvConfig(name="popgym.RepeatFirstEasy", num_envs=2), 3)
    oa, ob = a.reset(3), b.reset(3)
    for _ in range(20):
        np.testing.assert_array_equal(oa, ob)
        oa = a.step(np.ones(2, dtype=np.int64))[0]
        ob = b.step(np.ones(2, dtype=np.int64))[0]


def test_unknown_env_names():
    with pytest.raises(ValueError, match="unknown env"):
        make_vecenv(EnvConfig(name="gym.CartPole"))
    with pytest.raises(ValueError, match="unknown popgym env"):
        make_vecenv(EnvConfig(name="popgym.Nope"))
    with pytest.raises(ValueError, match="unknown Atari game"):
        make_vecenv(EnvConfig(name="atari.NotAGame"))


def test_atari_puffer_preprocessing_and_unclipped_returns():
    env = make_vecenv(EnvConfig(name="atari.Pong", num_envs=2, atari=AtariEnvConfig(max_episode_frames=2000)), seed=0)
    assert env.spec.obs_shape == (1, 105, 80) and env.spec.obs_dtype == "uint8" and env.spec.num_actions == 6
    assert env.spec.action_names[0] == "NOOP"
    env.reset(0)
    clipped_sum = np.zeros(2)
    done_eps = []
    rng = np.random.default_rng(0)
    for _ in range(600):
        obs, r, d, eps = env.step(rng.integers(0, 6, 2))
        assert obs.shape == (2, 1, 105, 80)
        assert set(np.unique(r)).issubset({-1.0, 0.0, 1.0})
        clipped_sum += r
        done_eps += eps
        if d.any():
            break
    env.close()
    # Pong's raw rewards are already +-1, so raw and clipped sums agree for it; BeamRider's are not:
    assert done_eps and done_eps[0].length > 0


def test_atari_returns_are_real_scores_when_rewards_are_clipped():
    env = make_vecenv(EnvConfig(name="atari.BeamRider", num_envs=2, atari=AtariEnvConfig(max_episode_frames=8000)), seed=1)
    env.reset(1)
    clipped = np.zeros(2)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        _, r, d, eps = env.step(rng.integers(0, 9, 2))
        clipped += r
        if eps:
            i = int(np.flatnonzero(d)[0])
            # BeamRider pays 44+ points per enemy: the reported return is the score, not the sign count
            assert eps[0].episode_return > clipped[i] > 0
            break
    else:
        pytest.fail("no BeamRider episode finished in 3000 steps")
    env.close()


def test_mettagrid_package_imports_without_mettagrid():
    """mettagrid is imported only when an env is built: the maps table and the adapter import without it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['mettagrid'] = None\n"
            "import fiberlab.envs.mettagrid as m\n"
            "assert list(m.MAPS) == ['arena', 'navigation', 'assembly_lines']\n"
            "assert all(r.name == k for k, r in m.MAPS.items())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
