"""Early (feature-level) fusion: concatenate the modality vectors in sorted order.

A missing modality is replaced by a learned placeholder vector of its own (one per modality), so the
downstream head sees "image missing" as a distinct, trainable input rather than a silent zero. A row
with no modality gets every placeholder: a learned "all missing" input. ``out_dim`` (optional) adds a
linear projection after the concatenation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import Features, Fusion, Masks, register_fusion


class EarlyFusion(Fusion):
    def __init__(self, dims: Mapping[str, int], out_dim: int | None = None):
        super().__init__(dims)
        # Small random init: a placeholder must not start out equal to an all-zero feature.
        self.placeholders = nn.ParameterDict(
            {m: nn.Parameter(0.02 * torch.randn(d)) for m, d in self.dims.items()})
        width = sum(self.dims.values())
        self.proj = nn.Linear(width, out_dim) if out_dim else None
        self.out_dim = out_dim or width

    def forward(self, features: Features, mask: Masks = None) -> torch.Tensor:
        batch, present = self.resolve(features, mask)
        parts = [self.gather(features, present, m, self.placeholders[m], batch) for m in self.modalities]
        z = torch.cat(parts, dim=-1)
        return self.proj(z) if self.proj is not None else z

    def missing_only_parameters(self) -> set[str]:
        return {f"placeholders.{m}" for m in self.modalities}


@register_fusion("early")
def _early(dims: Mapping[str, int], **cfg: Any) -> EarlyFusion:
    return EarlyFusion(dims, **cfg)
