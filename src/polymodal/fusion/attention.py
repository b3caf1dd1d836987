"""Gated modality attention: project each modality to a common width, score it, and take the
softmax-weighted sum over the modalities the row *has*.

``h_m = W_m x_m``, ``s_m = v . tanh(U h_m + c)`` (one scorer shared by all modalities),
``a = softmax(s)`` over present modalities only (missing ones get exactly zero weight, not a small one),
output ``sum_m a_m h_m``. A row with no modality gets a learned "all missing" vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import Features, Fusion, Masks, register_fusion


class AttentionFusion(Fusion):
    def __init__(self, dims: Mapping[str, int], hidden: int = 64):
        super().__init__(dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.dims.items()})
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.none = nn.Parameter(0.02 * torch.randn(hidden))
        self.out_dim = hidden

    def forward(self, features: Features, mask: Masks = None) -> torch.Tensor:
        batch, present = self.resolve(features, mask)
        names = [m for m in self.modalities if m in features]
        if not names:
            return self.none.expand(batch, -1)
        # A missing row's values never enter a layer (they may be NaN); the 0 stand-in gets weight 0 below.
        hs = [self.proj[m](torch.where(present[m].unsqueeze(-1), features[m], torch.zeros_like(features[m])))
              for m in names]
        h = torch.stack(hs, dim=1)  # (B, M', H)
        has = torch.stack([present[m] for m in names], dim=1)  # (B, M')
        s = self.score(h).squeeze(-1).masked_fill(~has, float("-inf"))
        any_present = has.any(dim=1, keepdim=True)
        # Rows with nothing present would softmax over all -inf (NaN); give them finite scores, then
        # replace their output with the learned "none" vector.
        a = torch.softmax(torch.where(any_present, s, torch.zeros_like(s)), dim=1)
        fused = (a.unsqueeze(-1) * h).sum(dim=1)
        return torch.where(any_present, fused, self.none.to(fused.dtype))

    def missing_only_parameters(self) -> set[str]:
        return {"none"}


@register_fusion("attention")
def _attention(dims: Mapping[str, int], **cfg: Any) -> AttentionFusion:
    return AttentionFusion(dims, **cfg)
