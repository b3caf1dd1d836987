"""Cross-modal transformer fusion (MulT-style, mid-level).

Each modality's sequence ``(B, L_m, D_m)`` (a ``(B, D_m)`` vector is a sequence of length 1) is projected
to ``d_model`` and given sinusoidal positions. For every *target* modality t (sorted) and every other
*source* s, a cross-modal block lets t's positions attend to s's (queries from t, keys/values from s).
The per-source results are concatenated along features, passed through a self-attention transformer
over t's positions, and mean-pooled over t's real positions. The pooled vectors of all targets are
concatenated: ``out_dim = M * max(M - 1, 1) * d_model``.

Missing data:
- padding (``pad_mask[m]`` (B, L_m), True = real) is excluded as keys and from pooling;
- a source missing from a row is skipped for that row (its cross block is the identity there: the row
  keeps the target's own sequence on that slot);
- a target missing from a row (or with no real position) is replaced by a learned placeholder vector;
  a row with no modality therefore gets the concatenated placeholders, a learned "all missing" output.
Values of missing rows and padded positions are replaced before any layer sees them, so they cannot
influence anything (not even through NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidInput
from .base import Features, Fusion, Masks, register_fusion


class CrossBlock(nn.Module):
    """Pre-norm cross-attention + feed-forward, with residuals (queries from the target)."""

    def __init__(self, d: int, heads: int, dropout: float, ffn_mult: int):
        super().__init__()
        self.ln_q, self.ln_kv, self.ln_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Linear(ffn_mult * d, d), nn.Dropout(dropout))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_ignore: torch.Tensor) -> torch.Tensor:
        kv_n = self.ln_kv(kv)
        a, _ = self.attn(self.ln_q(q), kv_n, kv_n, key_padding_mask=kv_ignore, need_weights=False)
        x = q + a
        out: torch.Tensor = x + self.ff(self.ln_ff(x))
        return out


class CrossModalFusion(Fusion):
    accepts_sequences = True

    def __init__(self, dims: Mapping[str, int], d_model: int = 32, heads: int = 4, cross_layers: int = 1,
                 self_layers: int = 1, dropout: float = 0.0, ffn_mult: int = 2):
        super().__init__(dims)
        if d_model % heads:
            raise ConfigError(f"d_model ({d_model}) must be divisible by heads ({heads})", field="d_model")
        self.d_model = d_model
        n_src = max(len(self.modalities) - 1, 1)
        width = n_src * d_model
        self.proj = nn.ModuleDict({m: nn.Linear(d, d_model) for m, d in self.dims.items()})
        self.cross = nn.ModuleDict({
            f"{s}_to_{t}": nn.ModuleList([CrossBlock(d_model, heads, dropout, ffn_mult) for _ in range(cross_layers)])
            for t in self.modalities for s in self.modalities if s != t})
        layer = nn.TransformerEncoderLayer(width, heads, ffn_mult * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.self_attn = nn.ModuleDict({
            t: nn.TransformerEncoder(layer, self_layers, enable_nested_tensor=False) for t in self.modalities})
        self.placeholders = nn.ParameterDict({t: nn.Parameter(0.02 * torch.randn(width)) for t in self.modalities})
        self.out_dim = len(self.modalities) * width

    def forward(self, features: Features, mask: Masks = None,
                pad_mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        batch, present = self.resolve(features, mask)
        seqs: dict[str, torch.Tensor] = {}
        ignore: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            if m in features:
                seqs[m], ignore[m], present[m] = self._embed(m, features[m], present[m], (pad_mask or {}).get(m))
        outs = []
        for t in self.modalities:
            if t not in seqs:
                outs.append(self.placeholders[t].expand(batch, -1))
                continue
            h_t = seqs[t]
            slots = []
            for s in self.modalities:
                if s == t:
                    continue
                if s not in seqs:
                    slots.append(h_t)
                    continue
                c = h_t
                blocks: nn.ModuleList = self.cross[f"{s}_to_{t}"]  # type: ignore[assignment]
                for block in blocks:
                    c = block(c, seqs[s], ignore[s])
                slots.append(torch.where(present[s].view(-1, 1, 1), c, h_t))
            y = self.self_attn[t](torch.cat(slots, dim=-1) if slots else h_t, src_key_padding_mask=ignore[t])
            real = (~ignore[t]).unsqueeze(-1).to(y.dtype)
            pooled = (y * real).sum(1) / real.sum(1).clamp_min(1.0)
            outs.append(torch.where(present[t].unsqueeze(-1), pooled, self.placeholders[t].to(pooled.dtype)))
        return torch.cat(outs, dim=-1)

    def missing_only_parameters(self) -> set[str]:
        return {f"placeholders.{t}" for t in self.modalities}

    def _embed(self, m: str, x: torch.Tensor, present: torch.Tensor,
               pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project + positions. Returns (sequence, key-ignore mask, presence updated for empty rows)."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        b, length, _ = x.shape
        if pad is None:
            pad = torch.ones(b, length, dtype=torch.bool, device=x.device)
        elif tuple(pad.shape) != (b, length):
            raise InvalidInput(f"pad_mask must be {(b, length)}, got {tuple(pad.shape)}", field=f"pad_mask.{m}")
        pad = pad.to(torch.bool)
        present = present & pad.any(dim=1)  # a row with no real position has nothing to offer
        real = present.unsqueeze(1) & pad
        x = torch.where(real.unsqueeze(-1), x, torch.zeros_like(x))
        h = self.proj[m](x) + _positions(length, self.d_model, x.device, x.dtype)
        # Missing rows attend over (and are) their zeroed stand-ins, so no row's keys are all ignored
        # (that would softmax to NaN); their outputs are replaced afterwards.
        ignore = ~real & present.unsqueeze(1)
        return h, ignore, present


def _positions(length: int, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d // 2])
    return pe.to(dtype)


@register_fusion("crossmodal")
def _crossmodal(dims: Mapping[str, int], **cfg: Any) -> CrossModalFusion:
    return CrossModalFusion(dims, **cfg)
