"""Noise for robustness sweeps, one function per modality, at a level in [0, 1].

Every function is the identity at level 0 (the clean sample comes back unchanged — MultiBench's audio
helper zeroes clean samples; this one does not), gets monotonically noisier with the level, and is
deterministic given ``seed`` (an int or a sequence of ints, e.g. ``(seed, sample_index)``).

- ``image_noise``: additive Gaussian noise on pixels, ``std = level * max_std`` (in units of the full
  pixel range, ``max_std = 0.5`` by default), clipped to the valid range; uint8 stays uint8.
- ``audio_noise``: additive white Gaussian noise at an SNR set by the level,
  ``noise_rms = level * max_ratio * signal_rms`` i.e. ``SNR_dB = -20 log10(level * max_ratio)``
  (``max_ratio = 3``: level 0.1 -> 10.5 dB, 0.5 -> -3.5 dB, 1 -> -9.5 dB). Works on waveforms or
  feature arrays alike; a silent input uses ``silent_rms`` (-40 dBFS) as its reference.
- ``text_noise``: drops each character independently with probability ``level``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.sample import MODALITIES, Sample
from ..errors import InvalidInput

Seed = int | Sequence[int]
EMPTY_TEXT = "\ufffd"  # what a fully dropped text becomes, so noise never changes which modalities exist


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise InvalidInput(f"noise level must be in [0, 1], got {level}", field="level")
    return level


def image_noise(pixels: np.ndarray, level: float, seed: Seed = 0, max_std: float = 0.5) -> np.ndarray:
    """Gaussian pixel noise. ``pixels``: uint8 (0..255) or float (0..1) array of any shape (image or video)."""
    level = _check_level(level)
    if level == 0.0:
        return pixels.copy()
    rng = np.random.default_rng(seed)
    is_uint8 = pixels.dtype == np.uint8
    scale = 255.0 if is_uint8 else 1.0
    noisy = pixels.astype(np.float64) + rng.normal(0.0, level * max_std * scale, size=pixels.shape)
    noisy = np.clip(noisy, 0.0, scale)
    return np.rint(noisy).astype(np.uint8) if is_uint8 else noisy.astype(pixels.dtype)


def snr_db(level: float, max_ratio: float = 3.0) -> float:
    """The signal-to-noise ratio ``audio_noise`` targets at ``level`` (inf at level 0)."""
    level = _check_level(level)
    return float("inf") if level == 0.0 else float(-20.0 * np.log10(level * max_ratio))


def audio_noise(x: np.ndarray, level: float, seed: Seed = 0, max_ratio: float = 3.0,
                silent_rms: float = 0.01) -> np.ndarray:
    """Additive white noise at ``SNR = snr_db(level)`` relative to the input's RMS (waveform or features)."""
    level = _check_level(level)
    if level == 0.0:
        return x.copy()
    rng = np.random.default_rng(seed)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    ref = rms if rms > 0.0 else silent_rms
    noise = rng.normal(0.0, level * max_ratio * ref, size=x.shape)
    return (x.astype(np.float64) + noise).astype(x.dtype)


def text_noise(text: str, level: float, seed: Seed = 0) -> str:
    """Drop each character with probability ``level`` (an empty result is returned as is)."""
    level = _check_level(level)
    if level == 0.0:
        return text
    keep = np.random.default_rng(seed).random(len(text)) >= level
    return "".join(c for c, k in zip(text, keep, strict=True) if k)


def noisy_sample(sample: Sample, noise: dict[str, float], seed: Seed = 0) -> Sample:
    """A copy of ``sample`` with ``noise[modality] = level`` applied (image/video pixels, audio waveform,
    text characters). Modalities the sample lacks are skipped. A text whose every character was dropped
    becomes ``EMPTY_TEXT`` (noise degrades a modality; removing it is a separate condition)."""
    base = [seed] if isinstance(seed, int) else list(seed)
    changes: dict[str, object] = {}
    for m, level in sorted(noise.items()):
        if m not in MODALITIES:
            raise InvalidInput(f"unknown modality {m!r}", field="noise")
        value = getattr(sample, m)
        if value is None:
            continue
        s = [*base, MODALITIES.index(m)]  # one stream per modality, the same in every sweep
        if m in ("image", "video"):
            changes[m] = image_noise(value, level, s)
        elif m == "audio":
            changes[m] = audio_noise(value, level, s)
        else:
            changes[m] = text_noise(value, level, s) or EMPTY_TEXT
    return sample.replace(**changes) if changes else sample
