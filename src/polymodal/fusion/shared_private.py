"""Shared-private fusion (MISA).

Each modality is projected to a common width, ``u_m = LayerNorm(ReLU(P_m x_m))``; then
``h_c^m = sigmoid(W_c u_m)`` with one ``W_c`` for all modalities (modality-invariant) and
``h_p^m = sigmoid(W_p^m u_m)`` (modality-specific). The 2M vectors ``[h_p^m, h_c^m]`` (sorted modality
order) go through a small transformer encoder as tokens and are concatenated: ``out_dim = 2 M hidden``.

Missing data: a missing modality's two tokens are learned placeholders, excluded as keys from attention
(so they read the present modalities but nothing reads them); a row with no modality attends over its
placeholders only — a learned "all missing" output.

Auxiliary losses of the last forward (:meth:`aux_losses`: raw ``sim``, ``diff``, ``recon``;
:meth:`aux_loss`: weighted, 0.3 diff + 1.0 sim + 1.0 recon by default) use present rows only; see
:mod:`polymodal.losses.misa`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..losses.misa import misa_losses, weighted_total
from .base import Features, Fusion, Masks, register_fusion


class SharedPrivateFusion(Fusion):
    def __init__(self, dims: Mapping[str, int], hidden: int = 64, heads: int = 4, layers: int = 1,
                 dropout: float = 0.0, diff_weight: float = 0.3, sim_weight: float = 1.0,
                 recon_weight: float = 1.0):
        super().__init__(dims)
        self.project = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.LayerNorm(hidden)) for m, d in self.dims.items()})
        self.shared = nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid())
        self.private = nn.ModuleDict({m: nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid()) for m in self.modalities})
        self.recon = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in self.modalities})
        self.placeholders = nn.ParameterDict({m: nn.Parameter(0.02 * torch.randn(2, hidden)) for m in self.modalities})
        layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.weights = {"diff": diff_weight, "sim": sim_weight, "recon": recon_weight}
        self.out_dim = 2 * len(self.modalities) * hidden
        self._aux: dict[str, torch.Tensor] = {}

    def forward(self, features: Features, mask: Masks = None) -> torch.Tensor:
        batch, present = self.resolve(features, mask)
        shared, private, recon, orig = {}, {}, {}, {}
        tokens, ignore = [], []
        for m in self.modalities:
            ph = self.placeholders[m].unsqueeze(0).expand(batch, -1, -1)  # (B, 2, H)
            if m in features:
                x = torch.where(present[m].unsqueeze(-1), features[m], torch.zeros_like(features[m]))
                u = self.project[m](x)
                orig[m], shared[m], private[m] = u, self.shared(u), self.private[m](u)
                recon[m] = self.recon[m](shared[m] + private[m])
                pair = torch.stack([private[m], shared[m]], dim=1)
                ph = torch.where(present[m].view(-1, 1, 1), pair, ph)
            tokens.append(ph)
            ignore.append((~present[m]).unsqueeze(1).expand(-1, 2))
        seq = torch.cat(tokens, dim=1)  # (B, 2M, H)
        ign = torch.cat(ignore, dim=1)
        ign = ign & ~ign.all(dim=1, keepdim=True)  # an all-missing row attends over its placeholders
        out: torch.Tensor = self.transformer(seq, src_key_padding_mask=ign).flatten(1)
        self._aux = misa_losses(shared, private, recon, orig, present) if shared else {}
        return out

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return dict(self._aux)

    def aux_loss(self) -> torch.Tensor | None:
        return weighted_total(self._aux, self.weights) if self._aux else None

    def missing_only_parameters(self) -> set[str]:
        return {f"placeholders.{m}" for m in self.modalities}


@register_fusion("shared_private")
def _shared_private(dims: Mapping[str, int], **cfg: Any) -> SharedPrivateFusion:
    return SharedPrivateFusion(dims, **cfg)
