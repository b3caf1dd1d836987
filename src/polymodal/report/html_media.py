"""Media as data: URIs for the self-contained report: PNG images and 16-bit WAV audio."""

from __future__ import annotations

import base64
import io
import wave

import numpy as np


def png_data_uri(image: np.ndarray | bytes) -> str:
    """``data:image/png;base64,...`` from a uint8 HxWx3 (or HxW) array or from PNG bytes."""
    if isinstance(image, bytes | bytearray):
        data = bytes(image)
    else:
        from PIL import Image

        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def wav_bytes(wave_f32: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV (the format every browser plays) from a float waveform in [-1, 1]."""
    x = np.asarray(wave_f32, dtype=np.float64).reshape(-1)
    pcm = (np.clip(np.nan_to_num(x), -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def wav_data_uri(wave_f32: np.ndarray, sample_rate: int) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(wave_f32, sample_rate)).decode("ascii")


__all__ = ["png_data_uri", "wav_bytes", "wav_data_uri"]
