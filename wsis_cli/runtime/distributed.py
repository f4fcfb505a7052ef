"""Data-parallel training under ``torchrun`` or ``srun``, and a no-op single-process context otherwise.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (and the rendezvous address); a plain ``srun`` sets
``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, which are mapped onto the same roles (the batch script
exports ``MASTER_ADDR``/``MASTER_PORT``). Each process drives one GPU (``cuda:LOCAL_RANK``); NCCL on GPUs,
Gloo on CPUs (which is how the tests run two ranks on one machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from wsis_cli.runtime.device import resolve_device
from wsis_cli.runtime.log import get_logger

log = get_logger("distributed")


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return None


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        """``DistributedDataParallel`` around ``model`` when distributed, else ``model`` itself."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, **kwargs)

    def sampler(self, dataset: Dataset, *, shuffle: bool, seed: int, drop_last: bool = False) -> Sampler:
        """Each rank's share of ``dataset`` (call ``set_epoch`` on it every epoch when shuffling)."""
        if self.enabled:
            return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=shuffle,
                                      seed=seed, drop_last=drop_last)
        if shuffle:
            return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        return SequentialSampler(dataset)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks in place (and return it); identity when single-process."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` when single-process.

        A collective: every rank must call it at the same point.
        """
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
            self.enabled = False


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group the launcher describes, or return a single-process context.

    ``device`` is the user's ``--device``; under a launcher with GPUs each rank takes ``cuda:LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("distributed: rank %d of %d on %s (%s)", rank, world, dev, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, enabled=True)
