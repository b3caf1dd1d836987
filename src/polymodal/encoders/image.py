"""From-scratch image encoders over normalised float images (B, 3, H, W):

- ``image_vit``: patch embedding + learned positions (+ optional CLS token) -> transformer -> pooled.
- ``image_cnn``: strided 3x3 conv stages with GroupNorm -> global average pool. GroupNorm (not
  BatchNorm) keeps every sample's output independent of the rest of the batch.

Rows whose ``mask`` is False (sample without an image) come out as zeros.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidInput
from .base import Encoder, register_encoder
from .layers import PatchEmbed, Transformer, check_heads, init_weights

# Per-channel normalisation the pipeline applies before these encoders (maps [0, 1] to [-1, 1]).
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def image_preprocess(image_size: int) -> dict[str, Any]:
    """Keys named as `polymodal.data.transforms.ImageTransform` fields."""
    return {"size": image_size, "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)}


def check_image(x: torch.Tensor, image_size: int) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != image_size or x.shape[3] != image_size:
        raise InvalidInput(f"expected images (B, 3, {image_size}, {image_size}), got {tuple(x.shape)}; "
                           "resize in the image transform", field="image")


def _present(part: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return part.get("mask", torch.ones(x.shape[0], dtype=torch.bool, device=x.device))


@register_encoder("image_vit")
class ImageViT(Encoder):
    modality = "image"

    def __init__(self, image_size: int = 32, patch_size: int = 8, width: int = 128, layers: int = 2,
                 heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0, pool: str = "mean",
                 output_dim: int | None = None):
        super().__init__()
        check_heads(width, heads, "image.width")
        if pool not in ("mean", "cls"):
            raise ConfigError(f"pool must be 'mean' or 'cls', got {pool!r}", field="image.pool")
        self.image_size, self.pool = image_size, pool
        self.patch = PatchEmbed(image_size, patch_size, width)
        n_tokens = self.patch.num_patches + (pool == "cls")
        self.cls = nn.Parameter(torch.zeros(1, 1, width)) if pool == "cls" else None
        self.pos_emb = nn.Parameter(torch.zeros(1, n_tokens, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, dropout)
        self.ln_final = nn.LayerNorm(width)
        self.head: nn.Module = nn.Linear(width, output_dim) if output_dim else nn.Identity()
        self.output_dim = output_dim or width
        init_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    def preprocess(self) -> dict[str, Any]:
        return image_preprocess(self.image_size)

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x = part["values"]
        check_image(x, self.image_size)
        tokens = self.patch(x)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        h = self.ln_final(self.transformer(tokens + self.pos_emb))
        pooled = h[:, 0] if self.pool == "cls" else h.mean(dim=1)
        out: torch.Tensor = self.head(pooled) * _present(part, x)[:, None].to(pooled.dtype)
        return out


@register_encoder("image_cnn")
class ImageCNN(Encoder):
    modality = "image"

    def __init__(self, image_size: int = 32, channels: list[int] | tuple[int, ...] = (32, 64, 128),
                 groups: int = 8, output_dim: int | None = None):
        super().__init__()
        chans = [int(c) for c in channels]
        if not chans or any(c <= 0 or c % groups for c in chans):
            raise ConfigError(f"channels {chans} must be positive multiples of groups ({groups})",
                              field="image.channels")
        self.image_size = image_size
        layers: list[nn.Module] = []
        prev = 3
        for c in chans:  # each stage halves the resolution
            layers += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.GroupNorm(groups, c), nn.GELU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(groups, c), nn.GELU()]
            prev = c
        self.body = nn.Sequential(*layers)
        self.head: nn.Module = nn.Linear(prev, output_dim) if output_dim else nn.Identity()
        self.output_dim = output_dim or prev

    def preprocess(self) -> dict[str, Any]:
        return image_preprocess(self.image_size)

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x = part["values"]
        check_image(x, self.image_size)
        pooled = self.body(x).mean(dim=(2, 3))
        out: torch.Tensor = self.head(pooled) * _present(part, x)[:, None].to(pooled.dtype)
        return out
