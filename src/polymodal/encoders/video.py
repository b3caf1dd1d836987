"""From-scratch video encoder ``video_frames`` over (B, T, 3, H, W) with a frame mask (B, T).

Each real frame goes through a per-frame image encoder built inside (any registered image encoder,
``image_cnn`` by default); padded frames are never encoded. The frame vectors are then combined over
time by ``temporal``:
  - ``"mean"``: masked mean over the real frames (order-free, cheapest);
  - ``"transformer"`` (default): learned frame positions + a small transformer with the frame mask,
    then a masked mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InvalidInput
from . import image as _image  # noqa: F401  (registers the image encoders used per frame)
from .base import ENCODERS, Encoder, create_encoder, register_encoder
from .layers import Transformer, check_heads, ensure_one_real, init_weights, masked_mean

_TEMPORAL = ("transformer", "mean")


def _frame_encoder(name: str, kwargs: dict[str, Any] | None) -> Encoder:
    if name not in ENCODERS:
        raise ConfigError(f"unknown frame encoder {name!r} (known: {', '.join(ENCODERS.names())})",
                          field="video.frame_encoder")
    try:
        enc = create_encoder(name, **(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"bad arguments for frame encoder {name!r}: {exc}", field="video.frame") from None
    if enc.modality != "image":
        raise ConfigError(f"frame encoder {name!r} is a {enc.modality} encoder, need an image encoder",
                          field="video.frame_encoder")
    return enc


@register_encoder("video_frames")
class VideoFrames(Encoder):
    modality = "video"

    def __init__(self, frame_encoder: str = "image_cnn", frame: dict[str, Any] | None = None,
                 temporal: str = "transformer", layers: int = 1, heads: int = 4, max_frames: int = 8,
                 mlp_ratio: float = 4.0, output_dim: int | None = None):
        super().__init__()
        if temporal not in _TEMPORAL:
            raise ConfigError(f"temporal must be one of {_TEMPORAL}, got {temporal!r}", field="video.temporal")
        self.frames = _frame_encoder(frame_encoder, frame)
        width = self.frames.output_dim
        self.max_frames, self.temporal = max_frames, temporal
        self.pos_emb: nn.Parameter | None = None
        self.transformer: Transformer | None = None
        if temporal == "transformer":
            check_heads(width, heads, "video.heads")
            self.pos_emb = nn.Parameter(torch.zeros(max_frames, width))
            self.transformer = Transformer(width, layers, heads, mlp_ratio)
            self.ln_final = nn.LayerNorm(width)
            init_weights(self.transformer)
            nn.init.normal_(self.pos_emb, std=0.02)
        self.head: nn.Module = nn.Linear(width, output_dim) if output_dim else nn.Identity()
        self.output_dim = output_dim or width

    def preprocess(self) -> dict[str, Any]:
        """As `VideoTransform.to_dict()`: the frame count and the per-frame image transform."""
        return {"frames": self.max_frames, "image": self.frames.preprocess()}

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        x = part["values"]
        if x.dim() != 5:
            raise InvalidInput(f"expected video (B, T, 3, H, W), got {tuple(x.shape)}", field="video")
        n, n_frames = x.shape[:2]
        if n_frames > self.max_frames:
            raise InvalidInput(f"{n_frames} frames exceed max_frames {self.max_frames}; sample fewer frames",
                               field="video")
        present = part.get("mask", torch.ones(n, dtype=torch.bool, device=x.device))
        real = part.get("pad_mask", torch.ones(n, n_frames, dtype=torch.bool, device=x.device))
        real = ensure_one_real(real & present[:, None])
        frames = x[real]  # (N_real_frames, 3, H, W): padded frames are never encoded
        ones = torch.ones(frames.shape[0], dtype=torch.bool, device=x.device)
        per_frame = self.frames({"values": frames, "mask": ones})
        h = per_frame.new_zeros(n, n_frames, per_frame.shape[-1])
        h[real] = per_frame
        if self.transformer is not None and self.pos_emb is not None:
            h = self.ln_final(self.transformer(h + self.pos_emb[:n_frames], real))
        pooled = masked_mean(h, real)
        out: torch.Tensor = self.head(pooled) * present[:, None].to(pooled.dtype)
        return out
