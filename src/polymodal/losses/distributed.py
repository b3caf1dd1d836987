"""All-gather that carries gradients, for contrastive losses over the global batch.

``gather_with_grad(x)`` concatenates every rank's ``x`` along dim 0 (rank order). Its backward sums the
incoming gradient over ranks and hands each rank the block of its own rows, so after DDP-style
gradient averaging every parameter gets the gradient of the mean of the rank losses.

Local batch sizes may differ between ranks: sizes are exchanged first, each rank pads to the largest,
gathers, and drops the padding. Without an initialised process group (or with world size 1) every
function here is the identity, so the same code runs in one process.

Every rank must call these functions in the same order (they are collectives), and in the backward
pass every rank must either need the gradient of the gathered tensor or not need it.

Use `feature_group()` under DDP: the gather's backward is a collective, and on DDP's own process group it
could interleave with DDP's gradient buckets in a different order on different ranks (a rank whose batch
lacks a modality marks that tower's bucket ready early) -- a collective mismatch. A separate group keeps
the two streams of collectives independent.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_info(group: Any = None) -> tuple[int, int]:
    """(rank, world_size); (0, 1) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


_FEATURE_GROUP: tuple[Any, Any] | None = None  # (default group it was made for, the feature group)


def feature_group() -> Any:
    """A process group of all ranks reserved for feature gathers (None when not distributed). Created on
    first use, which every rank reaches at the same collective call; remade after re-initialisation."""
    global _FEATURE_GROUP
    if not is_distributed():
        return None
    world = dist.group.WORLD
    if _FEATURE_GROUP is None or _FEATURE_GROUP[0] is not world:
        _FEATURE_GROUP = (world, dist.new_group(backend=dist.get_backend()))
    return _FEATURE_GROUP[1]


def gather_sizes(n: int, device: torch.device | str = "cpu", group: Any = None) -> list[int]:
    """Every rank's local row count, in rank order."""
    _, world = world_info(group)
    if world == 1:
        return [n]
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [int(t.item()) for t in out]


class _AllGatherSum(torch.autograd.Function):
    """Forward: all_gather of equal-shaped tensors, concatenated. Backward: all_reduce(SUM) of the
    gradient, then this rank's block (a reduce-scatter written with all_reduce, which every backend has)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        ctx.rank, world = world_info(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        n = grad.shape[0] // world_info(ctx.group)[1]
        return grad[ctx.rank * n:(ctx.rank + 1) * n], None


def gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Concatenate ``x`` (N_r, ...) from every rank along dim 0, with gradient. Sizes may differ."""
    _, world = world_info(group)
    if world == 1:
        return x
    sizes = gather_sizes(x.shape[0], x.device, group)
    width = max(sizes)
    pad = [0, 0] * (x.dim() - 1) + [0, width - x.shape[0]]
    full: torch.Tensor = _AllGatherSum.apply(F.pad(x, pad), group)  # type: ignore[no-untyped-call]
    return torch.cat([full[r * width: r * width + n] for r, n in enumerate(sizes)], dim=0)


def gather_no_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """As `gather_with_grad` for tensors that need no gradient (masks, labels); any dtype."""
    _, world = world_info(group)
    if world == 1:
        return x
    if x.dtype == torch.bool:  # gloo has no bool collectives
        return gather_no_grad(x.to(torch.uint8), group).bool()
    sizes = gather_sizes(x.shape[0], x.device, group)
    width = max(sizes)
    padded = x.new_zeros((width, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)
