"""Media that crosses the HTTP boundary: base64 in (decoded with size limits, errors naming the field) and the
server's own media store out (thumbnails and audio clips of items upserted with raw media).

The store only ever holds files the server wrote itself, named by collection and integer id; nothing a client
sends is used as a path."""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from ..data.codec import decode_audio, decode_image, encode_audio, encode_image
from ..data.sample import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..errors import InvalidInput

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.ASCII)
MEDIA_KINDS = {"image": ("png", "image/png"), "audio": ("flac", "audio/flac")}


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


# ---------------------------------------------------------------------------------------------- stored media

def thumbnail_png(image: np.ndarray, size: int) -> bytes:
    """A PNG no larger than size x size (aspect kept); small images are kept as they are."""
    im = Image.fromarray(image, mode="RGB")
    if max(im.size) > size:
        im.thumbnail((size, size), Image.Resampling.BICUBIC)
    return encode_image(np.asarray(im))


def audio_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    return encode_audio(np.clip(wave, -1.0, 1.0), sample_rate)


def media_files(image: np.ndarray | None, audio: tuple[np.ndarray, int] | None, video: np.ndarray | None,
                thumb: int) -> dict[str, bytes]:
    files = {}
    if image is not None:
        files["image"] = thumbnail_png(image, thumb)
    elif video is not None:  # the first frame stands for the video
        files["image"] = thumbnail_png(video[0], thumb)
    if audio is not None:
        files["audio"] = audio_flac(*audio)
    return files


class MediaStore:
    """``<collection dir>/media/<id>.<kind>.<ext>``: thumbnails (PNG) and audio (FLAC) the server wrote."""

    FOLDER = "media"

    def __init__(self, collection_dir: Path):
        self.folder = Path(collection_dir) / self.FOLDER

    def path(self, item_id: int, kind: str) -> Path:
        ext = MEDIA_KINDS[kind][0]  # KeyError for an unknown kind: callers validate kind first
        return self.folder / f"{int(item_id)}.{kind}.{ext}"

    def find(self, item_id: int, kind: str | None = None) -> tuple[Path, str] | None:
        """(path, media type) of a stored file of this id; the first existing kind when kind is None."""
        for k in [kind] if kind else list(MEDIA_KINDS):
            p = self.path(item_id, k)
            if p.is_file():
                return p, MEDIA_KINDS[k][1]
        return None

    def kinds(self, item_id: int) -> list[str]:
        return [k for k in MEDIA_KINDS if self.path(item_id, k).is_file()]

    def put(self, item_id: int, kind: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(item_id, kind)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, final)  # readers see the old file or the new one, never half of one

    def put_media(self, item_id: int, image: np.ndarray | None = None, audio: tuple[np.ndarray, int] | None = None,
                  video: np.ndarray | None = None, thumb: int = 256) -> list[str]:
        """Store what the page shows for an item: a thumbnail of the image (or of the video's first frame) and
        the audio as FLAC. For builders too (e.g. `index build`), so built collections get thumbnails."""
        files = media_files(image, audio, video, thumb)
        for kind, data in files.items():
            self.put(item_id, kind, data)
        return list(files)

    def remove(self, item_ids: list[int]) -> None:
        for i in item_ids:
            for kind in MEDIA_KINDS:
                self.path(i, kind).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
