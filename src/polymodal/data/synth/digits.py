"""`digits`: scikit-learn's real handwritten digits (1797 images, 8x8, ink 0..16) upscaled to 32x32 RGB,
paired with the digit's name as text and spoken by eSpeak NG (English "seven", Mandarin "七" with the
``cmn`` voice) — an AV-MNIST-style set for fusion: ten classes, two views of each label.

Images are split by image (a seeded permutation of the 1797), so an image never appears in two
splits; with ``n`` above 1797 an image is reused within its split, spoken by a different voice."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ...errors import require
from ..sample import Sample
from . import speech

NAME = "digits"
NAMES_EN: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAMES_ZH: tuple[str, ...] = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")
IMAGE_SIZE = 32
_RNG_TAG = 2  # mixed into the seed so shapes and digits with the same seed differ


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float 0..16, targets (1797,) int)`` from scikit-learn (the ``[data]`` extra)."""
    datasets = require("sklearn.datasets", "data")
    bunch = datasets.load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target, dtype=np.int64)


def labels() -> dict[str, Any]:
    return {"classes": list(NAMES_EN), "classes_zh": list(NAMES_ZH)}


def image_splits(seed: int, fractions: tuple[float, float] = (0.8, 0.1)) -> dict[str, list[int]]:
    """Which scikit-learn image indices belong to train/val/test (seeded permutation, split by image)."""
    count = len(load_digits()[1])
    perm = np.random.default_rng(np.random.SeedSequence([_RNG_TAG, seed, 0xD1])).permutation(count)
    n_train, n_val = int(round(fractions[0] * count)), int(round(fractions[1] * count))
    return {"train": perm[:n_train].tolist(), "val": perm[n_train:n_train + n_val].tolist(),
            "test": perm[n_train + n_val:].tolist()}


def to_rgb(image8: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """8x8 ink in 0..16 -> ``size`` x ``size`` RGB uint8, white ink on black (bicubic keeps strokes smooth)."""
    gray = Image.fromarray(np.clip(image8 * (255.0 / 16.0), 0, 255).round().astype(np.uint8), "L")
    big = np.asarray(gray.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
    return np.repeat(big[:, :, None], 3, axis=2)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_RNG_TAG, seed, index]))


def make_sample(index: int, split: str, image_index: int, *, seed: int = 0, langs: Sequence[str] = ("en",),
                modalities: Sequence[str] = ("text", "image", "audio")) -> Sample:
    """Sample ``index``: scikit-learn image ``image_index`` with its label as text and speech."""
    images, targets = load_digits()
    label = int(targets[image_index])
    rng = sample_rng(seed, index)
    lang = langs[int(rng.integers(len(langs)))]
    voice = speech.random_voice(rng, lang)
    word = NAMES_EN[label] if lang == "en" else NAMES_ZH[label]
    meta: dict[str, Any] = {"split": split, "index": index, "image_index": int(image_index), "label": label,
                            "label_name": NAMES_EN[label], "label_zh": NAMES_ZH[label], "lang": lang}
    kw: dict[str, Any] = {}
    if "text" in modalities:
        kw["text"] = word
    if "image" in modalities:
        kw["image"] = to_rgb(images[image_index])
    if "audio" in modalities:
        kw["audio"], kw["sample_rate"] = speech.synthesize(word, voice)
        meta["voice"] = voice.as_dict()
    return Sample(id=f"{NAME}-{index:06d}", metadata=meta, **kw)
