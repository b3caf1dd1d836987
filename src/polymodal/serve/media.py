"""Media that crosses the HTTP boundary: base64 in, decoded with size limits, errors naming the field. What the
server stores of an item (thumbnails, audio clips) is `polymodal.index.media.MediaStore`."""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from ..data.codec import decode_audio, decode_image
from ..data.sample import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..errors import InvalidInput

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.ASCII)


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 8 * 2**20         # one decoded media file
    max_pixels: int = 4096 * 4096      # image, or all frames of a video together
    max_seconds: float = 60.0          # audio duration
    max_frames: int = 64               # video frames


def b64_bytes(value: object, field: str, max_bytes: int) -> bytes:
    """Bytes of a base64 string (a ``data:...;base64,`` prefix is allowed, as browsers produce)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("expected a non-empty base64 string", field=field)
    text = _DATA_URL.sub("", value, count=1)
    if len(text) * 3 // 4 > max_bytes + 3:
        raise InvalidInput(f"media is larger than the limit of {max_bytes} bytes", field=field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"not valid base64 ({exc})", field=field) from None


def image_from_b64(value: object, field: str, limits: MediaLimits) -> np.ndarray:
    data = b64_bytes(value, field, limits.max_bytes)
    _check_image_header(data, field, limits.max_pixels)
    return decode_image(data, source="request", field=field)


def _check_image_header(data: bytes, field: str, max_pixels: int) -> None:
    """Read only the header, so an oversized image is refused before its pixels are decompressed."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"cannot decode image ({exc.__class__.__name__}: {exc})", field=field) from None
    if w * h > max_pixels:
        raise InvalidInput(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels", field=field)


def audio_from_b64(value: object, field: str, limits: MediaLimits) -> tuple[np.ndarray, int]:
    """A wav/flac/ogg file as base64 -> (float32 mono waveform, sample rate), duration checked from the header."""
    data = b64_bytes(value, field, limits.max_bytes)
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # soundfile raises several types for unreadable data
        raise InvalidInput(f"cannot decode audio ({exc.__class__.__name__}: {exc})", field=field) from None
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise InvalidInput(f"sample rate {info.samplerate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]",
                           field=field)
    if info.frames > limits.max_seconds * info.samplerate:
        raise InvalidInput(f"audio of {info.frames / info.samplerate:.1f} s exceeds the limit of "
                           f"{limits.max_seconds:g} s", field=field)
    wave, sr = decode_audio(data, source="request", field=field)
    if not np.isfinite(wave).all():
        raise InvalidInput("waveform contains NaN or inf", field=field)
    return wave, sr


def video_from_b64(value: object, frames: object, field: str, limits: MediaLimits) -> np.ndarray:
    """A film strip (T frames stacked vertically in one image, as polymodal stores video) -> uint8 TxHxWx3."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= limits.max_frames:
        raise InvalidInput(f"frames must be an int in [1, {limits.max_frames}], got {frames!r}", field=f"{field}.frames")
    strip = image_from_b64(value, f"{field}.data", limits)
    if strip.shape[0] % frames:
        raise InvalidInput(f"film strip of height {strip.shape[0]} cannot hold {frames} frames", field=f"{field}.data")
    return strip.reshape(frames, strip.shape[0] // frames, strip.shape[1], 3)
