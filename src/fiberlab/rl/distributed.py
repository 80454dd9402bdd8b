"""torchrun support: one process per GPU (NCCL) or per CPU worker (gloo); rank 0 logs."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this machine (torchrun's LOCAL_WORLD_SIZE): they share its cores

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank (used for the run name and resume decision)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. until rank 0 has cleared a run that starts over)."""
    if info.enabled:
        dist.barrier()


def all_reduce_mean(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    # NCCL reduces CUDA tensors only; gloo, CPU tensors
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class DistributedPolicy(DistributedDataParallel):
    """DDP that still looks like the policy it wraps.

    - Attributes and methods DDP does not have fall back to the wrapped policy
      (``wrapper.init_state(...)``, ``wrapper.config``, ``wrapper.core``).
    - ``state_dict`` / ``load_state_dict`` have no ``module.`` prefix, so a checkpoint written from
      a DDP run loads into a plain policy and back.
    - BatchNorm layers become SyncBatchNorm on GPUs, so batch statistics are computed over all
      ranks (PyTorch's SyncBatchNorm runs only on CUDA: on CPU they stay per-rank BatchNorm, with
      a warning).
    """

    def __init__(self, module: nn.Module, **kwargs: object) -> None:
        if has_batchnorm(module):
            if next(module.parameters()).is_cuda:
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            else:
                warnings.warn("BatchNorm stays per-rank on CPU: PyTorch's SyncBatchNorm needs CUDA", stacklevel=2)
        super().__init__(module, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)
