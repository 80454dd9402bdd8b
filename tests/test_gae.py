import torch

from fiberlab.rl.advantages import compute_gae


def test_gae_matches_hand_computed_example():
    # One agent, 3 steps, the episode ends after step 1 (index 1).
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    dones = torch.tensor([[False, True, False]])
    next_value = torch.tensor([2.0])
    # By hand:
    # delta2 = 3 + 0.9*2.0 - 1.5 = 3.3              A2 = 3.3
    # delta1 = 2 + 0 - 1.0 = 1.0 (terminal)          A1 = 1.0 (no carry over the boundary)
    # delta0 = 1 + 0.9*1.0 - 0.5 = 1.4               A0 = 1.4 + 0.9*0.8*1.0 = 2.12
    adv, ret = compute_gae(rewards, values, dones, next_value, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[2.12, 1.0, 3.3]]))
    torch.testing.assert_close(ret, adv + values)


def test_gae_lambda_one_is_discounted_return_minus_value():
    torch.manual_seed(0)
    r = torch.rand(4, 6)
    v = torch.rand(4, 6)
    nv = torch.rand(4)
    dones = torch.zeros(4, 6, dtype=torch.bool)
    adv, ret = compute_gae(r, v, dones, nv, 0.95, 1.0)
    g = nv.clone()
    expected = torch.zeros_like(r)
    for t in reversed(range(6)):
        g = r[:, t] + 0.95 * g
        expected[:, t] = g
    torch.testing.assert_close(ret, expected)
