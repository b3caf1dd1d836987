"""Resampling between rates whose reduced ratio is huge (383,999 Hz -> 16 kHz): frequency-domain resampling,
equal to scipy.signal.resample, instead of a polyphase filter of millions of taps (seconds and tens of MB each,
cached: a denial of service through the HTTP API, which accepts rates up to 384 kHz)."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.data.transforms import audio as audio_tf
from polymodal.data.transforms.audio import MAX_POLYPHASE_RATIO, resample

signal = pytest.importorskip("scipy.signal")


@pytest.mark.parametrize(("orig", "new"), [(383_999, 16_000), (16_000, 383_999), (44_101, 22_050)])
def test_awkward_ratios_use_the_fft_and_equal_scipy(orig, new, monkeypatch):
    def no_filter(up: int, down: int):
        raise AssertionError(f"a polyphase filter of {20 * max(up, down) + 1} taps was built")

    monkeypatch.setattr(audio_tf, "_polyphase_filter", no_filter)
    x = np.random.default_rng(0).normal(size=3_001).astype(np.float32)
    y = resample(x, orig, new)
    n_out = -(-len(x) * new // orig)
    assert y.dtype == np.float32 and y.shape == (n_out,)
    np.testing.assert_allclose(y, signal.resample(x.astype(np.float64), n_out), atol=1e-5)


def test_common_ratios_keep_the_polyphase_filter():
    """44.1 kHz -> 16 kHz (441/160) stays scipy.signal.resample_poly's filter, as before."""
    assert max(441, 160) <= MAX_POLYPHASE_RATIO
    x = np.random.default_rng(1).normal(size=4_410)
    np.testing.assert_allclose(resample(x, 44_100, 16_000), signal.resample_poly(x, 160, 441), atol=1e-9)
