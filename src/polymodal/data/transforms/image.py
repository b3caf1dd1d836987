"""Image transform: uint8 ``H x W x 3`` -> normalized float32 ``(3, size, size)``.

Resizing uses PIL (bicubic by default, antialiased when shrinking), the same path as OpenAI CLIP / Hugging Face's
``CLIPImageProcessor``: resize the shorter side to ``resize_to`` (default ``size``; longer side
``int(resize_to * long / short)``), center crop ``size`` (top = ``(h - size) // 2``), scale to [0, 1], then
``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from ...errors import ConfigError, InvalidInput

HALF_MEAN = HALF_STD = (0.5, 0.5, 0.5)  # maps [0, 1] to [-1, 1]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's ImageNet-like statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
Box = tuple[int, int, int, int]  # (left, top, right, bottom) in source pixels, PIL convention

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict[str, Any], where: str) -> T:
    """Build a transform dataclass from JSON; unknown keys are an error (a typo must not pass silently)."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a JSON object, got {type(d).__name__}", field=where)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; expected some of {sorted(names)}", field=where)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**values)


def config_to_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready dict of a transform dataclass (tuples become lists)."""
    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, tuple | list) else v


@dataclass(frozen=True)
class ImageTransform:
    """Resize + center crop + normalize, with optional train-time augmentation.

    ``crop``: ``"center"`` keeps the aspect ratio (resize shorter side, crop the middle); ``"squash"`` resizes
    straight to a square. ``resize_to``: the side the image is resized to before the ``size`` center crop (the
    shorter side for ``"center"``, both sides for ``"squash"``), as processors that resize to 256 and crop 224;
    ``None`` means ``size``. With ``resize=False`` the image is only center-cropped (it must be at least
    ``size`` on both sides).

    Augmentation runs only when a ``torch.Generator`` is passed to ``__call__``; without one the transform is the
    deterministic evaluation path, so one config serves training and evaluation. ``random_crop``: a random box of
    ``crop_scale`` of the area and aspect ratio in [3/4, 4/3] (as torchvision's RandomResizedCrop), resized to
    ``size x size``. ``hflip``: mirror with probability 1/2 (off by default: it swaps "left"/"right" in captions).
    """

    size: int = 64
    resize: bool = True
    crop: str = "center"
    mean: tuple[float, ...] = HALF_MEAN
    std: tuple[float, ...] = HALF_STD
    interpolation: str = "bicubic"
    resize_to: int | None = None
    random_crop: bool = False
    crop_scale: tuple[float, ...] = (0.8, 1.0)
    hflip: bool = False
    crop_rounding: str = "floor"  # center-crop offset: (h - size) // 2, or "round": torchvision's round((h - size) / 2)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"size must be a positive int, got {self.size!r}", field="image.size")
        if self.resize_to is not None and (not isinstance(self.resize_to, int) or self.resize_to < self.size):
            raise ConfigError(f"resize_to must be an int >= size ({self.size}) or null, got {self.resize_to!r}",
                              field="image.resize_to")
        if self.crop not in ("center", "squash"):
            raise ConfigError(f"crop must be 'center' or 'squash', got {self.crop!r}", field="image.crop")
        if self.crop_rounding not in ("floor", "round"):
            raise ConfigError(f"crop_rounding must be 'floor' or 'round', got {self.crop_rounding!r}",
                              field="image.crop_rounding")
        if self.interpolation not in _RESAMPLE:
            raise ConfigError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}",
                              field="image.interpolation")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3:
                raise ConfigError(f"{name} needs 3 values (RGB), got {v!r}", field=f"image.{name}")
        if min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {self.std!r}", field="image.std")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale!r}",
                              field="image.crop_scale")

    # ------------------------------------------------------------------ public
    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = _check_image(image)
        box, flip = self.plan(h, w, generator)
        return self.apply(image, box, flip)

    def plan(self, h: int, w: int, generator: torch.Generator | None = None) -> tuple[Box | None, bool]:
        """Draw the augmentation for an ``h x w`` image: (random crop box or None, flip). Video uses one plan for
        all frames of a clip so the crop does not jitter over time."""
        if generator is None:
            return None, False
        box = _random_box(h, w, self.crop_scale, generator) if self.random_crop else None
        flip = bool(self.hflip and torch.rand((), generator=generator).item() < 0.5)
        return box, flip

    def apply(self, image: np.ndarray, box: Box | None = None, flip: bool = False) -> torch.Tensor:
        """The deterministic part: geometry (given an optional crop box), scale, normalize."""
        h, w = _check_image(image)
        pil = Image.fromarray(np.ascontiguousarray(image))
        resample = _RESAMPLE[self.interpolation]
        s = self.size
        if box is not None:
            pil = pil.resize((s, s), resample, box=box)
        elif not self.resize:
            if h < s or w < s:
                raise InvalidInput(f"image {h}x{w} is smaller than size {s} and resize=False", field="image")
            pil = _center_crop(pil, s, self.crop_rounding)
        else:
            r = s if self.resize_to is None else self.resize_to
            if self.crop == "squash":
                new_w = new_h = r
            else:
                new_long = int(r * max(h, w) / min(h, w))
                new_w, new_h = (r, new_long) if w <= h else (new_long, r)
            if (new_w, new_h) != (w, h):
                pil = pil.resize((new_w, new_h), resample)
            if (new_w, new_h) != (s, s):
                pil = _center_crop(pil, s, self.crop_rounding)
        x = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        if flip:
            x = x.flip(-1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageTransform:
        return config_from_dict(cls, d, "image")


def _check_image(image: Any) -> tuple[int, int]:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInput(f"expected a uint8 H x W x 3 array, got {got}", field="image")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInput(f"image is empty: {image.shape}", field="image")
    return int(image.shape[0]), int(image.shape[1])


def _center_crop(pil: Image.Image, s: int, rounding: str = "floor") -> Image.Image:
    w, h = pil.size
    if rounding == "round":  # torchvision's CenterCrop (open_clip): int(round(d / 2)), ties to even
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    else:
        top, left = (h - s) // 2, (w - s) // 2
    return pil.crop((left, top, left + s, top + s))


def _random_box(h: int, w: int, scale: tuple[float, ...], g: torch.Generator) -> Box:
    """torchvision's RandomResizedCrop sampling: up to 10 tries, then the largest centered box."""
    area = h * w
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        u = torch.rand(2, generator=g, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        ratio = math.exp(log_lo + (log_hi - log_lo) * u[1])
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return left, top, left + cw, top + ch
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return left, top, left + side, top + side
