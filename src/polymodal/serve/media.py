"""Media that crosses the HTTP boundary: base64 in, decoded with size limits, errors naming the field. What the
server stores of an item (thumbnails, audio clips) is `polymodal.index.media.MediaStore`.

Decoding is two steps so that a small file declaring a huge image (or hours of audio) costs nothing: ``check_*``
reads the header, checks the per-file limits and charges the request's `RequestBudget`; the decoder it returns
runs only once every input of the request has passed."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data.codec import AUDIO_FORMATS, IMAGE_FORMATS, audio_info, decode_audio, decode_image, image_size
from ..data.sample import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..errors import InvalidInput

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.ASCII)


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 8 * 2**20         # one decoded media file
    max_pixels: int = 4096 * 4096      # image, or all frames of a video together
    max_seconds: float = 60.0          # audio duration
    max_frames: int = 64               # video frames
    # long side / short side of an image (of each frame of a film strip): models scale the short side up to
    # their input size before the crop, so a 1 x 1,000,000 image of a few KiB would cost gigabytes
    max_aspect: float = 64.0
    # what one request may decode in all (a small file can declare a huge image or hours of silence)
    max_request_pixels: int = 2 * 4096 * 4096   # images and video frames together
    max_request_samples: int = 32 * 2**20       # audio samples, frames x channels (128 MiB as float32)


class RequestBudget:
    """What one request may still decode. Every media input is charged from its header, and all of a request's
    inputs are checked before any of them is decoded."""

    def __init__(self, limits: MediaLimits):
        self.limits = limits
        self.pixels = 0
        self.samples = 0

    def charge_pixels(self, n: int, what: str, field: str) -> None:
        self.pixels += n
        if self.pixels > self.limits.max_request_pixels:
            raise InvalidInput(f"{what} brings this request to {self.pixels} decoded pixels, beyond the limit of "
                               f"{self.limits.max_request_pixels} pixels per request", field=field)

    def charge_samples(self, n: int, what: str, field: str) -> None:
        self.samples += n
        if self.samples > self.limits.max_request_samples:
            raise InvalidInput(f"{what} brings this request to {self.samples} decoded audio samples, beyond the "
                               f"limit of {self.limits.max_request_samples} samples per request", field=field)


def b64_bytes(value: object, field: str, max_bytes: int) -> bytes:
    """Bytes of a base64 string (a ``data:...;base64,`` prefix is allowed, as browsers produce)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("expected a non-empty base64 string", field=field)
    text = _DATA_URL.sub("", value, count=1)
    if len(text) * 3 // 4 > max_bytes + 3:
        raise InvalidInput(f"media is larger than the limit of {max_bytes} bytes", field=field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("not valid base64 (expected the file's bytes as standard base64, optionally after a "
                           "'data:...;base64,' prefix)", field=field) from None


# Each check_* reads only the header, checks the limits, charges the request's budget and returns the decoder.

def _check_image(value: object, field: str, limits: MediaLimits, budget: RequestBudget,
                 frames: int = 1) -> Callable[[], np.ndarray]:
    """``frames`` > 1: a film strip of that many frames stacked vertically (each frame's shape is checked)."""
    data = b64_bytes(value, field, limits.max_bytes)
    w, h = image_size(data, "request", field, IMAGE_FORMATS)
    if w * h > limits.max_pixels:
        raise InvalidInput(f"image of {w}x{h} pixels exceeds the limit of {limits.max_pixels} pixels", field=field)
    if h % frames:
        raise InvalidInput(f"film strip of height {h} cannot hold {frames} frames", field=field)
    fw, fh = w, h // frames
    ratio = max(fw, fh) / max(min(fw, fh), 1)
    if ratio > limits.max_aspect:
        what = f"image of {w}x{h} pixels" if frames == 1 else f"film strip of {frames} frames of {fw}x{fh} pixels"
        raise InvalidInput(f"{what} has an aspect ratio (long side / short side) of {_num(ratio)}, beyond the "
                           f"limit of {_num(limits.max_aspect)} (max_aspect)", field=field)
    budget.charge_pixels(w * h, f"an image of {w}x{h} pixels", field)
    return lambda: decode_image(data, "request", field, IMAGE_FORMATS)


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def check_image(value: object, field: str, limits: MediaLimits, budget: RequestBudget) -> Callable[[], np.ndarray]:
    """An image file as base64 -> the decoder of its uint8 HxWx3 array."""
    return _check_image(value, field, limits, budget)


def check_audio(value: object, field: str, limits: MediaLimits,
                budget: RequestBudget) -> Callable[[], tuple[np.ndarray, int]]:
    """An audio file as base64 -> the decoder of its (float32 mono waveform, sample rate)."""
    data = b64_bytes(value, field, limits.max_bytes)
    info = audio_info(data, "request", field, AUDIO_FORMATS)
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidInput(f"sample rate {info.sample_rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]",
                           field=field)
    if info.frames > limits.max_seconds * info.sample_rate:
        raise InvalidInput(f"audio of {info.frames / info.sample_rate:.1f} s exceeds the limit of "
                           f"{limits.max_seconds:g} s", field=field)
    budget.charge_samples(info.frames * info.channels, f"audio of {info.frames} frames x {info.channels} "
                          "channels", field)

    def decode() -> tuple[np.ndarray, int]:
        # never more frames than the header declared (and was charged for), whatever the stream holds
        wave, sr = decode_audio(data, "request", field, max_frames=info.frames)
        if not np.isfinite(wave).all():
            raise InvalidInput("waveform contains NaN or inf", field=field)
        return wave, sr

    return decode


def check_video(value: object, frames: object, field: str, limits: MediaLimits,
                budget: RequestBudget) -> Callable[[], np.ndarray]:
    """A film strip (T frames stacked vertically in one image, as polymodal stores video) as base64 -> the
    decoder of its uint8 TxHxWx3 array."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= limits.max_frames:
        raise InvalidInput(f"frames must be an int in [1, {limits.max_frames}], got {frames!r}", field=f"{field}.frames")
    decode_strip = _check_image(value, f"{field}.data", limits, budget, frames)

    def decode() -> np.ndarray:
        strip = decode_strip()
        return strip.reshape(frames, strip.shape[0] // frames, strip.shape[1], 3)

    return decode
