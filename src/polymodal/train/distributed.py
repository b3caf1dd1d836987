"""Process-group setup from the torchrun environment, rank helpers, and the step sampler.

Under ``torchrun`` (``WORLD_SIZE > 1``) the process group uses NCCL when CUDA exists and gloo otherwise.
A single process needs no process group at all.

`StepSampler` decides, for every optimizer step, which samples each rank trains on. ``batch_size`` is the
GLOBAL number of samples per step: the same recipe trains on the same global batches whatever the number
of processes or the accumulation factor, which is what makes 1-process and N-process runs comparable.
Each epoch is a seeded permutation of the data; step ``s`` takes permuted positions
``[s*G, (s+1)*G)`` (``G`` = global batch) and position ``i`` goes to rank ``i % world``, so ranks hold
disjoint, equal shares and DDP stays in lockstep. The remainder of an epoch (< G samples) is dropped.
The sampler is a pure function of (seed, step): resuming needs no sampler state.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError, InvalidInput


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call created the process group (so cleanup() may destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"expected an integer, got {raw!r}", field=name) from None


def init_distributed(device: str | None = None, timeout_s: float = 600.0) -> DistEnv:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun) and join the process group when
    WORLD_SIZE > 1. ``device``: "cpu", "cuda" or None (CUDA when available)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise InvalidInput("device 'cuda' asked for, but CUDA is not available", field="device")
    dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count())) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if use_cuda:
            kwargs["device_id"] = dev
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
        owns = True
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev, owns_group=owns)


def cleanup(env: DistEnv | None = None) -> None:
    """Destroy the process group if ``env`` created it (or, without ``env``, if one exists)."""
    if env is not None and not env.owns_group:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in one process). Detached."""
    out = value.detach().clone().float()
    if env.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= env.world
    return out


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (small, JSON-like or tensors), in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


class StepSampler:
    """Indices of the micro-batches each rank trains on at a given step (see the module doc)."""

    def __init__(self, n: int, batch_size: int, world: int = 1, rank: int = 0, accum_freq: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if batch_size % (world * accum_freq):
            raise ConfigError(f"batch_size {batch_size} must be a multiple of processes x accum_freq "
                              f"({world} x {accum_freq})", field="train.batch_size")
        if n < batch_size:
            raise InvalidInput(f"the data has {n} samples, fewer than one batch ({batch_size}); lower "
                               "train.batch_size or add data", field="train.batch_size")
        self.n, self.batch_size, self.world, self.rank = n, batch_size, world, rank
        self.accum_freq, self.seed, self.shuffle = accum_freq, seed, shuffle
        self.micro = batch_size // (world * accum_freq)
        self.steps_per_epoch = n // batch_size
        self._perm_epoch = -1
        self._perm = np.arange(n)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            self._perm_epoch = epoch
        return self._perm

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch(self, step: int) -> np.ndarray:
        """All ranks' sample indices of ``step``, in permuted order."""
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.batch_size
        return self._permutation(epoch)[start:start + self.batch_size]

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's ``accum_freq`` micro-batches of ``micro`` indices each."""
        mine = self.global_batch(step)[self.rank::self.world]
        return [[int(i) for i in mine[j * self.micro:(j + 1) * self.micro]] for j in range(self.accum_freq)]
