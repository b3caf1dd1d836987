"""Robustness metrics on hand-made curves, macro-F1 against scikit-learn, noise functions, the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from polymodal.data.sample import Batch, Sample
from polymodal.errors import InvalidInput
from polymodal.eval.noise import EMPTY_TEXT, audio_noise, image_noise, noisy_sample, snr_db, text_noise
from polymodal.eval.robustness import (
    DEFAULT_LEVELS,
    Condition,
    accuracy,
    effective_robustness,
    macro_f1,
    mask_out,
    relative_robustness,
    robustness_report,
)

LEVELS = list(DEFAULT_LEVELS)


# ------------------------------------------------------------------------------------------ metrics

def test_relative_robustness_on_hand_made_curves():
    assert relative_robustness(LEVELS, [0.8] * 11) == pytest.approx(0.8)
    # linear a0 + s*l on [0, 1]: area = a0 + s/2 (trapezoids are exact on lines)
    assert relative_robustness(LEVELS, [0.9 - 0.6 * v for v in LEVELS]) == pytest.approx(0.9 - 0.3)
    # uneven levels, a kink: 0->1 at 0.5 then flat: area = 0.5*(1+0.5)/2... by hand: [0,0.5]: (0.2+1)/2*0.5
    assert relative_robustness([0, 0.5, 1.0], [0.2, 1.0, 1.0]) == pytest.approx(0.3 + 0.5)
    with pytest.raises(InvalidInput):
        relative_robustness([0, 0.5, 0.4], [1, 1, 1])
    with pytest.raises(InvalidInput):
        relative_robustness([0], [1])


def test_effective_robustness_on_hand_made_curves():
    lf = [0.9 - 0.08 * i for i in range(11)]
    assert effective_robustness(lf, lf) == pytest.approx(0.0)
    shifted = [v + 0.05 for v in lf]  # same shape, different clean accuracy: no extra robustness
    assert effective_robustness(shifted, lf) == pytest.approx(0.0)
    flat = [0.9] * 11  # never degrades: gains 0.08*i at level i
    assert effective_robustness(flat, lf) == pytest.approx(0.08 * sum(range(11)))
    by_formula = sum(f - (ll + flat[0] - lf[0]) for f, ll in zip(flat, lf, strict=True))
    assert effective_robustness(flat, lf) == pytest.approx(by_formula)
    with pytest.raises(InvalidInput):
        effective_robustness([1, 2], [1])


@pytest.mark.parametrize("seed", range(6))
def test_macro_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    y_true = rng.integers(0, k, size=40)
    y_pred = np.where(rng.random(40) < 0.6, y_true, rng.integers(0, k + 1, size=40))  # incl. unseen labels
    want = f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred) == pytest.approx(want)
    labels = list(range(k + 2))  # explicit labels, some never true nor predicted
    assert macro_f1(y_true, y_pred, labels) == pytest.approx(
        f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0))
    assert accuracy(y_true, y_pred) == pytest.approx(np.mean(y_true == y_pred))


# ------------------------------------------------------------------------------------------- noise

def _image(seed=0):
    return np.random.default_rng(seed).integers(30, 220, size=(16, 16, 3), dtype=np.uint8)


def _wave(seed=0):
    t = np.arange(8000) / 8000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_level_zero_is_identity():
    img, wave, text = _image(), _wave(), "the quick brown fox"
    assert np.array_equal(image_noise(img, 0.0, 1), img)
    assert np.array_equal(audio_noise(wave, 0.0, 1), wave)  # clean stays clean (not zeroed)
    assert text_noise(text, 0.0, 1) == text
    assert image_noise(img, 0.0).dtype == np.uint8


def test_stronger_level_larger_deviation():
    img, wave, text = _image(), _wave(), "abcdefghij" * 30
    dev_i = [np.abs(image_noise(img, v, 3).astype(float) - img).mean() for v in LEVELS]
    dev_a = [np.abs(audio_noise(wave, v, 3) - wave).mean() for v in LEVELS]
    kept_t = [len(text_noise(text, v, 3)) for v in LEVELS]
    assert all(a < b for a, b in zip(dev_i, dev_i[1:], strict=False))
    assert all(a < b for a, b in zip(dev_a, dev_a[1:], strict=False))
    assert all(a >= b for a, b in zip(kept_t, kept_t[1:], strict=False)) and kept_t[-1] == 0
    assert abs(kept_t[5] / len(text) - 0.5) < 0.08  # drop probability = level
    assert image_noise(img, 1.0, 3).min() >= 0 and image_noise(img, 1.0, 3).max() <= 255


def test_noise_is_deterministic_with_seed():
    img, wave, text = _image(), _wave(), "hello world, again"
    assert np.array_equal(image_noise(img, 0.4, 7), image_noise(img, 0.4, 7))
    assert not np.array_equal(image_noise(img, 0.4, 7), image_noise(img, 0.4, 8))
    assert np.array_equal(audio_noise(wave, 0.4, (7, 2)), audio_noise(wave, 0.4, (7, 2)))
    assert text_noise(text, 0.4, 7) == text_noise(text, 0.4, 7)


def test_audio_noise_hits_the_snr_for_its_level():
    wave = _wave()
    for level in (0.1, 0.5, 1.0):
        noise = audio_noise(wave, level, 0).astype(np.float64) - wave
        measured = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise ** 2))
        assert measured == pytest.approx(snr_db(level), abs=0.2)
    assert snr_db(0.0) == float("inf")
    silent = np.zeros(1000, np.float32)
    assert np.std(audio_noise(silent, 0.5, 0)) > 0  # a silent clip still gets noisier
    assert audio_noise(wave, 0.5, 0).dtype == np.float32
    with pytest.raises(InvalidInput):
        audio_noise(wave, 1.5)


def test_noisy_sample():
    s = Sample("a1", text="hi there", image=_image(), audio=_wave(), sample_rate=8000)
    assert noisy_sample(s, {"image": 0.0, "text": 0.0}).text == "hi there"
    n = noisy_sample(s, {"image": 0.5}, seed=(1, 4))
    assert not np.array_equal(n.image, s.image) and np.array_equal(n.audio, s.audio) and n.text == s.text
    # the same modality gets the same noise whether it is swept alone or with the others
    both = noisy_sample(s, {"image": 0.5, "audio": 0.5}, seed=(1, 4))
    assert np.array_equal(both.image, n.image)
    assert noisy_sample(s, {"text": 1.0}).text == EMPTY_TEXT
    assert noisy_sample(Sample("b", text="x"), {"image": 1.0}).image is None
    with pytest.raises(InvalidInput):
        noisy_sample(s, {"smell": 0.5})


def test_mask_out():
    b = Batch(["a", "b"], {"image": torch.ones(2, 3)}, {"image": torch.tensor([True, False]), "text": torch.ones(2, dtype=torch.bool)},
              {}, [None, None], [{}, {}])
    out = mask_out(b, ["image"])
    assert not out.mask["image"].any() and out.mask["text"].all() and b.mask["image"][0]


# ------------------------------------------------------------------------------------------- report

def fake_eval(slopes: dict[str, float], removed_acc: dict[str, float], n: int = 200):
    """A fake model: accuracy = 1 - sum_m slope_m * level_m (clipped), or removed_acc[m] when m is removed."""
    y_true = np.arange(n) % 4
    calls = []

    def eval_fn(cond: Condition):
        calls.append(cond)
        acc = 1.0 - sum(slopes[m] * v for m, v in cond.noise.items())
        for m in cond.removed:
            acc = removed_acc[m]
        k = int(round(max(acc, 0.0) * n))
        y_pred = y_true.copy()
        y_pred[k:] = (y_pred[k:] + 1) % 4
        return y_true, y_pred

    return eval_fn, calls


def test_robustness_report():
    eval_fn, calls = fake_eval({"audio": 0.2, "image": 0.5}, {"audio": 0.7, "image": 0.4})
    rep = robustness_report(eval_fn, ["image", "audio"])
    assert rep["levels"] == LEVELS
    assert rep["clean"]["acc"] == 1.0 and rep["clean"]["macro_f1"] == 1.0
    assert rep["removed"]["audio"]["acc"] == pytest.approx(0.7)
    assert rep["removed"]["image"]["acc"] == pytest.approx(0.4)
    assert set(rep["noise"]) == {"audio", "image", "all"}
    img = rep["noise"]["image"]
    assert img["acc"] == pytest.approx([1 - 0.5 * v for v in LEVELS])
    assert img["relative_robustness"] == pytest.approx(0.75)
    assert rep["noise"]["all"]["relative_robustness"] == pytest.approx(1 - 0.35)
    assert "effective_robustness" not in img
    assert len(calls) == 1 + 2 + 10 * 3  # level 0 reuses the clean result
    kinds = sorted({tuple(sorted(c.noise)) for c in calls if c.noise})
    assert kinds == [("audio",), ("audio", "image"), ("image",)]
    assert all(len(set(c.noise.values())) == 1 and 0 not in c.noise.values() for c in calls if c.noise)
    assert sorted(c.removed for c in calls if c.removed) == [("audio",), ("image",)]
    # effective robustness against a late-fusion report: late fusion itself scores 0
    lf_rep = robustness_report(fake_eval({"audio": 0.4, "image": 0.6}, {"audio": 0.5, "image": 0.5})[0],
                               ["audio", "image"])
    lf_self = robustness_report(fake_eval({"audio": 0.4, "image": 0.6}, {"audio": 0.5, "image": 0.5})[0],
                                ["audio", "image"], late_fusion=lf_rep)
    assert all(c["effective_robustness"] == pytest.approx(0.0) for c in lf_self["noise"].values())
    ours = robustness_report(eval_fn, ["audio", "image"], late_fusion=lf_rep)
    # image: slope 0.5 vs 0.6 -> gains 0.1 * level at every level
    assert ours["noise"]["image"]["effective_robustness"] == pytest.approx(0.1 * sum(LEVELS), abs=0.02)
    with pytest.raises(InvalidInput):
        robustness_report(eval_fn, ["audio"], levels=[0, 0.5, 1.0], late_fusion=lf_rep)
