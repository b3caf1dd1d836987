"""One optimizer step's forward and backward, with gradient accumulation.

Generic models return ``(loss, logs)`` from ``model(batch)``; accumulation then averages the
micro-batch losses. Alignment models (``features`` + ``loss_from_features``) get OpenCLIP's contrastive
accumulation instead, so negatives span the whole step batch:

1. features of all k micro-batches without gradient (cached);
2. for each micro-batch j: recompute its features with gradient, splice them into the cache, take the loss
   over all k micro-batches together, backward. The sum of these k backward passes is the gradient of the
   one big-batch loss, because micro-batch j's features only receive gradient in pass j.

Two details make it match one big batch exactly: the torch RNG is rewound before each recompute, so dropout
draws the same masks as in the cached pass; and parameters used only by the loss (temperature, SigLIP
bias) keep the gradient of one pass, not k (OpenCLIP counts it k times).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data.sample import Batch
from ..models.alignment import Features, merge_features


class StepModule(nn.Module):
    """What DDP wraps: the loss of a batch or, with ``cached``, of micro-batch ``index``'s fresh features
    spliced into the cached features of the others. Everything that touches parameters runs inside this
    forward, which DDP needs to see which parameters took part."""

    def __init__(self, model: nn.Module, gather: bool = False):
        super().__init__()
        self.model = model
        self.gather = gather
        self.alignment = hasattr(model, "features") and hasattr(model, "loss_from_features")

    def forward(self, batch: Batch, cached: Sequence[Features] | None = None,
                index: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        m: Any = self.model
        out: tuple[torch.Tensor, dict[str, float]]
        if cached is None:
            out = m(batch, gather=self.gather) if self.alignment else m(batch)
            return out
        parts = list(cached)
        parts[index] = m.features(batch)
        out = m.loss_from_features(merge_features(parts), gather=self.gather)
        return out

    def local_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's loss without any collective (validation on one rank)."""
        m: Any = self.model
        out: tuple[torch.Tensor, dict[str, float]] = m(batch, gather=False) if self.alignment else m(batch)
        return out


def loss_only_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters used by the loss but not by the features: ``model.loss_parameters()`` when defined,
    else the model's own direct parameters (AlignmentModel keeps ``logit_scale``/``logit_bias`` there;
    encoders and projections are submodules)."""
    fn = getattr(model, "loss_parameters", None)
    params = list(fn()) if callable(fn) else list(model.parameters(recurse=False))
    return [p for p in params if p.requires_grad]


def _rng_snapshot(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _rng_restore(snap: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(snap[0])
    if snap[1] is not None:
        torch.cuda.set_rng_state(snap[1], device)


def forward_backward(wrapped: nn.Module, core: StepModule, micro: Sequence[Batch],
                     autocast: Callable[[], AbstractContextManager[Any]], device: torch.device
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Run forward + backward for one step's micro-batches (this rank's); gradients are left in
    ``.grad`` (all-reduced by DDP when ``wrapped`` is DDP). Returns (detached loss, logs)."""
    k = len(micro)

    def sync(j: int) -> AbstractContextManager[Any]:  # DDP all-reduces on the last micro-batch only
        return wrapped.no_sync() if isinstance(wrapped, DDP) and j < k - 1 else nullcontext()

    if k == 1 or not core.alignment:
        total = torch.zeros((), device=device)
        logs: dict[str, float] = {}
        for j, mb in enumerate(micro):
            with sync(j):
                with autocast():
                    loss, logs = wrapped(mb)
                (loss / k).backward()
            total += loss.detach().float() / k
        return total, logs
    return _contrastive_accumulation(wrapped, core, micro, autocast, device, sync)


def _contrastive_accumulation(wrapped: nn.Module, core: StepModule, micro: Sequence[Batch],
                              autocast: Callable[[], AbstractContextManager[Any]], device: torch.device,
                              sync: Callable[[int], AbstractContextManager[Any]]
                              ) -> tuple[torch.Tensor, dict[str, float]]:
    model: Any = core.model
    snaps, cached = [], []
    with torch.no_grad():
        for mb in micro:
            snaps.append(_rng_snapshot(device))
            with autocast():
                cached.append(model.features(mb))
    end = _rng_snapshot(device)
    loss_params = loss_only_parameters(model)
    k = len(micro)
    loss = torch.zeros((), device=device)
    logs: dict[str, float] = {}
    for j, mb in enumerate(micro):
        _rng_restore(snaps[j], device)
        keep = [None if p.grad is None else p.grad.clone() for p in loss_params] if j < k - 1 else None
        with sync(j):
            with autocast():
                loss, logs = wrapped(mb, cached, j)
            loss.backward()
        if keep is not None:  # the loss-only parameters keep the last pass's gradient only
            for p, g in zip(loss_params, keep, strict=True):
                p.grad = g
    _rng_restore(end, device)
    return loss.detach().float(), logs
