"""Small building blocks shared by the from-scratch encoders: a pre-norm transformer that honours a
padding mask, a patch embedding, masked pooling and a 1-D conv stack that is exactly padding-invariant.

Convention everywhere: ``mask`` is a BoolTensor with True = real position (the `Batch.pad_mask` convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def check_heads(width: int, heads: int, field: str) -> None:
    if width <= 0 or heads <= 0 or width % heads:
        raise ConfigError(f"width ({width}) must be a positive multiple of heads ({heads})", field=field)


def init_weights(module: nn.Module) -> None:
    """CLIP/ViT-style init: small normal weights, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def ensure_one_real(mask: torch.Tensor) -> torch.Tensor:
    """Rows without any real position (an absent sample) attend to position 0, so attention over an
    all-masked row cannot produce NaN. Such rows are zeroed by the encoder afterwards."""
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        mask = mask.clone()
        mask[empty, 0] = True
    return mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, L, D) over positions where ``mask`` (B, L) is True; 0 for rows with none."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def last_real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, L, D) at the last True position of each row of ``mask`` (the EOS token for text)."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    idx = torch.where(mask, pos, torch.zeros_like(pos)).amax(dim=1)
    return x[torch.arange(x.shape[0], device=x.device), idx]


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm -> attention -> residual, LayerNorm -> MLP -> residual)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        # Boolean attn_mask: True = this key takes part. Padded keys are invisible to every query.
        attn_mask = None if mask is None else mask[:, None, None, :]
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        x = x + self.out(a.transpose(1, 2).reshape(B, L, D))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches -> ``width``-d tokens (B, N, width), via a strided conv."""

    def __init__(self, image_size: int, patch_size: int, width: int, in_chans: int = 3):
        super().__init__()
        if patch_size <= 0 or image_size % patch_size:
            raise ConfigError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})",
                              field="patch_size")
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x).flatten(2).transpose(1, 2)
        return out


class ChannelNorm1d(nn.Module):
    """LayerNorm over channels at each time step of (B, C, T). Unlike BatchNorm/GroupNorm it never mixes
    time steps, so padded frames cannot leak into the statistics of real ones."""

    def __init__(self, channels: int):
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.ln(x.transpose(1, 2)).transpose(1, 2)
        return out


class MaskedConv1dStack(nn.Module):
    """Conv1d (kernel 3) -> ChannelNorm -> GELU layers over (B, C, T), the first at stride 1, the rest at
    stride 2. Padded steps are zeroed before every conv, exactly as the conv's own zero padding, so the
    output at real steps does not depend on the padded values nor on how much padding there is."""

    def __init__(self, in_channels: int, channels: list[int]):
        super().__init__()
        if not channels or any(c <= 0 for c in channels):
            raise ConfigError(f"channels must be a non-empty list of positive ints, got {channels}",
                              field="channels")
        dims = [in_channels, *channels]
        self.strides = [1] + [2] * (len(channels) - 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(dims[i], dims[i + 1], kernel_size=3, stride=self.strides[i], padding=1)
            for i in range(len(channels)))
        self.norms = nn.ModuleList(ChannelNorm1d(c) for c in channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns features (B, C_out, T') and the mask (B, T') of the real output steps."""
        for conv, norm, stride in zip(self.convs, self.norms, self.strides, strict=True):
            x = x * mask[:, None, :].to(x.dtype)
            # Output step i sees input steps <= s*i+1; it is real iff input step s*i is real.
            mask = mask[:, ::stride]
            x = F.gelu(norm(conv(x)))
        return x * mask[:, None, :].to(x.dtype), mask
