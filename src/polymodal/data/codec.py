"""Sample <-> bytes per field, shared by every on-disk format.

Field files (WebDataset members are ``{id}.{ext}``):
  ``txt``       UTF-8 text
  ``png``       the image (lossless RGB PNG)
  ``flac``      the audio (16-bit PCM FLAC at the sample's rate; speech from eSpeak NG is 16-bit already)
  ``video.png`` the video as a film strip: T frames stacked vertically in one RGB PNG
  ``json``      {"metadata": ..., "video_frames": T}
All encoders are deterministic (same sample -> same bytes)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInput
from .sample import Sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
AUDIO_EXTS = (".flac", ".wav", ".ogg")
VIDEO_EXTS = (".video.png",)
MAX_PIXELS = 64_000_000


def encode_image(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_image(data: bytes, source: str = "<bytes>", field: str = "image") -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise InvalidInput(f"image of {im.width}x{im.height} pixels exceeds the limit {MAX_PIXELS}",
                                   field=field, source=source)
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(f"cannot decode image ({exc.__class__.__name__}: {exc})", field=field, source=source) from None


def encode_audio(wave: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    pcm = np.clip(np.round(wave.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(buf, pcm, int(sample_rate), format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(data: bytes, source: str = "<bytes>", field: str = "audio") -> tuple[np.ndarray, int]:
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise InvalidInput(f"cannot decode audio ({exc.__class__.__name__}: {exc})", field=field, source=source) from None
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
    kw: dict[str, Any] = {"id": key, "metadata": meta.get("metadata", {}), "source": source}
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
