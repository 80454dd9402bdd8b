"""DistributedPolicy in a real 2-process gloo group (no mocks)."""
import os
import tempfile
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from fiberlab.config import PolicyConfig
    from fiberlab.policies import build_policy
    from fiberlab.rl.distributed import DistributedPolicy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    policy = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, linear=[8], core_hidden=8))
    policy.encoder.append(nn.BatchNorm1d(8))  # on CPU it must stay a (per-rank) BatchNorm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = DistributedPolicy(policy)
    result = {
        "cpu_bn_kept_with_warning": not any(isinstance(m, nn.SyncBatchNorm) for m in wrapped.modules()) and any("SyncBatchNorm needs CUDA" in str(w.message) for w in caught),
        "no_prefix": all(not k.startswith("module.") for k in wrapped.state_dict()),
        "fallback_config": wrapped.config.name,
        "fallback_method": tuple(wrapped.init_state(5)["h"].shape),
    }
    # different data on each rank; DDP averages the gradients
    torch.manual_seed(100 + rank)
    wrapped.eval()  # SyncBatchNorm's training path needs CUDA; eval uses running statistics
    obs = torch.randn(3, 6, 4)
    logits, values, _ = wrapped(obs)
    (logits.sum() + values.sum()).backward()
    grads = torch.cat([p.grad.flatten() for p in wrapped.parameters() if p.grad is not None])
    gathered = [torch.zeros_like(grads) for _ in range(world)]
    dist.all_gather(gathered, grads)
    result["grads_equal"] = bool(torch.allclose(gathered[0], gathered[1]))
    result["grads_nonzero"] = bool(grads.abs().sum() > 0)
    # a state dict from the wrapper loads into a plain policy and back
    plain = build_policy(PolicyConfig(name="mlp_lstm", obs_shape=[4], num_actions=3, linear=[8], core_hidden=8))
    plain.encoder.append(nn.BatchNorm1d(8))
    plain.load_state_dict(wrapped.state_dict())
    wrapped.load_state_dict(plain.state_dict())
    result["round_trip"] = True
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_distributed_policy_in_two_process_gloo_group(tmp_path):
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_worker, args=(2, init_file, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["cpu_bn_kept_with_warning"] and r["no_prefix"] and r["round_trip"]
        assert r["fallback_config"] == "mlp_lstm" and r["fallback_method"] == (5, 8)
        assert r["grads_equal"] and r["grads_nonzero"]


def test_batchnorm_conversion_is_what_ddp_gets_on_gpu():
    """The conversion DistributedPolicy applies on CUDA (checked here without a GPU)."""
    from fiberlab.rl.distributed import has_batchnorm

    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(m)
    assert has_batchnorm(m) and isinstance(converted[1], nn.SyncBatchNorm)
    assert converted[1].weight is m[1].weight  # same Parameter: an optimizer built before stays valid
    assert not has_batchnorm(nn.Sequential(nn.Linear(3, 4)))
