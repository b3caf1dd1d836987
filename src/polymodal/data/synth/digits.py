"""`digits`: scikit-learn's real handwritten digits (1797 images, 8x8, ink 0..16) upscaled to 32x32 RGB,
paired with the digit's name as text and spoken by eSpeak NG (English "seven", Mandarin "七" with the
``cmn`` voice) — an AV-MNIST-style set for fusion: ten classes, two views of each label.

Targets (no random draw, so no other field changed when they were added): per language of ``langs``,
captions of the picture ("the digit seven" / "数字七"), "which digit is written?" (picture) and, with
audio, "which digit is spoken?" (answer: the numeral, "7"; type ``digit``), and the spoken word as the
transcript.

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
from ..targets import QA, Caption, Targets, Transcript
from . import speech

NAME = "digits"
NAMES_EN: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAMES_ZH: tuple[str, ...] = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")
IMAGE_SIZE = 32
CAPTIONS = {"en": ("the digit {en}", "a handwritten {en}", "the number {en}, written by hand"),
            "zh": ("数字{zh}", "手写的数字{zh}", "一个手写的{zh}")}
QUESTIONS = {"image": {"en": "which digit is written?", "zh": "哪个数字写在图中？"},
             "audio": {"en": "which digit is spoken?", "zh": "听到的是哪个数字？"}}
_RNG_TAG = 2  # mixed into the seed so shapes and digits with the same seed differ


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float 0..16, targets (1797,) int)`` from scikit-learn (the ``[data]`` extra)."""
    datasets = require("sklearn.datasets", "data")
    bunch = datasets.load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target, dtype=np.int64)


def labels() -> dict[str, Any]:
    return {"classes": list(NAMES_EN), "classes_zh": list(NAMES_ZH)}


def target_kinds(modalities: Sequence[str]) -> dict[str, Any]:
    """What targets samples carry with these modalities (for the manifest)."""
    media = [m for m in ("image", "audio") if m in modalities]
    out: dict[str, Any] = {}
    if "image" in media:
        out["captions"] = {"media": ["image"], "per_lang": len(CAPTIONS["en"])}
    if media:
        out["qa"] = {"media": media, "types": ["digit"], "max_per_lang": len(media)}
    if "audio" in media:
        out["transcript"] = {"media": "audio", "text": "the spoken digit name"}
    return out


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
    return Sample(id=f"{NAME}-{index:06d}", metadata=meta, targets=digit_targets(label, langs, lang, modalities), **kw)


def digit_targets(label: int, langs: Sequence[str], lang: str, modalities: Sequence[str]) -> Targets:
    """Captions and "which digit is written?" for the picture; "which digit is spoken?" and the spoken word
    (in ``lang``, the sample's language) as transcript for the audio."""
    media = [m for m in ("image", "audio") if m in modalities]
    caps = [Caption(t.format(en=NAMES_EN[label], zh=NAMES_ZH[label]), lg, "image")
            for lg in langs for t in CAPTIONS[lg]] if "image" in media else []
    qa = [QA(QUESTIONS[m][lg], str(label), "digit", lg, m) for lg in langs for m in media]
    word = NAMES_EN[label] if lang == "en" else NAMES_ZH[label]
    return Targets(captions=tuple(caps), qa=tuple(qa),
                   transcript=Transcript(word, lang) if "audio" in media else None)
