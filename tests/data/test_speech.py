"""eSpeak NG speech: real sound, sensible durations, English and Mandarin, deterministic, fork-safe."""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from polymodal.data.synth import speech  # noqa: E402
from polymodal.errors import InvalidInput, MissingExtra, NotFound  # noqa: E402


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


def band_energy_fraction(x: np.ndarray, sr: int, lo: float = 80.0, hi: float = 5000.0) -> float:
    """Share of the signal's energy between lo and hi Hz (speech lives there; white noise would not)."""
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1.0 / sr)
    return float(power[(freqs >= lo) & (freqs <= hi)].sum() / power.sum())


def test_english_word_is_real_sound():
    wave, sr = speech.synthesize("seven", "en")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert sr == 22050
    assert 0.15 < wave.size / sr < 2.0
    assert rms(wave) > 0.03  # silence (or a broken callback) is ~0
    assert np.abs(wave).max() <= 1.0
    assert band_energy_fraction(wave, sr) > 0.8


def test_duration_grows_with_text_length():
    short, sr = speech.synthesize("red", "en")
    long, _ = speech.synthesize("a small red circle to the left of a large blue square in the corner", "en")
    assert long.size > 3 * short.size
    assert rms(long) > 0.03


def test_mandarin_speaks_chinese_characters():
    one, sr = speech.synthesize("七", "cmn")
    sentence, _ = speech.synthesize("一个红色的大圆形在一个蓝色的小正方形的左边。", "cmn")
    assert rms(one) > 0.03 and rms(sentence) > 0.03
    assert band_energy_fraction(sentence, sr) > 0.8
    assert sentence.size > 4 * one.size


def test_rate_pitch_and_voice_change_the_audio():
    base, sr = speech.synthesize("a large green triangle", "en", rate=175, pitch=50)
    slow, _ = speech.synthesize("a large green triangle", "en", rate=100, pitch=50)
    fast, _ = speech.synthesize("a large green triangle", "en", rate=300, pitch=50)
    assert slow.size > base.size > fast.size
    high, _ = speech.synthesize("a large green triangle", "en", rate=175, pitch=90)
    female, _ = speech.synthesize("a large green triangle", "en+f3", rate=175, pitch=50)
    for other in (high, female):
        n = min(base.size, other.size)
        assert not np.array_equal(base[:n], other[:n])


def test_same_arguments_same_samples_whatever_came_before():
    # eSpeak keeps state between utterances; our engine must not let it leak into the output
    voice = speech.Voice("en+f3", 160, 60, seed=7)
    first, _ = speech.synthesize("the small pink star moves up", voice)
    speech.synthesize("something completely different, and rather long, to disturb the state", "en+m3")
    speech.synthesize("七八九", "cmn+f2")
    again, _ = speech.synthesize("the small pink star moves up", voice)
    assert np.array_equal(first, again)


def _child_synth(args: tuple[str, str]) -> bytes:
    wave, _ = speech.synthesize(args[0], speech.Voice(args[1], 170, 45, seed=3))
    return wave.tobytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method")
def test_forked_worker_gives_the_same_samples_as_the_parent():
    args = ("a big blue diamond above a little orange cross", "en-us+f2")
    parent = _child_synth(args)  # the parent has the library loaded when it forks
    with mp.get_context("fork").Pool(1) as pool:
        child = pool.map(_child_synth, [args, args])
    assert child[0] == parent and child[1] == parent


def test_random_voice_draws_from_the_sample_rng():
    a = [speech.random_voice(np.random.default_rng(5), "zh") for _ in range(2)]
    assert a[0] == a[1]
    assert a[0].name.startswith("cmn")
    voices = {speech.random_voice(np.random.default_rng(i), "en").name for i in range(40)}
    assert len(voices) > 10 and all(v.startswith("en") for v in voices)
    for v in list(voices)[:5]:  # every drawn voice exists in eSpeak NG
        wave, _ = speech.synthesize("ok", v)
        assert rms(wave) > 0.01
    with pytest.raises(InvalidInput, match="lang"):
        speech.random_voice(np.random.default_rng(0), "fr")


def test_trim_silence_matches_a_direct_computation():
    sr = 1000
    tone = (0.5 * np.sin(np.arange(300) * 0.3)).astype(np.float32)
    padded = np.concatenate([np.zeros(200, np.float32), tone, np.zeros(400, np.float32)])
    out = speech.trim_silence(padded, sr, threshold=0.01, margin_s=0.02)
    loud = np.flatnonzero(np.abs(padded) > 0.005)
    assert np.array_equal(out, padded[loud[0] - 20: loud[-1] + 21])


def test_bad_arguments_are_typed_errors():
    with pytest.raises(NotFound, match="voice"):
        speech.synthesize("hello", "xx-nosuchvoice")
    with pytest.raises(InvalidInput, match="text"):
        speech.synthesize("   ", "en")
    with pytest.raises(InvalidInput, match="rate"):
        speech.synthesize("hello", "en", rate=10)
    with pytest.raises(InvalidInput, match="pitch"):
        speech.synthesize("hello", "en", pitch=150)


def test_missing_extra_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes the import fail
    monkeypatch.setattr(speech, "_ENGINE", None)
    with pytest.raises(MissingExtra, match=r"polymodal\[speech\]"):
        speech.synthesize("hello", "en")
    assert speech.available() is False
