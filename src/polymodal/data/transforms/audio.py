"""Audio transforms: band-limited resampling, mel filterbanks, log-mel spectrograms via ``torch.stft``.

- `resample` is polyphase filtering with the same Kaiser-windowed-sinc filter as ``scipy.signal.resample_poly``
  (cutoff ``1 / max(up, down)``, ``10 * max(up, down)`` taps per side, beta 5), so the two agree to float precision.
- `mel_filterbank` follows torchaudio / Hugging Face (triangles in Hz between mel-spaced points, HTK or Slaney
  scale, optional Slaney area normalisation), evaluated at the true rfft bin frequencies ``k * sr / n_fft`` as
  librosa does, so an odd ``n_fft`` (whose last bin is below Nyquist) is placed correctly too.
- `LogMel`: periodic Hann window, power spectrum, mel projection, ``log(mel + log_offset)``, shape ``(n_mels, T)``
  with ``T = 1 + N // hop_length`` when ``center`` (reflect padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, InvalidInput, MissingExtra, NotFound
from .image import config_from_dict, config_to_dict

Wave = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------- resampling
@lru_cache(maxsize=32)
def _polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """Kaiser-windowed sinc low-pass of ``scipy.signal.resample_poly`` split into ``up`` phases:
    ``H[p, k] = h[p + k * up]``. Returns (H, half_len)."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    m = np.arange(2 * half_len + 1, dtype=np.float64) - half_len
    cutoff = 1.0 / max_rate  # as a fraction of Nyquist
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(2 * half_len + 1, 5.0)
    h = h / h.sum() * up  # unit DC gain, times `up` to undo the energy lost by zero insertion
    n_taps = -(-len(h) // up)
    H = np.zeros((up, n_taps), dtype=np.float64)
    for p in range(up):
        taps = h[p::up]
        H[p, : len(taps)] = taps
    H.setflags(write=False)
    return H, half_len


MAX_POLYPHASE_RATIO = 4096  # beyond: 20 * ratio filter taps would cost seconds and tens of MB; FFT resampling instead


def resample(wave: Wave, orig_sr: int, new_sr: int) -> Wave:
    """Resample a mono waveform ``(N,)`` from ``orig_sr`` to ``new_sr`` Hz (band-limited, zero-phase): polyphase
    filtering as ``scipy.signal.resample_poly`` when the reduced ratio ``up/down`` has both terms <=
    `MAX_POLYPHASE_RATIO` (every common rate pair), else in the frequency domain (``scipy.signal.resample``), so an
    odd rate such as 383,999 Hz costs O(N log N), not a multi-million-tap filter.

    Output length is ``ceil(N * new_sr / orig_sr)``; equal rates return the input unchanged. Numpy in, numpy out;
    torch in, torch out (float32 unless the input is float64)."""
    for name, sr in (("orig_sr", orig_sr), ("new_sr", new_sr)):
        if not isinstance(sr, int | np.integer) or sr <= 0:
            raise InvalidInput(f"sample rate must be a positive int, got {sr!r}", field=name)
    if orig_sr == new_sr:
        return wave
    is_torch = isinstance(wave, torch.Tensor)
    x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if x.ndim != 1 or x.shape[0] == 0:
        raise InvalidInput(f"expected a non-empty mono waveform (N,), got shape {x.shape}", field="audio")
    out_dtype = np.float64 if x.dtype == np.float64 else np.float32
    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    if max(up, down) > MAX_POLYPHASE_RATIO:
        y = _fft_resample(x.astype(np.float64), -(-x.shape[0] * up // down)).astype(out_dtype)
    else:
        y = _polyphase(x.astype(np.float64), up, down).astype(out_dtype)
    return torch.from_numpy(y) if is_torch else y


def _fft_resample(x: np.ndarray, n_out: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain to ``n_out`` samples (``scipy.signal.resample``'s
    definition): the spectrum truncated or zero-padded, the Nyquist bin split or halved. For rate ratios whose
    polyphase filter would be huge (a rate like 383,999 Hz against 16 kHz); cost O(N log N) whatever the ratio."""
    n_in = x.shape[0]
    spec = np.fft.rfft(x)
    out = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    keep = min(len(spec), len(out))
    out[:keep] = spec[:keep]
    if n_out < n_in and n_out % 2 == 0:  # the new Nyquist bin holds both signs' share
        out[n_out // 2] = spec[n_out // 2].real * 2.0 if n_out // 2 < len(spec) else 0.0
    if n_out > n_in and n_in % 2 == 0:  # the old Nyquist bin is split between +/- frequencies
        out[n_in // 2] *= 0.5
    y: np.ndarray = np.fft.irfft(out, n_out) * (n_out / n_in)
    return y


def _polyphase(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``y[n] = sum_m x[m] h[n*down + half_len - m*up]``: upfirdn without building the zero-stuffed signal."""
    H, half_len = _polyphase_filter(up, down)
    n_taps = H.shape[1]
    n_in = x.shape[0]
    n_out = -(-n_in * up // down)
    t = np.arange(n_out, dtype=np.int64) * down + half_len
    m_hi, phase = t // up, t % up  # newest input sample under the filter, and which phase of h applies
    right = max(0, int(m_hi[-1]) + 1 - n_in)
    xp = np.concatenate([np.zeros(n_taps - 1), x, np.zeros(right)])
    back = np.arange(n_taps, dtype=np.int64)
    y = np.empty(n_out, dtype=np.float64)
    step = max(256, (1 << 20) // n_taps)  # bound the (rows x taps) gather to ~8 MB
    for s in range(0, n_out, step):
        idx = m_hi[s : s + step, None] - back[None, :] + (n_taps - 1)
        y[s : s + step] = np.einsum("nk,nk->n", H[phase[s : s + step]], xp[idx])
    return y


# --------------------------------------------------------------------------------------------- mel scale
def hz_to_mel(f: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney (Auditory Toolbox): linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log, lin)


def mel_to_hz(m: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                   scale: str = "htk", norm: str | None = None, n_fft: int | None = None) -> torch.Tensor:
    """Triangular mel filters, float32 ``(n_freqs, n_mels)``; ``spec (n_freqs, T)`` -> ``fb.T @ spec``.

    Bin ``k`` sits at ``k * sample_rate / n_fft`` Hz, the rfft bin frequencies (as librosa). ``n_fft`` defaults
    to the even size ``2 * (n_freqs - 1)`` (bins up to Nyquist, as torchaudio / transformers); an odd ``n_fft``
    must be given, as its last bin falls short of Nyquist. Triangle ``j`` rises from mel point ``j`` to ``j+1``
    and falls to ``j+2`` (``n_mels + 2`` points evenly spaced in mel between ``f_min`` and ``f_max``).
    ``norm="slaney"`` scales each triangle to unit area: ``2 / (f_{j+2} - f_j)``.
    """
    n_fft = 2 * (n_freqs - 1) if n_fft is None else n_fft
    if n_freqs != n_fft // 2 + 1:
        raise ConfigError(f"n_fft {n_fft} has {n_fft // 2 + 1} rfft bins, not n_freqs={n_freqs}", field="n_fft")
    f_max = sample_rate / 2 if f_max is None else float(f_max)
    if scale not in ("htk", "slaney"):
        raise ConfigError(f"scale must be 'htk' or 'slaney', got {scale!r}", field="mel_scale")
    if norm not in (None, "slaney"):
        raise ConfigError(f"norm must be None or 'slaney', got {norm!r}", field="mel_norm")
    if n_freqs < 2 or n_mels < 1:
        raise ConfigError(f"need n_freqs >= 2 and n_mels >= 1, got {n_freqs}, {n_mels}", field="n_mels")
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ConfigError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}", field="f_max")
    freqs = np.arange(n_freqs) * (sample_rate / n_fft)
    f_pts = mel_to_hz(np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2), scale)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - freqs[:, None]  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / f_diff[:-1]
    falling = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        fb *= 2.0 / (f_pts[2:] - f_pts[:-2])[None, :]
    return torch.from_numpy(fb.astype(np.float32))


# --------------------------------------------------------------------------------------------- log-mel
@dataclass(frozen=True)
class LogMel:
    """Log-mel spectrogram ``(..., N) -> (..., n_mels, T)`` float32 via ``torch.stft``."""

    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None
    log_offset: float = 1e-6
    center: bool = True
    mel_scale: str = "htk"

    def __post_init__(self) -> None:
        if not 0 < self.win_length <= self.n_fft or self.hop_length < 1:
            raise ConfigError(f"need 0 < win_length <= n_fft and hop_length >= 1, got {self.win_length}, "
                              f"{self.n_fft}, {self.hop_length}", field="audio.win_length")
        if self.log_offset <= 0:
            raise ConfigError(f"log_offset must be > 0, got {self.log_offset}", field="audio.log_offset")
        fb = mel_filterbank(self.n_fft // 2 + 1, self.n_mels, self.sample_rate, self.f_min, self.f_max,
                            scale=self.mel_scale, n_fft=self.n_fft)
        object.__setattr__(self, "_fb_t", fb.T.contiguous())  # (n_mels, n_freqs)
        object.__setattr__(self, "_window", torch.hann_window(self.win_length, periodic=True))

    def num_frames(self, n_samples: int) -> int:
        """Frames ``T`` produced for ``n_samples`` samples (after the short-clip zero extension)."""
        if self.center:
            n = max(n_samples, self.n_fft // 2 + 1) + 2 * (self.n_fft // 2)
        else:
            n = max(n_samples, self.n_fft)
        return 1 + (n - self.n_fft) // self.hop_length

    def __call__(self, wave: Wave) -> torch.Tensor:
        # Copy numpy input: arrays decoded from shards may be read-only, which torch warns about.
        x = torch.from_numpy(np.array(wave, dtype=np.float32)) if isinstance(wave, np.ndarray) else \
            torch.as_tensor(wave, dtype=torch.float32)
        if x.dim() == 0 or x.shape[-1] == 0:
            raise InvalidInput(f"expected a non-empty waveform (..., N), got shape {tuple(x.shape)}", field="audio")
        lead, n = x.shape[:-1], x.shape[-1]
        # Reflect padding needs more than n_fft // 2 samples; shorter clips are zero-extended first.
        need = self.n_fft // 2 + 1 if self.center else self.n_fft
        if n < need:
            x = torch.nn.functional.pad(x, (0, need - n))
        spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self._window.to(x.device),  # type: ignore[attr-defined]
                          center=self.center, pad_mode="reflect", return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self._fb_t.to(x.device), power)  # type: ignore[attr-defined]
        return torch.log(mel + self.log_offset).reshape(*lead, self.n_mels, -1)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogMel:
        return config_from_dict(cls, d, "logmel")


# --------------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class AudioTransform:
    """Waveform + sample rate -> resample -> crop / pad -> log-mel ``(n_mels, T)`` [-> (x - mean) / std].

    ``max_seconds`` crops longer clips: from the start, or at a random offset when ``crop="random"`` and a
    generator is passed (training). ``pad_seconds`` zero-pads shorter clips to a fixed length; leave it ``None`` to
    keep lengths variable and let `collate` pad (its ``pad_mask`` then marks the real frames).
    """

    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 0.0
    f_max: float | None = None
    mel_scale: str = "htk"
    log_offset: float = 1e-6
    max_seconds: float | None = None
    pad_seconds: float | None = None
    crop: str = "start"
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.crop not in ("start", "random"):
            raise ConfigError(f"crop must be 'start' or 'random', got {self.crop!r}", field="audio.crop")
        for name in ("max_seconds", "pad_seconds"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be > 0 or null, got {v!r}", field=f"audio.{name}")
        if self.max_seconds is not None and self.pad_seconds is not None and self.pad_seconds > self.max_seconds:
            raise ConfigError("pad_seconds must not exceed max_seconds", field="audio.pad_seconds")
        if (self.mean is None) != (self.std is None) or (self.std is not None and not self.std > 0):
            raise ConfigError("give both mean and std (std > 0), or neither", field="audio.std")
        object.__setattr__(self, "_logmel", LogMel(
            sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.win_length,
            hop_length=self.hop_length, n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max,
            log_offset=self.log_offset, mel_scale=self.mel_scale))

    @property
    def logmel(self) -> LogMel:
        return self._logmel  # type: ignore[attr-defined,no-any-return]

    def waveform(self, wave: Wave, sample_rate: int, generator: torch.Generator | None = None) -> np.ndarray:
        """The resampled, cropped, padded waveform (float32, at ``self.sample_rate``)."""
        x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
        if x.ndim != 1 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.floating):
            raise InvalidInput(f"expected a non-empty float mono waveform (N,), got {x.dtype} {x.shape}",
                               field="audio")
        x = np.asarray(resample(x.astype(np.float32, copy=False), int(sample_rate), self.sample_rate))
        if self.max_seconds is not None:
            n_max = max(1, round(self.max_seconds * self.sample_rate))
            if x.shape[0] > n_max:
                start = 0
                if self.crop == "random" and generator is not None:
                    start = int(torch.randint(0, x.shape[0] - n_max + 1, (), generator=generator))
                x = x[start : start + n_max]
        if self.pad_seconds is not None:
            n_pad = round(self.pad_seconds * self.sample_rate)
            if x.shape[0] < n_pad:
                x = np.concatenate([x, np.zeros(n_pad - x.shape[0], dtype=x.dtype)])
        return x

    def __call__(self, wave: Wave, sample_rate: int, generator: torch.Generator | None = None) -> torch.Tensor:
        feats = self.logmel(self.waveform(wave, sample_rate, generator))
        if self.mean is not None and self.std is not None:
            feats = (feats - self.mean) / self.std
        return feats

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioTransform:
        return config_from_dict(cls, d, "audio")


@dataclass(frozen=True)
class ClapAudioTransform:
    """Waveform + sample rate -> a Hugging Face CLAP checkpoint's own log-mel ``(n_mels, frames)``: resampled to
    the checkpoint's rate, cut to its first window, repeat-padded by its ``ClapFeatureExtractor`` (extra ``[hf]``).

    The config is ``{"type": "hf_clap", "path": DIR, "sample_rate": 48000, "n_mels": 64, "frames": 1001}`` (what the
    CLAP tower's ``preprocess()`` asks for). Deterministic: a clip longer than the window is cut to its first window
    before the extractor sees it (transformers would take a random crop)."""

    path: str
    sample_rate: int = 48000
    n_mels: int = 64
    frames: int = 1001
    type: str = "hf_clap"
    crop: str = "start"  # the training data path reads it; CLAP features are never randomly cropped here

    def __post_init__(self) -> None:
        if self.type != "hf_clap":
            raise ConfigError(f"type must be 'hf_clap', got {self.type!r}", field="audio.type")

    @property
    def max_seconds(self) -> float:
        return float((self.frames - 1) * self.extractor.hop_length / self.sample_rate)

    @property
    def extractor(self) -> Any:
        fe = _clap_extractor(self.path)
        if int(fe.sampling_rate) != self.sample_rate or int(fe.feature_size) != self.n_mels:
            raise ConfigError(f"the checkpoint's feature extractor is {fe.sampling_rate} Hz / {fe.feature_size} mels, "
                              f"the transform says {self.sample_rate} Hz / {self.n_mels}", field="audio")
        return fe

    def __call__(self, wave: Wave, sample_rate: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
        if x.ndim != 1 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.floating):
            raise InvalidInput(f"expected a non-empty float mono waveform (N,), got {x.dtype} {x.shape}",
                               field="audio")
        fe = self.extractor
        clip = np.asarray(resample(x.astype(np.float32, copy=False), int(sample_rate), self.sample_rate))
        clip = clip[: fe.nb_max_samples]
        mel = fe([clip], sampling_rate=self.sample_rate, truncation=fe.truncation, padding=fe.padding,
                 return_tensors="np")["input_features"]  # (1, C, T, F); C=4 identical copies for fused models
        return torch.from_numpy(np.ascontiguousarray(mel[0, 0].T, dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "path": self.path, "sample_rate": self.sample_rate, "n_mels": self.n_mels,
                "frames": self.frames}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClapAudioTransform:
        known = {"type", "path", "sample_rate", "n_mels", "frames"}
        if set(d) - known:
            raise ConfigError(f"unknown keys {sorted(set(d) - known)}", field="audio")
        if not isinstance(d.get("path"), str):
            raise ConfigError("the CLAP checkpoint folder is required", field="audio.path")
        return cls(**d)


@lru_cache(maxsize=4)
def _clap_extractor(path: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise MissingExtra("CLAP audio features need transformers: pip install 'polymodal[hf]'") from None
    try:
        return transformers.ClapFeatureExtractor.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise NotFound(f"cannot load the CLAP feature extractor: {exc}", source=path) from exc


@dataclass(frozen=True)
class WhisperAudioTransform:
    """Waveform + sample rate -> Whisper's log-mel ``(n_mels, chunk_seconds * sample_rate // hop_length)``, equal to
    transformers' ``WhisperFeatureExtractor`` with the same settings (computed here in torch; no transformers needed):
    resample, cut to / zero-pad to ``chunk_seconds``, periodic-Hann STFT (centred, reflect), power, Slaney mel
    (area-normalised, 0-8 kHz), ``log10(max(mel, 1e-10))``, floor at the clip's max - 8, ``(x + 4) / 4``; the last
    STFT frame is dropped. Config ``{"type": "hf_whisper", "n_mels": 80, "hop_length": 160, "chunk_seconds": 30,
    ...}`` (what the ``asr`` arch's ``preprocess()`` asks for)."""

    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 400
    hop_length: int = 160
    chunk_seconds: int = 30
    type: str = "hf_whisper"
    crop: str = "start"  # read by the training data path; Whisper features are never randomly cropped

    def __post_init__(self) -> None:
        if self.type != "hf_whisper":
            raise ConfigError(f"type must be 'hf_whisper', got {self.type!r}", field="audio.type")
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length", "chunk_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"must be an integer >= 1, got {v!r}", field=f"audio.{name}")
        fb = mel_filterbank(self.n_fft // 2 + 1, self.n_mels, self.sample_rate, 0.0, min(8000.0, self.sample_rate / 2),
                            scale="slaney", norm="slaney", n_fft=self.n_fft)
        object.__setattr__(self, "_fb_t", fb.T.contiguous())

    @property
    def max_seconds(self) -> float:
        return float(self.chunk_seconds)

    @property
    def frames(self) -> int:
        return self.chunk_seconds * self.sample_rate // self.hop_length

    def __call__(self, wave: Wave, sample_rate: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
        if x.ndim != 1 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.floating):
            raise InvalidInput(f"expected a non-empty float mono waveform (N,), got {x.dtype} {x.shape}",
                               field="audio")
        clip = np.asarray(resample(x.astype(np.float32, copy=False), int(sample_rate), self.sample_rate))
        n = self.chunk_seconds * self.sample_rate
        padded = torch.zeros(n, dtype=torch.float32)
        padded[: min(n, clip.shape[0])] = torch.from_numpy(np.array(clip[:n], dtype=np.float32))
        spec = torch.stft(padded, self.n_fft, self.hop_length, window=torch.hann_window(self.n_fft),
                          center=True, pad_mode="reflect", return_complex=True)
        power = spec[..., :-1].abs() ** 2
        log_spec = torch.clamp(self._fb_t @ power, min=1e-10).log10()  # type: ignore[attr-defined]
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WhisperAudioTransform:
        return config_from_dict(cls, d, "audio")


def audio_transform_from_dict(d: dict[str, Any]) -> AudioTransform | ClapAudioTransform | WhisperAudioTransform:
    """The audio transform a config describes: the library's log-mel, a CLAP checkpoint's (``type: hf_clap``) or
    Whisper's (``type: hf_whisper``)."""
    if isinstance(d, dict) and d.get("type") == "hf_clap":
        return ClapAudioTransform.from_dict(d)
    if isinstance(d, dict) and d.get("type") == "hf_whisper":
        return WhisperAudioTransform.from_dict(d)
    return AudioTransform.from_dict(d)
