"""The transform a model needs: library defaults, then a recipe's partial ``data.transform``, then what each
encoder's ``preprocess()`` requires. Training and evaluation build a model's `SampleTransform` through here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._io import deep_merge
from ...errors import ConfigError
from ..sample import MODALITIES
from .compose import SampleTransform


def transform_config(needs: Mapping[str, Mapping[str, Any]], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The SampleTransform dict for a model: library defaults, then the recipe's ``data.transform``
    (partial), then what each encoder requires (``encoder.preprocess()``). Modalities the model lacks are
    dropped. A recipe value that contradicts an encoder's requirement is a ConfigError."""
    cfg = SampleTransform.default().to_dict()
    for m in MODALITIES:
        if m not in needs:
            cfg[m] = None
    cfg = deep_merge(cfg, dict(recipe))
    for m, need in needs.items():
        for path, value in _requirements(m, need, cfg):
            _require(cfg, recipe, path, value)
    return cfg


def _requirements(m: str, need: Mapping[str, Any], cfg: dict[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    """(path in the transform dict, value) pairs an encoder's ``preprocess()`` asks for. Keys named as
    transform fields map directly; ``max_len`` (text), ``max_frames`` (audio), ``frames`` (video, a maximum),
    ``center_crop`` and the older ``image_size`` are translated; informational keys are ignored."""
    if m == "text":
        out: list[tuple[tuple[str, ...], Any]] = []
        tok = need.get("tokenizer")
        if isinstance(tok, dict):
            tok = dict(tok)
            if "kind" not in tok and "type" in tok:
                tok["kind"] = tok.pop("type")
            out.append((("text",), tok))
        if need.get("max_len") is not None:
            out.append((("max_text_len",), int(need["max_len"])))
        return out
    if m == "image":
        return _image_requirements(("image",), need)
    if m == "video":
        out = _image_requirements(("video", "image"), need.get("image") or need)
        if need.get("frames") is not None and cfg.get("video"):
            # the encoder's frame count is a maximum: keep fewer when the transform samples fewer
            out.append((("video", "frames"), min(int(need["frames"]), int(cfg["video"].get("frames", 8)))))
        return out
    if m == "audio":
        return _audio_requirements(need, cfg)
    return []


def _image_requirements(base: tuple[str, ...], need: Mapping[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    size = need.get("size", need.get("image_size"))
    if size is not None:
        out.append(((*base, "size"), int(size)))
    for key in ("mean", "std"):
        if need.get(key) is not None:
            out.append(((*base, key), [float(x) for x in need[key]]))
    if need.get("resize_to") is not None:  # a processor that resizes larger than it crops (256 -> crop 224)
        out.append(((*base, "resize_to"), int(need["resize_to"])))
    if need.get("interpolation") is not None:
        out.append(((*base, "interpolation"), need["interpolation"]))
    if need.get("crop_rounding") is not None:  # torchvision-style center crop (open_clip)
        out.append(((*base, "crop_rounding"), need["crop_rounding"]))
    if need.get("center_crop") is False:
        out.append(((*base, "crop"), "squash"))
    return out


_AUDIO_KEYS = ("sample_rate", "n_mels", "n_fft", "hop_length", "win_length", "f_min", "f_max", "mel_scale",
               "max_seconds", "pad_seconds", "mean", "std")


def _audio_requirements(need: Mapping[str, Any], cfg: dict[str, Any]) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(need.get("audio"), Mapping):  # a checkpoint's own audio features (CLAP): the whole transform
        return [(("audio",), dict(need["audio"]))]
    out: list[tuple[tuple[str, ...], Any]] = [(("audio", k), need[k]) for k in _AUDIO_KEYS
                                              if need.get(k) is not None]
    if need.get("max_frames") is not None and cfg.get("audio"):
        hop = int(need.get("hop_length", cfg["audio"].get("hop_length", 160)))
        sr = int(need.get("sample_rate", cfg["audio"].get("sample_rate", 16000)))
        limit = (int(need["max_frames"]) - 1) * hop / sr  # T = 1 + n // hop frames (centred STFT)
        current = cfg["audio"].get("max_seconds")
        out.append((("audio", "max_seconds"), limit if current is None else min(float(current), limit)))
    return out


def _require(cfg: dict[str, Any], recipe: Mapping[str, Any], path: tuple[str, ...], value: Any) -> None:
    given: Any = recipe
    for p in path:
        given = given.get(p) if isinstance(given, Mapping) else None
    if given is not None and given != value and not (path[-1] == "max_seconds" and given <= value):
        raise ConfigError(f"is {given!r} but the model's encoder needs {value!r}",
                          field="data.transform." + ".".join(path))
    node = cfg
    for p in path[:-1]:
        if node.get(p) is None:
            return  # the modality was switched off in the recipe
        node = node[p]
    node[path[-1]] = value


__all__ = ["transform_config"]
