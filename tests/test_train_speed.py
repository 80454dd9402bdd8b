"""Issue 16's speed levers change how the work is done, never what is computed.

- ``PatchConv2d`` (gather + matmul) equals ``nn.Conv2d`` with the same weights: outputs, input and
  parameter gradients, for contiguous and channels-last inputs, and falls back where it does not apply.
- The trainer runs the PPO update with ``trainer.update_threads`` torch threads and acts with
  ``trainer.torch_threads``; auto (None) picks this process's share of the cores.
"""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from fiberlab.config import PolicyConfig, TrainConfig, apply_overrides
from fiberlab.policies import build_policy
from fiberlab.policies.patch_conv import PatchConv2d
from fiberlab.recipes import get_recipe
from fiberlab.runtime import available_cores, resolve_threads, trainer_threads


def _pair(c_in: int, c_out: int, k: int, s: int, **kw) -> tuple[nn.Conv2d, PatchConv2d]:
    torch.manual_seed(0)
    ref = nn.Conv2d(c_in, c_out, k, s, **kw).double()
    ours = PatchConv2d(c_in, c_out, k, s, **kw).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("c_in,c_out,k,s,hw", [(34, 8, 5, 3, (11, 11)), (3, 5, 3, 1, (3, 3)), (2, 4, 4, 2, (9, 7)), (1, 3, 2, 2, (5, 6))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_patch_conv_equals_conv2d(c_in, c_out, k, s, hw, channels_last):
    ref, ours = _pair(c_in, c_out, k, s)
    x = torch.randn(3, c_in, *hw, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    assert yb.shape == ya.shape
    torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c_in,c_out,k,s,hw", [(34, 8, 5, 3, (11, 11)), (2, 4, 4, 2, (9, 7)), (3, 3, 2, 2, (5, 6))])
def test_patch_conv_strided_copy_path_equals_conv2d(c_in, c_out, k, s, hw, monkeypatch):
    """A channels-last input that needs no gradient (observations) takes the strided-copy gather,
    not index_select; outputs and parameter gradients still equal nn.Conv2d's."""
    ref, ours = _pair(c_in, c_out, k, s)
    x = torch.randn(3, c_in, *hw, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    calls = []
    real = torch.Tensor.index_select
    monkeypatch.setattr(torch.Tensor, "index_select", lambda self, *a: calls.append(a) or real(self, *a))
    ya, yb = ref(x), ours(x)
    assert not calls  # the strided copy ran
    torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)
    ours(x.contiguous())  # NCHW input: the element gather
    assert calls


def test_fast_policy_hands_its_convs_channels_last_observations_and_acts_the_same():
    """fast (patch convs) scales observations into channels-last memory; the logits and values
    equal those of the same weights with plain nn.Conv2d reading NCHW (float64)."""
    cfg = PolicyConfig(name="fast", obs_shape=[34, 11, 11], num_actions=5, obs_scale=[255.0] * 34)
    torch.manual_seed(0)
    fast = build_policy(cfg).double()
    assert fast.channels_last_obs
    plain = build_policy(cfg).double()
    for i, m in enumerate(plain.encoder[0]):
        if isinstance(m, PatchConv2d):  # swap in nn.Conv2d with the same weights
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride).double()
            plain.encoder[0][i] = conv
    plain.channels_last_obs = False
    plain.load_state_dict(fast.state_dict())
    obs = torch.randint(0, 256, (6, 34, 11, 11), dtype=torch.uint8)
    fast.obs_scale, plain.obs_scale = fast.obs_scale.double(), plain.obs_scale.double()
    with torch.no_grad():
        (la, va, _), (lb, vb, _) = fast.step(obs), plain.step(obs)
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-10)
    atari = build_policy(PolicyConfig(name="atari", obs_shape=[1, 105, 80], num_actions=9))
    assert not atari.channels_last_obs  # oneDNN convs keep NCHW
    torch.save(fast, io.BytesIO())  # a whole policy still pickles (torch.save(module))


def test_patch_conv_acting_weight_cache_follows_optimizer_steps():
    """The reordered weight kept while acting is rebuilt after an optimizer step changes the weight."""
    ref, ours = _pair(34, 8, 5, 3)
    x = torch.randn(2, 34, 11, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    for _ in range(2):
        with torch.inference_mode():
            first = ours(x)
            torch.testing.assert_close(ours(x), first)  # the kept weight gives the same output
        ours(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        ref.load_state_dict(ours.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
            assert not torch.allclose(ours(x), first)


@pytest.mark.parametrize("grad", [False, True])
def test_patch_conv_under_bf16_autocast_multiplies_bf16_patches_and_weights(grad):
    """Under bf16 autocast the strided-copy gather writes bf16 patches and the weight is used in
    bf16 (kept while acting, per dtype): the output is the float64 convolution of the bf16-rounded
    input and weight, up to float32 accumulation; float32 calls before and after are unchanged."""
    torch.manual_seed(0)
    ours = PatchConv2d(34, 8, 5, 3)
    x = torch.rand(4, 34, 11, 11).contiguous(memory_format=torch.channels_last)
    rounded = nn.functional.conv2d(x.bfloat16().double(), ours.weight.bfloat16().double(), ours.bias.bfloat16().double(), 3)
    exact = nn.functional.conv2d(x.double(), ours.weight.double(), ours.bias.double(), 3)
    with torch.set_grad_enabled(grad):
        y32 = ours(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = ours(x)
        y32_after = ours(x)
    assert y16.dtype == torch.bfloat16 and y32.dtype == torch.float32
    torch.testing.assert_close(y16.double(), rounded, rtol=8e-3, atol=8e-3)  # one bf16 rounding of the output
    assert (y16.double() - exact).abs().max() > 10 * (y32.double() - exact).abs().max()  # bf16 really ran
    torch.testing.assert_close(y32.double(), exact, rtol=1e-5, atol=1e-5)
    assert torch.equal(y32_after, y32)  # the float32 weight was not replaced by the bf16 one


def test_patch_conv_under_autocast_leaves_float64_in_float64():
    """Autocast casts float32 products only: a float64 input keeps its float64 patches and weight."""
    ref, ours = _pair(34, 8, 5, 3)
    x = torch.randn(2, 34, 11, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref(x).detach(), rtol=1e-12, atol=1e-12)


def test_patch_conv_chains_through_channels_last_without_a_gather():
    """fast's second conv covers the whole 3x3 map: it reads the first conv's channels-last output
    as it lies in memory (no index), and the chain still equals two nn.Conv2d."""
    r1, p1 = _pair(34, 16, 5, 3)
    r2, p2 = _pair(16, 8, 3, 1)
    x = torch.randn(4, 34, 11, 11, dtype=torch.float64)
    h = torch.relu(p1(x))
    assert h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous()
    torch.testing.assert_close(p2(h), r2(torch.relu(r1(x))), rtol=1e-12, atol=1e-12)
    assert p2._index(16, 3, 3, True, h.device) is None  # identity: the memory order is the patch order


def test_patch_conv_falls_back_where_it_does_not_apply():
    ref, ours = _pair(3, 4, 3, 1, padding=1)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x))
    assert not ours._indices  # the plain Conv2d path ran
    meta = PatchConv2d(3, 4, 3, 1)(torch.zeros(2, 3, 6, 6, device="meta"))
    assert meta.shape == (2, 4, 4, 4)


def test_fast_policy_uses_patch_convs_and_atari_does_not():
    fast = build_policy(PolicyConfig(name="fast", obs_shape=[34, 11, 11], num_actions=5))
    atari = build_policy(PolicyConfig(name="atari", obs_shape=[1, 105, 80], num_actions=9))
    assert all(isinstance(m, PatchConv2d) for m in fast.encoder.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, PatchConv2d) for m in atari.encoder.modules())
    # same parameter names as before: old checkpoints load
    assert [n for n, _ in fast.named_parameters()][:4] == ["encoder.0.0.weight", "encoder.0.0.bias", "encoder.0.2.weight", "encoder.0.2.bias"]


def test_thread_counts_auto_and_explicit():
    cores = available_cores()
    assert resolve_threads(3) == 3
    assert resolve_threads(None) == cores
    assert resolve_threads(None, processes_per_node=cores * 2) == 1  # never below 1
    assert trainer_threads(1, None) == (1, cores)  # the default: act on one thread, update on every core
    assert trainer_threads(None, None, processes_per_node=2) == (max(1, cores // 2),) * 2  # DDP ranks split the cores
    assert trainer_threads(2, 1) == (2, 2)  # the update never gets fewer threads than acting


def test_recipes_thread_defaults():
    """Conv recipes act on every core (measured faster); the vector-observation ones on one."""
    assert get_recipe("arena").trainer.torch_threads is None and get_recipe("beam_rider").trainer.torch_threads is None
    assert get_recipe("demo").trainer.torch_threads == 1
    assert apply_overrides(get_recipe("demo"), ["trainer.torch_threads=null"]).trainer.torch_threads is None


def test_trainer_updates_with_update_threads_and_acts_with_torch_threads(tmp_path, monkeypatch):
    """The thread count seen inside ppo_update is update_threads; inside the rollout, torch_threads."""
    import fiberlab.rl.trainer as trainer_mod
    from fiberlab.rl.rollout import RolloutCollector

    seen = {"update": [], "act": []}
    real_update, real_collect = trainer_mod.ppo_update, RolloutCollector.collect

    def spy_update(*a, **k):
        seen["update"].append(torch.get_num_threads())
        return real_update(*a, **k)

    def spy_collect(self, *a, **k):
        seen["act"].append(torch.get_num_threads())
        return real_collect(self, *a, **k)

    monkeypatch.setattr(trainer_mod, "ppo_update", spy_update)
    monkeypatch.setattr(RolloutCollector, "collect", spy_collect)
    before = torch.get_num_threads()
    cfg: TrainConfig = apply_overrides(get_recipe("demo"), [
        f"train_dir={tmp_path}", "run=t", "progress=none", "env.num_envs=4", "trainer.bptt_horizon=8",
        "trainer.minibatch_size=32", "trainer.update_epochs=1", "trainer.total_timesteps=64",
        "trainer.torch_threads=1", "trainer.update_threads=2", "tensorboard=false"])
    try:
        trainer_mod.Trainer(cfg).train()
    finally:
        torch.set_num_threads(before)
    assert seen["update"] == [2, 2] and seen["act"] == [1, 1]


def test_update_threads_is_validated():
    from fiberlab.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="update_threads"):
        apply_overrides(get_recipe("demo"), ["trainer.update_threads=0"])
