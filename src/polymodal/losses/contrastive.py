"""Contrastive losses between two sets of L2-normalised embeddings whose row i are a matching pair.

``scale`` is the temperature as a multiplier, ``exp(log_scale)`` (the model stores and clamps the log).

- `clip_loss`: CLIP InfoNCE, ``(CE(s * a @ b.T, arange) + CE(s * b @ a.T, arange)) / 2``.
- `siglip_loss`: SigLIP, ``-logsigmoid(y * (s * a @ b.T + bias)).sum() / B`` with y = +1 on the
  diagonal and -1 elsewhere.

Both take optional "local loss" arguments: the local rows ``a``, ``b`` are scored against gathered
columns ``a_all``/``b_all``; ``labels`` gives each local row's partner column and ``denom`` the
normaliser. `clip_loss_gathered` / `siglip_loss_gathered` fill them in from the process group: rank r's
labels are offset by the rows of the ranks before it, and ``denom = N_global / world_size`` (= the local B
when ranks hold equal batches), so the mean of the rank losses equals the single-process loss on the
concatenated batch, and so do the DDP-averaged gradients, for equal or unequal local batch sizes.
SigLIP's local loss covers the local rows against every rank's columns at once (the positive terms sit
in the own-rank block, other ranks' blocks contribute negatives only), the same sum as the ring
implementation of the SigLIP paper.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import gather_sizes, gather_with_grad, world_info

Scalar = torch.Tensor | float


def _defaults(a: torch.Tensor, labels: torch.Tensor | None, denom: Scalar | None
              ) -> tuple[torch.Tensor, Scalar]:
    if labels is None:
        labels = torch.arange(a.shape[0], device=a.device)
    return labels, float(a.shape[0]) if denom is None else denom


def clip_loss(a: torch.Tensor, b: torch.Tensor, scale: Scalar, *, a_all: torch.Tensor | None = None,
              b_all: torch.Tensor | None = None, labels: torch.Tensor | None = None,
              denom: Scalar | None = None) -> torch.Tensor:
    """Symmetric InfoNCE. Single process: ``clip_loss(a, b, scale)``, the mean over the B rows."""
    a_all = a if a_all is None else a_all
    b_all = b if b_all is None else b_all
    labels, denom = _defaults(a, labels, denom)
    a_to_b = F.cross_entropy(scale * a @ b_all.T, labels, reduction="sum")
    b_to_a = F.cross_entropy(scale * b @ a_all.T, labels, reduction="sum")
    return (a_to_b + b_to_a) / (2 * denom)


def siglip_loss(a: torch.Tensor, b: torch.Tensor, scale: Scalar, bias: Scalar, *,
                b_all: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                denom: Scalar | None = None) -> torch.Tensor:
    """Sigmoid loss over every (row of a, column of b) pair, divided by the number of rows."""
    b_all = b if b_all is None else b_all
    labels, denom = _defaults(a, labels, denom)
    logits = scale * a @ b_all.T + bias
    signs = -torch.ones_like(logits)
    signs[torch.arange(a.shape[0], device=a.device), labels] = 1.0
    return -F.logsigmoid(signs * logits).sum() / denom


def _local_layout(n: int, device: torch.device, group: Any) -> tuple[torch.Tensor, float]:
    """This rank's partner columns in the gathered batch, and the loss normaliser N_global / W."""
    rank, world = world_info(group)
    sizes = gather_sizes(n, device, group)
    offset = sum(sizes[:rank])
    return torch.arange(n, device=device) + offset, sum(sizes) / world


def clip_loss_gathered(a: torch.Tensor, b: torch.Tensor, scale: Scalar, group: Any = None) -> torch.Tensor:
    """Distributed local-loss CLIP: local rows x gathered columns (identity in one process)."""
    labels, denom = _local_layout(a.shape[0], a.device, group)
    return clip_loss(a, b, scale, a_all=gather_with_grad(a, group), b_all=gather_with_grad(b, group),
                     labels=labels, denom=denom)


def siglip_loss_gathered(a: torch.Tensor, b: torch.Tensor, scale: Scalar, bias: Scalar,
                         group: Any = None) -> torch.Tensor:
    """Distributed SigLIP: local rows of ``a`` x every rank's ``b`` (identity in one process)."""
    labels, denom = _local_layout(a.shape[0], a.device, group)
    return siglip_loss(a, b, scale, bias, b_all=gather_with_grad(b, group), labels=labels, denom=denom)


class ClipLoss(nn.Module):
    """Thin module over `clip_loss`; ``gather=True`` uses the distributed local loss."""

    def __init__(self, gather: bool = False):
        super().__init__()
        self.gather = gather

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: Scalar) -> torch.Tensor:
        return clip_loss_gathered(a, b, scale) if self.gather else clip_loss(a, b, scale)


class SigLipLoss(nn.Module):
    """Thin module over `siglip_loss`; ``gather=True`` uses the distributed local loss."""

    def __init__(self, gather: bool = False):
        super().__init__()
        self.gather = gather

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: Scalar, bias: Scalar) -> torch.Tensor:
        if self.gather:
            return siglip_loss_gathered(a, b, scale, bias)
        return siglip_loss(a, b, scale, bias)
