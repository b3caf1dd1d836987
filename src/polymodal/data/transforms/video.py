"""Video transform: uint8 ``T x H x W x 3`` -> float32 ``(frames, 3, S, S)`` (frame sampling + per-frame image
transform). One augmentation plan (crop box, flip) is drawn per clip so the crop does not jitter between frames."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, InvalidInput
from .image import ImageTransform, config_from_dict

FRAME_MODES = ("uniform", "random")


def sample_frame_indices(n_frames: int, target: int, mode: str = "uniform",
                         generator: torch.Generator | None = None) -> list[int]:
    """``target`` frame indices from a clip of ``n_frames``, in time order.

    The clip is split into ``target`` equal segments; ``"uniform"`` takes the middle frame of each
    (``floor((2i + 1) * n / 2T)``), ``"random"`` one random frame per segment (TSN-style, needs a generator).
    A clip shorter than ``target`` gets some frames repeated.
    """
    if n_frames < 1 or target < 1:
        raise InvalidInput(f"need n_frames >= 1 and target >= 1, got {n_frames}, {target}", field="video")
    if mode == "uniform":
        return [(2 * i + 1) * n_frames // (2 * target) for i in range(target)]
    if mode == "random":
        if generator is None:
            raise ConfigError("mode 'random' needs a torch.Generator", field="video.mode")
        out = []
        for i in range(target):
            lo = i * n_frames // target
            hi = max(lo + 1, (i + 1) * n_frames // target)
            out.append(lo + int(torch.randint(0, hi - lo, (), generator=generator)))
        return out
    raise ConfigError(f"mode must be one of {FRAME_MODES}, got {mode!r}", field="video.mode")


@dataclass(frozen=True)
class VideoTransform:
    """Sample ``frames`` frames and apply ``image`` to each.

    ``mode``: frame sampling for training (``"random"`` draws only when a generator is passed; evaluation always
    uses ``"uniform"``). ``short``: a clip with fewer frames than ``frames`` is kept as is (``"keep"``: `collate`
    pads it and its ``pad_mask`` marks the real frames) or has frames repeated up to ``frames`` (``"repeat"``).
    """

    frames: int = 8
    image: ImageTransform = field(default_factory=ImageTransform)
    mode: str = "uniform"
    short: str = "keep"

    def __post_init__(self) -> None:
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ConfigError(f"frames must be a positive int, got {self.frames!r}", field="video.frames")
        if self.mode not in FRAME_MODES:
            raise ConfigError(f"mode must be one of {FRAME_MODES}, got {self.mode!r}", field="video.mode")
        if self.short not in ("keep", "repeat"):
            raise ConfigError(f"short must be 'keep' or 'repeat', got {self.short!r}", field="video.short")
        if not isinstance(self.image, ImageTransform):
            raise ConfigError("image must be an ImageTransform", field="video.image")

    def indices(self, n_frames: int, generator: torch.Generator | None = None) -> list[int]:
        if n_frames < self.frames and self.short == "keep":
            return list(range(n_frames))
        mode = self.mode if generator is not None else "uniform"
        return sample_frame_indices(n_frames, self.frames, mode, generator)

    def __call__(self, video: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            got = f"{video.dtype} {video.shape}" if isinstance(video, np.ndarray) else type(video).__name__
            raise InvalidInput(f"expected a uint8 T x H x W x 3 array, got {got}", field="video")
        if min(video.shape) == 0:
            raise InvalidInput(f"video is empty: {video.shape}", field="video")
        idx = self.indices(int(video.shape[0]), generator)
        box, flip = self.image.plan(int(video.shape[1]), int(video.shape[2]), generator)
        return torch.stack([self.image.apply(video[i], box, flip) for i in idx])

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "image": self.image.to_dict(), "mode": self.mode, "short": self.short}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoTransform:
        if not isinstance(d, dict):
            raise ConfigError(f"expected a JSON object, got {type(d).__name__}", field="video")
        d = dict(d)
        image = ImageTransform.from_dict(d.pop("image", {}))
        # Validate the remaining keys against the dataclass, then attach the parsed image transform.
        plain = config_from_dict(cls, d, "video")
        return dataclasses.replace(plain, image=image)
