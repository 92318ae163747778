"""torch.distributed set-up as torchrun launches it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), and the
reductions the trainer needs. Everything degrades to the single-process case when not launched that way."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_gather_objects", "all_reduce_sum", "barrier", "init_distributed", "state_digest"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when torchrun started us (gloo on CPU, nccl on CUDA).

    The group's keys live under a prefix of torchrun's attempt (``TORCHELASTIC_RESTART_COUNT``):
    torchrun keeps one key-value store for all attempts, so without it the workers of a restart
    could read the addresses of the killed workers (gloo: "Connection refused")."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or "0"
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"chanattn/attempt{attempt}/", store),
                                rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a short list of numbers over the ranks (float64)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def state_digest(module: torch.nn.Module) -> str:
    """A SHA-256 of every parameter and buffer's bytes: equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
