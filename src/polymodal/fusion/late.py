"""Late (decision-level) fusion: one classifier head per modality, logits combined over the present ones.

``weighting="mean"`` averages the logits of the modalities a row has; ``weighting="learned"`` learns one
weight per modality (softmax of a learned score), renormalised over the modalities the row has. A row
with no modality gets learned "all missing" logits (effectively a learned class prior).

The output is already class logits: ``produces_logits = True`` and ``out_dim == num_classes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import Features, Fusion, Masks, register_fusion


class LateFusion(Fusion):
    produces_logits = True

    def __init__(self, dims: Mapping[str, int], num_classes: int, hidden: int | None = None,
                 weighting: str = "mean"):
        super().__init__(dims)
        if weighting not in ("mean", "learned"):
            raise ConfigError(f"weighting must be 'mean' or 'learned', got {weighting!r}", field="weighting")
        self.weighting = weighting
        self.heads = nn.ModuleDict({m: _head(d, num_classes, hidden) for m, d in self.dims.items()})
        self.scores = nn.Parameter(torch.zeros(len(self.modalities))) if weighting == "learned" else None
        self.none_logits = nn.Parameter(torch.zeros(num_classes))
        self.out_dim = num_classes

    def forward(self, features: Features, mask: Masks = None) -> torch.Tensor:
        batch, present = self.resolve(features, mask)
        logits, keep = [], []
        for m in self.modalities:
            if m not in features:
                continue
            # The head never sees a missing row's values (they may be garbage or NaN); its output there is
            # given zero weight below.
            x = torch.where(present[m].unsqueeze(-1), features[m], torch.zeros_like(features[m]))
            logits.append(self.heads[m](x))
            keep.append(present[m])
        if not logits:
            return self.none_logits.expand(batch, -1)
        stacked = torch.stack(logits, dim=1)  # (B, M', C)
        has = torch.stack(keep, dim=1).to(stacked.dtype)  # (B, M')
        if self.scores is not None:
            idx = [self.modalities.index(m) for m in self.modalities if m in features]
            s = self.scores[idx]
            has = has * torch.exp(s - s.max())  # softmax numerator; renormalised per row below
        denom = has.sum(dim=1, keepdim=True)
        fused = (stacked * has.unsqueeze(-1)).sum(dim=1) / denom.clamp_min(1e-12)
        return torch.where(denom > 0, fused, self.none_logits.to(fused.dtype))

    def missing_only_parameters(self) -> set[str]:
        names = {"none_logits"}
        if self.scores is not None and len(self.modalities) == 1:
            names.add("scores")  # one weight renormalised over itself is always 1
        return names


def _head(d: int, num_classes: int, hidden: int | None) -> nn.Module:
    if not hidden:
        return nn.Linear(d, num_classes)
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, num_classes))


@register_fusion("late")
def _late(dims: Mapping[str, int], **cfg: Any) -> LateFusion:
    if "num_classes" not in cfg:
        raise ConfigError("late fusion needs num_classes (its output is logits)", field="num_classes")
    return LateFusion(dims, **cfg)
