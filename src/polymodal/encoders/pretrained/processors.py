"""What a Hugging Face image processor (``preprocessor_config.json``) asks of the data pipeline, as `ImageTransform`
fields: sizes, crop, interpolation, and its rescale / normalisation folded into one affine ``mean`` / ``std``."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def image_preprocess(processor: Any) -> dict[str, Any]:
    """The image transform a checkpoint expects, read from its image processor (preprocessor_config.json), as
    `ImageTransform` fields: resize to ``resize_to`` -- the shorter side (``center_crop``: aspect kept, CLIP) or
    both sides (a square, SigLIP) -- then center-crop ``size`` when the processor crops (e.g. 256 -> 224)."""
    size = dict(processor.size or {})
    crop = dict(getattr(processor, "crop_size", None) or {}) if getattr(processor, "do_center_crop", False) else {}
    if "shortest_edge" in size:
        resize = int(size["shortest_edge"])
    else:
        resize = _square(size, "size")
    return {
        "size": _square(crop, "crop_size") if crop else resize,
        "center_crop": "shortest_edge" in size,
        "resize_to": resize,
        "interpolation": _RESAMPLE.get(int(getattr(processor, "resample", 3)), "bicubic"),
        **pixel_affine(processor),
    }


def pixel_affine(processor: Any) -> dict[str, list[float]]:
    """``mean``/``std`` on [0, 1] pixels that give the processor's values: rescale by ``rescale_factor`` (minus 1
    with EfficientNet's ``rescale_offset``: ALIGN's x / 127.5 - 1), ``(x - mean) / std`` when ``do_normalize``,
    then EfficientNet's ``include_top`` (x / std again). Every step is affine per channel, so one (mean, std)
    on x / 255 expresses it; for plain 1/255 rescaling the processor's own numbers are returned unchanged."""
    mean, std = _triple(processor.image_mean), _triple(processor.image_std)
    top = std if getattr(processor, "include_top", False) else [1.0] * 3
    if not getattr(processor, "do_normalize", True):
        mean, std = [0.0] * 3, [1.0] * 3
    factor = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
    offset = 1.0 if getattr(processor, "rescale_offset", False) else 0.0
    scale = 255.0 * factor  # processor value = (x/255 * scale - offset - mean) / (std * top)
    if scale == 1.0 and offset == 0.0:
        return {"mean": mean, "std": [s * t for s, t in zip(std, top, strict=True)]}
    return {"mean": [(offset + m) / scale for m in mean],
            "std": [s * t / scale for s, t in zip(std, top, strict=True)]}


def _triple(v: Any) -> list[float]:
    values = [float(x) for x in v] if isinstance(v, list | tuple) else [float(v)] * 3
    if len(values) != 3:
        raise ConfigError(f"expected 3 channel values, got {values}", field="image_mean/image_std")
    return values


def _square(hw: dict[str, Any], name: str) -> int:
    h, w = int(hw["height"]), int(hw["width"])
    if h != w:
        raise ConfigError(f"the image processor's {name} is {h}x{w}; only square sizes are supported", field=name)
    return h


__all__ = ["image_preprocess", "pixel_affine"]
