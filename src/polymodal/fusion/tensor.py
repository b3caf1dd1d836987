"""Tensor fusion (TFN) and its low-rank factorisation (LMF).

Both append a constant 1 to each modality vector, ``z_m = [x_m; 1]``, so the fused tensor holds every
unimodal, bimodal, ... term. A missing modality contributes ``z_m = [0; 1]``: its vector part is gated off
and only the appended 1 remains, so the row keeps exactly the interaction terms of the modalities it has
(this is masking by construction: the 1-slot carries a learned "modality missing" term). A row with no
modality gives ``W[:, last] + b``: a learned "all missing" output.

``tensor``: explicit outer product ``z_1 (x) z_2 (x) ...`` (size prod(D_m + 1)) then a linear layer; use
``proj_dim`` to shrink each modality first. ``low_rank_tensor``: the same map with a rank-``rank``
weight, ``sum_r w_r prod_m (z_m W_m^r) + b``. The factors ``W_m`` are registered ``nn.Parameter``s
(MultiBench keeps them in a plain list, so they are never trained or saved).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import Features, Fusion, Masks, register_fusion

MAX_TENSOR_SIZE = 1 << 22  # flattened outer-product width beyond which TFN's weight is unreasonable


class _AppendOne(Fusion):
    """Shared front end: optional per-modality projection, masking, and ``[x; 1]``."""

    def __init__(self, dims: Mapping[str, int], proj_dim: int | None):
        super().__init__(dims)
        self.proj = (nn.ModuleDict({m: nn.Linear(d, proj_dim) for m, d in self.dims.items()})
                     if proj_dim else None)
        self.widths = {m: (proj_dim or d) + 1 for m, d in self.dims.items()}

    def augmented(self, features: Features, mask: Masks) -> list[torch.Tensor]:
        """``[x_m; 1]`` for present rows, ``[0; 1]`` for missing ones, in sorted modality order."""
        batch, present = self.resolve(features, mask)
        out = []
        for m in self.modalities:
            device = self._device()
            x = self.gather(features, present, m, torch.zeros(self.dims[m], device=device), batch)
            if self.proj is not None:
                # project, then gate again: the projection's bias must not leak into a missing row
                zero = torch.zeros(self.widths[m] - 1, device=device)
                x = torch.where(present[m].unsqueeze(-1), self.proj[m](x), zero)
            out.append(torch.cat([x, x.new_ones(batch, 1)], dim=-1))
        return out


class TensorFusion(_AppendOne):
    def __init__(self, dims: Mapping[str, int], out_dim: int = 64, proj_dim: int | None = None):
        super().__init__(dims, proj_dim)
        size = math.prod(self.widths.values())
        if size > MAX_TENSOR_SIZE:
            raise ConfigError(f"outer product has {size} entries (> {MAX_TENSOR_SIZE}); set proj_dim or use "
                              "low_rank_tensor", field="proj_dim")
        self.post = nn.Linear(size, out_dim)
        self.out_dim = out_dim

    def forward(self, features: Features, mask: Masks = None) -> torch.Tensor:
        zs = self.augmented(features, mask)
        t = zs[0]
        for z in zs[1:]:
            t = (t.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)  # (B, a*b), row-major like torch.kron
        out: torch.Tensor = self.post(t)
        return out


class LowRankTensorFusion(_AppendOne):
    def __init__(self, dims: Mapping[str, int], out_dim: int = 64, rank: int = 4, proj_dim: int | None = None):
        super().__init__(dims, proj_dim)
        self.rank = rank
        self.factors = nn.ParameterDict()
        for m in self.modalities:
            w = torch.empty(rank, self.widths[m], out_dim)
            nn.init.xavier_normal_(w)
            self.factors[m] = nn.Parameter(w)
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        nn.init.xavier_normal_(self.fusion_weights)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.out_dim = out_dim

    def forward(self, features: Features, mask: Masks = None) -> torch.Tensor:
        zs = self.augmented(features, mask)
        prod: torch.Tensor | None = None
        for m, z in zip(self.modalities, zs, strict=True):
            f = torch.einsum("bd,rdo->rbo", z, self.factors[m])  # (rank, B, out)
            prod = f if prod is None else prod * f
        assert prod is not None
        return torch.einsum("r,rbo->bo", self.fusion_weights[0], prod) + self.bias


@register_fusion("tensor")
def _tensor(dims: Mapping[str, int], **cfg: Any) -> TensorFusion:
    return TensorFusion(dims, **cfg)


@register_fusion("low_rank_tensor")
def _low_rank(dims: Mapping[str, int], **cfg: Any) -> LowRankTensorFusion:
    return LowRankTensorFusion(dims, **cfg)
