"""From-scratch audio encoders over log-mel spectrograms (B, n_mels, T) with a frame mask (B, T):

- ``audio_cnn``: 1-D convolutions over time with the mel bins as channels (stride 2 after the first
  layer), per-step channel LayerNorm, optionally a small transformer over the downsampled steps
  (``layers``, default 1, for context beyond the convolutions' receptive field), masked mean.
- ``audio_transformer``: groups of ``patch`` frames -> linear tokens + learned positions -> transformer
  with the frame mask -> masked mean.

Both are exactly padding-invariant: padded frames are zeroed before any computation that could mix
them with real frames, so neither their values nor the amount of padding change the output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InvalidInput
from .base import Encoder, register_encoder
from .layers import MaskedConv1dStack, Transformer, check_heads, ensure_one_real, init_weights, masked_mean


def _inputs(part: dict[str, torch.Tensor], n_mels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-mel, frame mask with absent rows blanked, presence) after checking the shape."""
    x = part["values"]
    if x.dim() != 3 or x.shape[1] != n_mels:
        raise InvalidInput(f"expected log-mel (B, {n_mels}, T), got {tuple(x.shape)}; "
                           f"set n_mels={n_mels} in the audio transform", field="audio")
    B, _, T = x.shape
    present = part.get("mask", torch.ones(B, dtype=torch.bool, device=x.device))
    frames = part.get("pad_mask", torch.ones(B, T, dtype=torch.bool, device=x.device))
    return x, ensure_one_real(frames & present[:, None]), present


def audio_preprocess(n_mels: int, max_frames: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"n_mels": n_mels}
    if max_frames is not None:
        out["max_frames"] = max_frames
    return out


@register_encoder("audio_cnn")
class AudioCNN(Encoder):
    """Conv front-end (time downsampled 2x per layer after the first), then ``layers`` transformer
    blocks over the downsampled steps (0 = none: a bag of local features), then a masked mean."""

    modality = "audio"

    def __init__(self, n_mels: int = 64, channels: list[int] | tuple[int, ...] = (128, 128, 128),
                 layers: int = 1, heads: int = 4, max_frames: int = 2048, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, output_dim: int | None = None):
        super().__init__()
        if n_mels <= 0 or max_frames <= 0 or layers < 0:
            raise ConfigError("n_mels and max_frames must be positive, layers >= 0", field="audio.n_mels")
        self.n_mels, self.max_frames = n_mels, max_frames
        self.convs = MaskedConv1dStack(n_mels, [int(c) for c in channels])
        width = int(channels[-1])
        self.pos_emb: nn.Parameter | None = None
        self.transformer: Transformer | None = None
        if layers:
            check_heads(width, heads, "audio.heads")
            steps = -(-max_frames // 2 ** (len(channels) - 1))
            self.pos_emb = nn.Parameter(torch.zeros(steps, width))
            self.transformer = Transformer(width, layers, heads, mlp_ratio, dropout)
            self.ln_final = nn.LayerNorm(width)
            init_weights(self.transformer)
            nn.init.normal_(self.pos_emb, std=0.02)
        self.head: nn.Module = nn.Linear(width, output_dim) if output_dim else nn.Identity()
        self.output_dim = output_dim or width

    def preprocess(self) -> dict[str, Any]:
        return audio_preprocess(self.n_mels, self.max_frames if self.transformer is not None else None)

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x, frames, present = _inputs(part, self.n_mels)
        if self.transformer is not None and x.shape[-1] > self.max_frames:
            raise InvalidInput(f"{x.shape[-1]} frames exceed max_frames {self.max_frames}; crop in the audio "
                               "transform (max_seconds)", field="audio")
        h, steps = self.convs(x, frames)
        h = h.transpose(1, 2)  # (B, T', C)
        if self.transformer is not None and self.pos_emb is not None:
            h = self.ln_final(self.transformer(h + self.pos_emb[: h.shape[1]], steps))
        pooled = masked_mean(h, steps)
        out: torch.Tensor = self.head(pooled) * present[:, None].to(pooled.dtype)
        return out


@register_encoder("audio_transformer")
class AudioTransformer(Encoder):
    modality = "audio"

    def __init__(self, n_mels: int = 64, patch: int = 4, width: int = 128, layers: int = 2, heads: int = 4,
                 max_frames: int = 512, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 output_dim: int | None = None):
        super().__init__()
        check_heads(width, heads, "audio.width")
        if n_mels <= 0 or patch <= 0 or max_frames <= 0:
            raise ConfigError("n_mels, patch and max_frames must be positive", field="audio.patch")
        self.n_mels, self.patch, self.max_frames = n_mels, patch, max_frames
        self.embed = nn.Linear(n_mels * patch, width)
        self.pos_emb = nn.Parameter(torch.zeros(-(-max_frames // patch), width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, dropout)
        self.ln_final = nn.LayerNorm(width)
        self.head: nn.Module = nn.Linear(width, output_dim) if output_dim else nn.Identity()
        self.output_dim = output_dim or width
        init_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)

    def preprocess(self) -> dict[str, Any]:
        return audio_preprocess(self.n_mels, self.max_frames)

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x, frames, present = _inputs(part, self.n_mels)
        n, mels, frames_in = x.shape
        if frames_in > self.max_frames:
            raise InvalidInput(f"{frames_in} frames exceed max_frames {self.max_frames}; crop in the audio transform",
                               field="audio")
        # Zero padded frames, then pad T to a multiple of patch with zeros: identical either way.
        x = x * frames[:, None, :].to(x.dtype)
        extra = -frames_in % self.patch
        x, frames = F.pad(x, (0, extra)), F.pad(frames, (0, extra))
        steps_n = x.shape[-1] // self.patch
        tokens = x.view(n, mels, steps_n, self.patch).permute(0, 2, 1, 3).reshape(n, steps_n, mels * self.patch)
        steps = frames[:, :: self.patch]  # a token is real iff its first frame is
        h = self.ln_final(self.transformer(self.embed(tokens) + self.pos_emb[:steps_n], steps))
        pooled = masked_mean(h, steps)
        out: torch.Tensor = self.head(pooled) * present[:, None].to(pooled.dtype)
        return out
