"""Sample <-> bytes per field, shared by every on-disk format.

Field files (WebDataset members are ``{id}.{ext}``):
  ``txt``       UTF-8 text
  ``png``       the image (lossless RGB PNG)
  ``flac``      the audio (16-bit PCM FLAC at the sample's rate; speech from eSpeak NG is 16-bit already)
  ``video.png`` the video as a film strip: T frames stacked vertically in one RGB PNG
  ``json``      {"metadata": ..., "video_frames": T, "targets": {...}} (``targets`` only when the sample has
                some: `polymodal.data.targets.Targets.to_dict`)
All encoders are deterministic (same sample -> same bytes)."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInput
from .sample import Sample
from .targets import Targets

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
AUDIO_EXTS = (".flac", ".wav", ".ogg")
# Common formats (Pillow's and libsndfile's names; WAVEX is WAV with a channel mask): the HTTP service accepts
# exactly these, and an error lists them as expected. Decoding without ``formats`` accepts all Pillow/libsndfile read.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
AUDIO_FORMATS = ("WAV", "WAVEX", "FLAC", "OGG", "MP3")
VIDEO_EXTS = (".video.png",)
MAX_PIXELS = 64_000_000


def encode_image(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# Pillow and libsndfile format names -> the names people know
_FORMAT_NAMES = {"WEBP": "WebP", "WAVEX": "WAV"}


def format_list(formats: Sequence[str]) -> str:
    """("PNG", "JPEG", "GIF") -> "PNG, JPEG or GIF" (human names, in order, without repeats)."""
    names = list(dict.fromkeys(_FORMAT_NAMES.get(f, f) for f in formats))
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _expected(kind: str, formats: Sequence[str] | None) -> str:
    """What an error says was expected: the accepted formats, or (any format Pillow/libsndfile reads) common ones."""
    if formats is not None:
        return f"expected {format_list(formats)}"
    return f"expected {kind} file such as {format_list(IMAGE_FORMATS if kind == 'an image' else AUDIO_FORMATS)}"


def _open_image(data: bytes, source: str, field: str, formats: Sequence[str] | None) -> Image.Image:
    """Open (header only: no pixel is decoded yet), or raise an error naming the field and what was expected."""
    try:
        im = Image.open(io.BytesIO(data), formats=list(formats) if formats is not None else None)
    except Image.DecompressionBombError:
        raise InvalidInput(f"image exceeds the limit of {MAX_PIXELS} pixels", field=field, source=source) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        # Pillow's own messages carry object reprs (<_io.BytesIO object at 0x...>): say what was expected instead
        raise InvalidInput(f"not a readable image ({_expected('an image', formats)})", field=field,
                           source=source) from None
    return im


def image_size(data: bytes, source: str = "<bytes>", field: str = "image",
               formats: Sequence[str] | None = None) -> tuple[int, int]:
    """(width, height) declared by the image's header, read without decoding a pixel."""
    with _open_image(data, source, field, formats) as im:
        return int(im.width), int(im.height)


def decode_image(data: bytes, source: str = "<bytes>", field: str = "image",
                 formats: Sequence[str] | None = None) -> np.ndarray:
    """Image file bytes -> uint8 HxWx3. ``formats``: the Pillow formats accepted (default: any Pillow reads)."""
    with _open_image(data, source, field, formats) as im:
        if im.width * im.height > MAX_PIXELS:
            raise InvalidInput(f"image of {im.width}x{im.height} pixels exceeds the limit {MAX_PIXELS}",
                               field=field, source=source)
        try:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error):
            raise InvalidInput(f"corrupt or truncated {format_list([im.format or 'image'])} data "
                               f"({_expected('an image', formats)})", field=field, source=source) from None


def encode_audio(wave: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    pcm = np.clip(np.round(wave.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(buf, pcm, int(sample_rate), format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header declares."""

    format: str         # libsndfile's name: WAV, FLAC, OGG, MP3, ...
    frames: int         # samples per channel
    channels: int
    sample_rate: int


def audio_info(data: bytes, source: str = "<bytes>", field: str = "audio",
               formats: Sequence[str] | None = None) -> AudioInfo:
    """Read only the header (format, length, channels, rate), or raise an error naming the field."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # soundfile raises several types; its messages name libsndfile internals and object reprs
        raise InvalidInput(f"not a readable audio file ({_expected('an audio', formats)})", field=field,
                           source=source) from None
    if formats is not None and info.format not in formats:
        raise InvalidInput(f"{format_list([info.format])} audio is not accepted ({_expected('an audio', formats)})",
                           field=field, source=source)
    return AudioInfo(str(info.format), int(info.frames), int(info.channels), int(info.samplerate))


def decode_audio(data: bytes, source: str = "<bytes>", field: str = "audio", formats: Sequence[str] | None = None,
                 max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """Audio file bytes -> (float32 mono waveform, sample rate). ``max_frames``: decode at most this many frames
    (a bound on memory whatever the file claims)."""
    if formats is not None:
        audio_info(data, source, field, formats)
    try:
        wave, sr = sf.read(io.BytesIO(data), frames=-1 if max_frames is None else max_frames, dtype="float32",
                           always_2d=True)
    except Exception:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise InvalidInput(f"not a readable audio file ({_expected('an audio', formats)})", field=field,
                           source=source) from None
    if wave.shape[0] == 0:
        raise InvalidInput("audio has no samples", field=field, source=source)
    return np.ascontiguousarray(wave.mean(axis=1, dtype=np.float32)), int(sr)


def encode_video(video: np.ndarray) -> bytes:
    t, h, w, c = video.shape
    return encode_image(video.reshape(t * h, w, c))


def decode_video(data: bytes, frames: int, source: str = "<bytes>", field: str = "video") -> np.ndarray:
    strip = decode_image(data, source, field)
    if frames <= 0 or strip.shape[0] % frames:
        raise InvalidInput(f"film strip of height {strip.shape[0]} cannot hold {frames} frames", field=field, source=source)
    return strip.reshape(frames, strip.shape[0] // frames, strip.shape[1], 3)


def sample_to_fields(s: Sample) -> dict[str, bytes]:
    """Encode a sample to ``{ext: bytes}`` (ext without the leading dot)."""
    out: dict[str, bytes] = {}
    meta: dict[str, Any] = {"metadata": s.metadata}
    if s.text is not None:
        out["txt"] = s.text.encode("utf-8")
    if s.image is not None:
        out["png"] = encode_image(s.image)
    if s.audio is not None:
        assert s.sample_rate is not None
        out["flac"] = encode_audio(s.audio, s.sample_rate)
    if s.video is not None:
        out["video.png"] = encode_video(s.video)
        meta["video_frames"] = int(s.video.shape[0])
    if s.targets:
        meta["targets"] = s.targets.to_dict()
    out["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return out


KNOWN_FIELDS = {"txt", "png", "jpg", "jpeg", "flac", "wav", "video.png", "json"}


def sample_from_fields(key: str, fields: dict[str, bytes], source: str) -> Sample:
    """Decode ``{ext: bytes}`` back into a validated `Sample`; unknown fields are an error."""
    unknown = set(fields) - KNOWN_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field(s) {sorted(unknown)} for sample '{key}' (known: {sorted(KNOWN_FIELDS)})",
                           field=sorted(unknown)[0], source=source)
    meta: dict[str, Any] = {}
    if "json" in fields:
        try:
            meta = json.loads(fields["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"invalid JSON ({exc})", field="json", source=source) from None
        if not isinstance(meta, dict):
            raise InvalidInput("expected a JSON object", field="json", source=source)
    kw: dict[str, Any] = {"id": key, "metadata": meta.get("metadata", {}), "source": source,
                          "targets": Targets.from_dict(meta.get("targets"), source)}
    if "txt" in fields:
        try:
            kw["text"] = fields["txt"].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"text is not UTF-8 ({exc})", field="text", source=source) from None
    for ext in ("png", "jpg", "jpeg"):
        if ext in fields:
            kw["image"] = decode_image(fields[ext], source)
    for ext in ("flac", "wav"):
        if ext in fields:
            kw["audio"], kw["sample_rate"] = decode_audio(fields[ext], source)
    if "video.png" in fields:
        kw["video"] = decode_video(fields["video.png"], int(meta.get("video_frames", 0)), source)
    return Sample(**kw)
