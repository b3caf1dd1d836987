"""data.codec: media bytes <-> arrays. Errors name the file and the field and say what was expected, never
an object repr (``<_io.BytesIO object at 0x...>``) or libsndfile's internals."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from polymodal.data.codec import (
    AUDIO_FORMATS,
    IMAGE_FORMATS,
    audio_info,
    decode_audio,
    decode_image,
    encode_audio,
    encode_image,
    format_list,
    image_size,
)
from polymodal.errors import InvalidInput

REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|BytesIO|Error opening|libsndfile", re.IGNORECASE)


def image_bytes(fmt: str, size: tuple[int, int] = (12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buf, format=fmt)
    return buf.getvalue()


def audio_bytes(fmt: str, frames: int = 1600, channels: int = 1, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((frames, channels), np.float32), sr, format=fmt)
    return buf.getvalue()


def clean_error(exc: pytest.ExceptionInfo[InvalidInput], source: str, field: str) -> str:
    text = str(exc.value)
    assert not REPR.search(text), text
    assert exc.value.source == source and exc.value.field == field
    assert text.startswith(f"{source}: field '{field}': ")
    return exc.value.message


def test_format_list_reads_like_a_sentence():
    assert format_list(["PNG"]) == "PNG"
    assert format_list(["PNG", "WEBP", "GIF"]) == "PNG, WebP or GIF"
    assert format_list(["WAV", "WAVEX", "FLAC"]) == "WAV or FLAC"


@pytest.mark.parametrize("data", [b"", b"garbage" * 20, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_unreadable_image_names_field_file_and_expected_formats(data: bytes):
    with pytest.raises(InvalidInput) as exc:
        decode_image(data, source="photos/cat.png", field="image")
    message = clean_error(exc, "photos/cat.png", "image")
    assert message.startswith("not a readable image (expected an image file such as ")
    assert all(name in message for name in ("PNG", "JPEG", "WebP", "BMP", "GIF", "TIFF"))


def test_truncated_image_says_which_format_broke():
    data = encode_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(InvalidInput) as exc:
        decode_image(data[: len(data) // 2], source="request", field="items[3].image")
    message = clean_error(exc, "request", "items[3].image")
    assert message.startswith("corrupt or truncated PNG data (expected ")


def test_image_formats_can_be_restricted_and_the_error_lists_them():
    ppm = image_bytes("PPM")
    assert decode_image(ppm).shape == (8, 12, 3)  # any format Pillow reads, by default
    with pytest.raises(InvalidInput) as exc:
        decode_image(ppm, source="request", field="image[0]", formats=("PNG", "GIF"))
    assert clean_error(exc, "request", "image[0]") == "not a readable image (expected PNG or GIF)"


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_every_listed_image_format_decodes_and_its_size_comes_from_the_header(fmt: str):
    data = image_bytes(fmt, (12, 8))
    assert image_size(data, formats=IMAGE_FORMATS) == (12, 8)
    img = decode_image(data, formats=IMAGE_FORMATS)
    assert img.shape == (8, 12, 3) and img.dtype == np.uint8


@pytest.mark.parametrize("data", [b"", b"RIFF0000WAVEjunk", b"garbage" * 20])
def test_unreadable_audio_names_field_file_and_expected_formats(data: bytes):
    with pytest.raises(InvalidInput) as exc:
        decode_audio(data, source="clips/a.wav", field="audio")
    message = clean_error(exc, "clips/a.wav", "audio")
    assert message == "not a readable audio file (expected an audio file such as WAV, FLAC, OGG or MP3)"
    with pytest.raises(InvalidInput) as exc:
        audio_info(data, source="request", field="items[3].audio", formats=AUDIO_FORMATS)
    assert clean_error(exc, "request", "items[3].audio") == \
        "not a readable audio file (expected WAV, FLAC, OGG or MP3)"


def test_audio_formats_can_be_restricted():
    aiff = audio_bytes("AIFF")
    assert decode_audio(aiff)[1] == 16000  # any format libsndfile reads, by default
    with pytest.raises(InvalidInput) as exc:
        decode_audio(aiff, source="request", field="audio[1]", formats=AUDIO_FORMATS)
    assert clean_error(exc, "request", "audio[1]") == \
        "AIFF audio is not accepted (expected WAV, FLAC, OGG or MP3)"


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_every_listed_audio_format_decodes_and_its_header_is_read(fmt: str):
    data = audio_bytes(fmt, frames=1600, channels=2)
    info = audio_info(data, formats=AUDIO_FORMATS)
    assert (info.channels, info.sample_rate) == (2, 16000)
    assert info.frames >= 1600  # MP3 pads its last frame
    wave, sr = decode_audio(data, formats=AUDIO_FORMATS)
    assert sr == 16000 and wave.ndim == 1 and len(wave) == info.frames


def test_decode_audio_reads_at_most_max_frames():
    wave = np.sin(np.arange(8000) / 10).astype(np.float32)
    data = encode_audio(wave, 8000)
    got, _ = decode_audio(data, max_frames=100)
    assert len(got) == 100
    np.testing.assert_allclose(got, decode_audio(data)[0][:100])
