"""Run a polymodal ONNX export without polymodal and without torch (written into every export as ``embed_onnx.py``).

Needs only ``pip install onnxruntime numpy pillow`` (plus ``tokenizers`` for an export whose text tokenizer is a
Hugging Face one)::

    from embed_onnx import Embedder
    model = Embedder("exports/clip")                      # the export folder (the one with polymodal_export.json)
    model.embed(text=["a red circle", "一个红色的圆"])     # float32 (N, D), rows L2-normalised
    model.embed(image=[uint8 H x W x 3 arrays])
    model.embed(audio=[(float waveform (N,), sample_rate)])
    model.embed(video=[uint8 T x H x W x 3 arrays])

    python embed_onnx.py exports/clip --text "a red circle" --image cat.png [--json]

The preprocessing re-implements polymodal's evaluation path (``SampleTransform`` + ``collate``) from the
manifest's ``transform`` section, so the embeddings match ``polymodal.load(DIR, runtime="onnx").embed(...)``:
byte / char / Hugging Face tokenizers, the image resize + center crop + normalisation (PIL, as polymodal), the
audio path (band-limited resampling, crop, pad, log-mel) and video frame sampling. Preprocessing polymodal
delegates to other packages (a CLAP checkpoint's ``hf_clap`` audio features, the ``open_clip`` tokenizer) is not
re-implemented: embedding that modality raises `Unsupported` naming it (the other modalities still work).

The graph files are checked against the sizes and sha256 the manifest records; the INT8 graph of a quantized tower
runs unless ``precision="fp32"``. Threads: ``intra_op_num_threads`` from ``threads=``, else env
``POLYMODAL_ORT_THREADS``, else ``os.cpu_count()``; ``inter_op_num_threads`` 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]
from PIL import Image

EXPORT_FILE = "polymodal_export.json"
EXPORT_FORMAT = "polymodal-onnx-export"
EXPORT_VERSION = 1
THREADS_ENV = "POLYMODAL_ORT_THREADS"
MODALITIES = ("audio", "image", "text", "video")
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
BATCH_SIZE = 64


class ExportError(ValueError):
    """A bad export folder or bad input."""


class Unsupported(ExportError):
    """Preprocessing that this standalone runner does not re-implement (use polymodal for it)."""


# ================================================================================================= text

def _check_max_len(max_len: int) -> None:
    if max_len < 2:
        raise ExportError(f"max_text_len must be >= 2 (bos + eos), got {max_len}")


class ByteTokenizer:
    """polymodal's byte tokenizer: 0 pad, 1 bos, 2 eos, byte b -> b + 3; truncation at a character boundary."""

    def encode(self, text: str, max_len: int) -> list[int]:
        _check_max_len(max_len)
        data = text.encode("utf-8")
        if len(data) + 2 > max_len:
            cut = max_len - 2
            while cut > 0 and (data[cut] & 0xC0) == 0x80:
                cut -= 1
            data = data[:cut]
        return [1] + [b + 3 for b in data] + [2]


class CharTokenizer:
    """polymodal's character tokenizer: 0 pad, 1 bos, 2 eos, 3 unk, then the vocabulary's characters."""

    def __init__(self, chars: Sequence[str], lowercase: bool = False):
        self.lowercase = bool(lowercase)
        self.index = {c: i + 4 for i, c in enumerate(chars)}

    def encode(self, text: str, max_len: int) -> list[int]:
        _check_max_len(max_len)
        if self.lowercase:
            text = text.lower()
        body = [self.index.get(c, 3) for c in text][: max_len - 2]
        return [1] + body + [2]


class HFTokenizer:
    """A Hugging Face fast tokenizer (``tokenizer.json``) run by the ``tokenizers`` package, as polymodal's
    ``HFTokenizer`` runs it through transformers: special tokens added, truncated to ``max_len`` (longest_first,
    on the side ``tokenizer_config.json`` names, the closing special token kept), no padding."""

    def __init__(self, folder: Path):
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise Unsupported(f"{file} is missing: the standalone runner needs a Hugging Face *fast* tokenizer "
                              "(tokenizer.json); use polymodal for this export")
        try:
            import tokenizers
        except ImportError:
            raise ExportError("this export's text tokenizer needs the tokenizers package: "
                              "pip install tokenizers") from None
        self.tok = tokenizers.Tokenizer.from_file(str(file))
        config: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        truncation = self.tok.truncation
        self.side = str(config.get("truncation_side") or (truncation or {}).get("direction") or "right")
        self.tok.no_padding()
        if hasattr(self.tok, "encode_special_tokens"):  # tokenizers >= 0.15; transformers sets it per call
            self.tok.encode_special_tokens = bool(config.get("split_special_tokens", False))
        self._max_len: int | None = None

    def encode(self, text: str, max_len: int) -> list[int]:
        _check_max_len(max_len)
        if self._max_len != max_len:
            self.tok.enable_truncation(max_len, stride=0, strategy="longest_first", direction=self.side)
            self._max_len = max_len
        return [int(i) for i in self.tok.encode(text, add_special_tokens=True).ids]


def _tokenizer_folder(path: str, root: Path) -> Path:
    """The folder a manifest's ``text.path`` names: relative to the export, absolute, or ``pkg://MODULE/SUB``
    (a folder inside an installed package, e.g. the packaged MiniLM)."""
    if path.startswith("pkg://"):
        import importlib.util

        module, _, sub = path[len("pkg://"):].partition("/")
        try:
            spec = importlib.util.find_spec(module) if module else None
        except (ImportError, ValueError):
            spec = None
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        if not roots:
            raise ExportError(f"the text tokenizer lives in the package {module!r} ({path}), which is not "
                              f"installed: pip install {module.replace('_', '-')}")
        return Path(roots[0]) / sub
    folder = Path(path)
    return folder if folder.is_absolute() else root / folder


def _text_tokenizer(cfg: dict[str, Any], root: Path) -> ByteTokenizer | CharTokenizer | HFTokenizer:
    kind = cfg.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(list(cfg.get("chars") or []), bool(cfg.get("lowercase", False)))
    if kind == "hf":
        folder = _tokenizer_folder(str(cfg.get("path", "")), root)
        if not folder.is_dir():
            raise ExportError(f"the text tokenizer folder {folder} does not exist")
        return HFTokenizer(folder)
    raise Unsupported(f"text tokenizer kind {kind!r} is not supported by the standalone runner (it runs byte, "
                      "char and Hugging Face tokenizers); use polymodal for this export")


# ================================================================================================= image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_IMAGE_KEYS = {"size", "resize", "crop", "mean", "std", "interpolation", "resize_to", "random_crop", "crop_scale",
               "hflip", "crop_rounding"}  # random_crop, crop_scale and hflip are training-only


class ImageTransform:
    """uint8 ``H x W x 3`` -> float32 ``(3, size, size)``: polymodal's evaluation path (PIL resize of the shorter
    side to ``resize_to`` or ``size`` (or both sides with ``crop="squash"``), center crop, ``(x/255 - mean) / std``)."""

    def __init__(self, cfg: dict[str, Any], where: str = "image"):
        _known(cfg, _IMAGE_KEYS, where)
        self.size = int(cfg.get("size", 64))
        self.resize = bool(cfg.get("resize", True))
        self.crop = str(cfg.get("crop", "center"))
        self.rounding = str(cfg.get("crop_rounding", "floor"))
        self.resize_to = None if cfg.get("resize_to") is None else int(cfg["resize_to"])
        interpolation = str(cfg.get("interpolation", "bicubic"))
        if interpolation not in _RESAMPLE or self.crop not in ("center", "squash") or \
                self.rounding not in ("floor", "round"):
            raise Unsupported(f"{where}: interpolation {interpolation!r}, crop {self.crop!r}, crop_rounding "
                              f"{self.rounding!r} are not supported by the standalone runner")
        self.resample = _RESAMPLE[interpolation]
        self.mean = np.asarray(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(cfg.get("std", (0.5, 0.5, 0.5)), dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = int(image.shape[0]), int(image.shape[1])
        pil = Image.fromarray(np.ascontiguousarray(image))
        s = self.size
        if not self.resize:
            if h < s or w < s:
                raise ExportError(f"image {h}x{w} is smaller than size {s} and resize=False")
            pil = self._center_crop(pil)
        else:
            r = s if self.resize_to is None else self.resize_to
            if self.crop == "squash":
                new_w = new_h = r
            else:
                new_long = int(r * max(h, w) / min(h, w))
                new_w, new_h = (r, new_long) if w <= h else (new_long, r)
            if (new_w, new_h) != (w, h):
                pil = pil.resize((new_w, new_h), self.resample)
            if (new_w, new_h) != (s, s):
                pil = self._center_crop(pil)
        x = np.asarray(pil, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32)

    def _center_crop(self, pil: Image.Image) -> Image.Image:
        w, h = pil.size
        s = self.size
        if self.rounding == "round":
            top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        return pil.crop((left, top, left + s, top + s))


# ================================================================================================= audio

@lru_cache(maxsize=32)
def _polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """The Kaiser-windowed sinc low-pass of ``scipy.signal.resample_poly`` (beta 5, 10 * max(up, down) taps per
    side) split into ``up`` phases."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    m = np.arange(2 * half_len + 1, dtype=np.float64) - half_len
    cutoff = 1.0 / max_rate
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(2 * half_len + 1, 5.0)
    h = h / h.sum() * up
    n_taps = -(-len(h) // up)
    H = np.zeros((up, n_taps), dtype=np.float64)
    for p in range(up):
        taps = h[p::up]
        H[p, : len(taps)] = taps
    H.setflags(write=False)
    return H, half_len


MAX_POLYPHASE_RATIO = 4096


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


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited, zero-phase resampling of a mono float32 waveform (polymodal's ``resample``)."""
    if orig_sr == new_sr:
        return x
    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    if max(up, down) > MAX_POLYPHASE_RATIO:  # polymodal: frequency-domain resampling for awkward ratios
        return _fft_resample(x.astype(np.float64), -(-x.shape[0] * up // down)).astype(np.float32)
    H, half_len = _polyphase_filter(up, down)
    xd = x.astype(np.float64)
    n_taps = H.shape[1]
    n_in = xd.shape[0]
    n_out = -(-n_in * up // down)
    t = np.arange(n_out, dtype=np.int64) * down + half_len
    m_hi, phase = t // up, t % up
    right = max(0, int(m_hi[-1]) + 1 - n_in)
    xp = np.concatenate([np.zeros(n_taps - 1), xd, np.zeros(right)])
    back = np.arange(n_taps, dtype=np.int64)
    y = np.empty(n_out, dtype=np.float64)
    step = max(256, (1 << 20) // n_taps)
    for s in range(0, n_out, step):
        idx = m_hi[s : s + step, None] - back[None, :] + (n_taps - 1)
        y[s : s + step] = np.einsum("nk,nk->n", H[phase[s : s + step]], xp[idx])
    return y.astype(np.float32)


def _hz_to_mel(f: Any, scale: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return np.asarray(2595.0 * np.log10(1.0 + f / 700.0))
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    log = min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.asarray(np.where(f >= min_log_hz, log, f / f_sp))


def _mel_to_hz(m: Any, scale: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return np.asarray(700.0 * (10.0 ** (m / 2595.0) - 1.0))
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return np.asarray(np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m))


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float | None,
                   scale: str) -> np.ndarray:
    """polymodal's triangular mel filters at the rfft bin frequencies, float32 ``(n_fft // 2 + 1, n_mels)``."""
    n_freqs = n_fft // 2 + 1
    top = sample_rate / 2 if f_max is None else float(f_max)
    if scale not in ("htk", "slaney") or not 0 <= f_min < top <= sample_rate / 2 or n_mels < 1:
        raise ExportError(f"bad mel settings: scale {scale!r}, f_min {f_min}, f_max {f_max}, n_mels {n_mels}")
    freqs = np.arange(n_freqs) * (sample_rate / n_fft)
    f_pts = _mel_to_hz(np.linspace(_hz_to_mel(f_min, scale), _hz_to_mel(top, scale), n_mels + 2), scale)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - freqs[:, None]
    rising = -slopes[:, :-2] / f_diff[:-1]
    falling = slopes[:, 2:] / f_diff[1:]
    return np.asarray(np.maximum(0.0, np.minimum(rising, falling)), dtype=np.float32)


_AUDIO_KEYS = {"sample_rate", "n_mels", "n_fft", "win_length", "hop_length", "f_min", "f_max", "mel_scale",
               "log_offset", "max_seconds", "pad_seconds", "crop", "mean", "std"}  # crop "random": training only


class AudioTransform:
    """(waveform, rate) -> float32 log-mel ``(n_mels, T)``: resample, crop to ``max_seconds`` from the start,
    zero-pad to ``pad_seconds``, periodic-Hann STFT (centred, reflect padding), power, mel,
    ``log(mel + log_offset)``, optional ``(x - mean) / std``: polymodal's ``AudioTransform`` evaluation path."""

    def __init__(self, cfg: dict[str, Any]):
        if cfg.get("type") is not None:
            raise Unsupported(f"audio preprocessing type {cfg['type']!r} (a checkpoint's own feature extractor) is "
                              "not supported by the standalone runner; use polymodal for this export's audio")
        _known(cfg, _AUDIO_KEYS, "audio")
        self.sample_rate = int(cfg.get("sample_rate", 16000))
        self.n_fft = int(cfg.get("n_fft", 400))
        self.win_length = int(cfg.get("win_length", 400))
        self.hop = int(cfg.get("hop_length", 160))
        self.n_mels = int(cfg.get("n_mels", 64))
        self.log_offset = float(cfg.get("log_offset", 1e-6))
        self.max_seconds = cfg.get("max_seconds")
        self.pad_seconds = cfg.get("pad_seconds")
        self.mean, self.std = cfg.get("mean"), cfg.get("std")
        if not 0 < self.win_length <= self.n_fft or self.hop < 1 or self.log_offset <= 0:
            raise ExportError("bad STFT settings in the audio transform")
        fb = mel_filterbank(self.n_fft, self.n_mels, self.sample_rate, float(cfg.get("f_min", 0.0)),
                            cfg.get("f_max"), str(cfg.get("mel_scale", "htk")))
        self.fb_t = np.ascontiguousarray(fb.T)  # (n_mels, n_freqs)
        n = np.arange(self.win_length, dtype=np.float64)
        window = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / self.win_length)  # periodic Hann
        left = (self.n_fft - self.win_length) // 2
        self.window = np.zeros(self.n_fft, dtype=np.float32)
        self.window[left : left + self.win_length] = window.astype(np.float32)

    def waveform(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        x = resample(wave, int(sample_rate), self.sample_rate)
        if self.max_seconds is not None:
            n_max = max(1, round(float(self.max_seconds) * self.sample_rate))
            x = x[:n_max]
        if self.pad_seconds is not None:
            n_pad = round(float(self.pad_seconds) * self.sample_rate)
            if x.shape[0] < n_pad:
                x = np.concatenate([x, np.zeros(n_pad - x.shape[0], dtype=x.dtype)])
        return x

    def logmel(self, x: np.ndarray) -> np.ndarray:
        half = self.n_fft // 2
        if x.shape[0] < half + 1:  # reflect padding needs more than n_fft // 2 samples
            x = np.concatenate([x, np.zeros(half + 1 - x.shape[0], dtype=np.float32)])
        xp = np.pad(x.astype(np.float32), (half, half), mode="reflect")
        n_frames = 1 + (xp.shape[0] - self.n_fft) // self.hop
        frames = np.lib.stride_tricks.as_strided(
            xp, shape=(n_frames, self.n_fft), strides=(xp.strides[0] * self.hop, xp.strides[0]))
        spec = np.fft.rfft(frames * self.window, axis=1)  # float32 frames: float32 FFT, like torch.stft
        power = (spec.real.astype(np.float32) ** 2 + spec.imag.astype(np.float32) ** 2).T  # (n_freqs, T)
        mel = self.fb_t @ power
        return np.asarray(np.log(mel + np.float32(self.log_offset)), dtype=np.float32)

    def __call__(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        feats = self.logmel(self.waveform(wave, sample_rate))
        if self.mean is not None and self.std is not None:
            feats = ((feats - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)
        return feats


# ================================================================================================= video

class VideoTransform:
    """uint8 ``T x H x W x 3`` -> float32 ``(frames, 3, S, S)``: ``frames`` frames at segment middles (all frames
    of a shorter clip with ``short="keep"``, some repeated with ``"repeat"``), each through the image transform."""

    def __init__(self, cfg: dict[str, Any]):
        _known(cfg, {"frames", "image", "mode", "short"}, "video")  # mode "random": training only
        self.frames = int(cfg.get("frames", 8))
        self.short = str(cfg.get("short", "keep"))
        if self.short not in ("keep", "repeat") or self.frames < 1:
            raise Unsupported(f"video: short {self.short!r} / frames {self.frames} not supported")
        self.image = ImageTransform(dict(cfg.get("image") or {}), "video.image")

    def __call__(self, video: np.ndarray) -> np.ndarray:
        n = int(video.shape[0])
        if n < self.frames and self.short == "keep":
            idx = list(range(n))
        else:
            idx = [(2 * i + 1) * n // (2 * self.frames) for i in range(self.frames)]
        return np.stack([self.image(video[i]) for i in idx])


def _known(cfg: Any, keys: set[str], where: str) -> None:
    if not isinstance(cfg, dict):
        raise ExportError(f"{where}: expected a JSON object in the manifest's transform")
    unknown = sorted(set(cfg) - keys)
    if unknown:
        raise Unsupported(f"{where}: transform settings {unknown} are not supported by the standalone runner "
                          "(made by a newer polymodal?); use polymodal for this export")


# ================================================================================================= collate

def _pad_stack(items: list[np.ndarray], axis: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """polymodal's collate: stack, zero-padding ``axis`` to the longest item; pad_mask True = real step."""
    if axis is None:
        return np.stack(items), None
    ax = axis % items[0].ndim
    lengths = [int(x.shape[ax]) for x in items]
    longest = max(lengths)
    out = np.zeros((len(items),) + tuple(longest if i == ax else s for i, s in enumerate(items[0].shape)),
                   dtype=items[0].dtype)
    mask = np.zeros((len(items), longest), dtype=bool)
    for row, (x, n) in enumerate(zip(items, lengths, strict=True)):
        index = [slice(None)] * x.ndim
        index[ax] = slice(0, n)
        out[row][tuple(index)] = x
        mask[row, :n] = True
    return out, mask


_TIME_AXIS: dict[str, int | None] = {"text": 0, "audio": -1, "video": 0, "image": None}


# ================================================================================================= runner

def _session_options(threads: int | None) -> Any:
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        threads = int(env) if env.isdigit() else (os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ExportError(f"threads must be a positive integer, got {threads!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE" else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


def _verified(root: Path, entry: dict[str, Any]) -> bytes:
    file = root / str(entry["file"])
    if not file.is_file():
        raise ExportError(f"graph file missing from the export: {file}")
    data = file.read_bytes()
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ExportError(f"{file} does not match the checksum in {EXPORT_FILE} (damaged or replaced)")
    return data


class Embedder:
    """An export folder's towers in onnxruntime, with polymodal's evaluation preprocessing."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, precision: str | None = None):
        self.path = Path(path)
        file = self.path / EXPORT_FILE
        if not file.is_file():
            raise ExportError(f"{self.path} is not a polymodal export (no {EXPORT_FILE})")
        manifest = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
            raise ExportError(f"{file} is not a polymodal ONNX export manifest")
        if manifest.get("version") != EXPORT_VERSION:
            raise ExportError(f"export format version {manifest.get('version')!r} is not supported (this runner "
                              f"reads version {EXPORT_VERSION})")
        if precision not in (None, "fp32"):
            raise ExportError(f"precision must be None or 'fp32', got {precision!r}")
        self.manifest = manifest
        self.dim = int(manifest["dim"])
        towers: dict[str, Any] = manifest["towers"]
        self.modalities: tuple[str, ...] = tuple(sorted(towers))
        self.fingerprint = str(manifest["source"]["fingerprint"] if precision == "fp32" else manifest["fingerprint"])
        options = _session_options(threads)
        self.sessions: dict[str, Any] = {}
        for m in self.modalities:
            graph = _verified(self.path, towers[m]["fp32" if precision == "fp32" else "runtime"])
            self.sessions[m] = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self._inputs = {m: [i.name for i in s.get_inputs()] for m, s in self.sessions.items()}
        cfg: dict[str, Any] = dict(manifest["transform"])
        self.max_text_len = int(cfg.get("max_text_len", 64))
        self.transforms: dict[str, Any] = {}
        self.unsupported: dict[str, str] = {}   # modality -> why its preprocessing is not available here
        build: dict[str, Callable[[Any], Any]] = {"text": lambda c: _text_tokenizer(c, self.path),
                                                  "image": ImageTransform, "audio": AudioTransform,
                                                  "video": VideoTransform}
        for m in self.modalities:
            if cfg.get(m) is None:
                self.unsupported[m] = f"the export has no {m} preprocessing"
                continue
            try:
                self.transforms[m] = build[m](cfg[m])
            except Unsupported as exc:
                self.unsupported[m] = str(exc)

    def embed(self, text: Sequence[str] | str | None = None, image: Sequence[np.ndarray] | np.ndarray | None = None,
              audio: Sequence[tuple[np.ndarray, int]] | None = None,
              video: Sequence[np.ndarray] | np.ndarray | None = None, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Embed a list of one modality; float32 ``(N, D)``, rows L2-normalised, in input order."""
        given = {m: v for m, v in (("audio", audio), ("image", image), ("text", text), ("video", video))
                 if v is not None}
        if len(given) != 1:
            raise ExportError(f"give exactly one of text=, image=, audio=, video= per call (got "
                              f"{', '.join(given) or 'nothing'})")
        (modality, items), = given.items()
        if modality not in self.sessions:
            raise ExportError(f"this export has no {modality} tower (it has {', '.join(self.modalities)})")
        if modality in self.unsupported:
            raise Unsupported(self.unsupported[modality])
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ExportError(f"batch_size must be a positive int, got {batch_size!r}")
        items = _as_list(modality, items)
        values = [self._preprocess(modality, x, i) for i, x in enumerate(items)]
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(values), batch_size):
            stacked, mask = _pad_stack(values[start : start + batch_size], _TIME_AXIS[modality])
            feed = {"values": stacked}
            if mask is not None:
                feed["pad_mask"] = mask
            result = self.sessions[modality].run(None, {k: feed[k] for k in self._inputs[modality]})[0]
            out.append(np.asarray(result, dtype=np.float32))
        return np.concatenate(out)

    def _preprocess(self, modality: str, x: Any, i: int) -> np.ndarray:
        where = f"{modality}[{i}]"
        t = self.transforms[modality]
        if modality == "text":
            if not isinstance(x, str) or not x.strip():
                raise ExportError(f"{where}: expected a non-empty string")
            return np.asarray(t.encode(x, self.max_text_len), dtype=np.int64)
        if modality == "audio":
            if not isinstance(x, tuple | list) or len(x) != 2:
                raise ExportError(f"{where}: expected a (waveform, sample_rate) pair")
            wave, sr = np.asarray(x[0]), x[1]
            if not np.issubdtype(wave.dtype, np.floating) or wave.ndim != 1 or wave.shape[0] == 0:
                raise ExportError(f"{where}: expected a non-empty float mono waveform (N,), got "
                                  f"{wave.dtype} {wave.shape}")
            wave = wave.astype(np.float32, copy=False)
            if not np.isfinite(wave).all():
                raise ExportError(f"{where}: waveform contains NaN or inf")
            if isinstance(sr, bool) or not isinstance(sr, int | np.integer) or \
                    not MIN_SAMPLE_RATE <= int(sr) <= MAX_SAMPLE_RATE:
                raise ExportError(f"{where}: expected an integer sample rate in [{MIN_SAMPLE_RATE}, "
                                  f"{MAX_SAMPLE_RATE}] Hz, got {sr!r}")
            return t(wave, int(sr))  # type: ignore[no-any-return]
        ndim = 3 if modality == "image" else 4
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != ndim or x.shape[-1] != 3 or \
                min(x.shape) == 0:
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ExportError(f"{where}: expected a uint8 {'H x W x 3' if ndim == 3 else 'T x H x W x 3'} array, "
                              f"got {got}")
        return t(x)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"Embedder({str(self.path)!r}, modalities={self.modalities}, dim={self.dim})"


def _as_list(modality: str, items: Any) -> list[Any]:
    if modality == "text" and isinstance(items, str):
        return [items]
    if isinstance(items, np.ndarray) and modality in ("image", "video"):
        return list(items) if items.ndim == (4 if modality == "image" else 5) else [items]
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ExportError(f"{modality}: expected a list, got {type(items).__name__}")
    return list(items)


# ================================================================================================= files + CLI

def read_image(path: str) -> np.ndarray:
    """An image file as uint8 ``H x W x 3`` RGB (as polymodal decodes it)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """An audio file as (float32 mono waveform, rate): channels averaged, as polymodal decodes it. WAV (PCM
    8/16/24/32-bit or float) with the standard library; other formats need the soundfile package."""
    if path.lower().endswith(".wav"):
        import wave as wavmod

        try:
            return _read_wav(path)
        except (wavmod.Error, ValueError, EOFError):
            pass  # a WAV the stdlib cannot read (e.g. float, extensible): try soundfile
    try:
        import soundfile
    except ImportError:
        raise ExportError(f"{path}: reading this audio format needs the soundfile package "
                          "(pip install soundfile); 8/16/24/32-bit PCM WAV needs nothing") from None
    wave, sr = soundfile.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(wave.mean(axis=1, dtype=np.float32)), int(sr)


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    import wave as wavmod

    with wavmod.open(path, "rb") as f:
        width, channels, sr = f.getsampwidth(), f.getnchannels(), f.getframerate()
        raw = f.readframes(f.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    elif width in (2, 4):
        x = np.frombuffer(raw, dtype=f"<i{width}").astype(np.float32) / np.float32(2.0 ** (8 * width - 1))
    else:
        raise ValueError(f"unsupported WAV sample width {width}")
    frames = x.reshape(-1, channels)
    if frames.shape[0] == 0:
        raise ExportError(f"{path}: the audio file has no samples")
    return np.ascontiguousarray(frames.mean(axis=1, dtype=np.float32)), int(sr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="embed_onnx.py", description="Embed text, images, audio or video with a polymodal ONNX export "
        "(no torch, no polymodal needed).")
    here = Path(__file__).resolve().parent
    parser.add_argument("export", nargs="?", default=str(here) if (here / EXPORT_FILE).is_file() else None,
                        help="the export folder (holds polymodal_export.json; default: this script's folder "
                             "when it is an export)")
    parser.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    parser.add_argument("--audio", action="append", default=[], help="an audio file, e.g. WAV (repeatable)")
    parser.add_argument("--video", action="append", default=[],
                        help="a video as a .npy file of uint8 T x H x W x 3 frames (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--fp32", action="store_true", help="run the fp32 graphs of INT8 towers")
    parser.add_argument("--json", action="store_true", help="print JSON instead of one line per input")
    args = parser.parse_args(argv)
    jobs: list[tuple[str, str, Any]] = [("text", t, t) for t in args.text]
    jobs += [("image", p, read_image(p)) for p in args.image]
    jobs += [("audio", p, read_audio(p)) for p in args.audio]
    jobs += [("video", p, np.load(p)) for p in args.video]
    if args.export is None:
        parser.error("give the export folder")
    if not jobs:
        parser.error("nothing to embed: give --text, --image, --audio or --video")
    model = Embedder(args.export, threads=args.threads, precision="fp32" if args.fp32 else None)
    rows = []
    for m in MODALITIES:
        mine = [(name, x) for kind, name, x in jobs if kind == m]
        if mine:
            given: dict[str, Any] = {m: [x for _, x in mine]}
            vectors = model.embed(**given)
            rows += [(m, name, v) for (name, _), v in zip(mine, vectors, strict=True)]
    if args.json:
        print(json.dumps({"export": str(args.export), "dim": model.dim, "fingerprint": model.fingerprint,
                          "embeddings": [{"modality": m, "input": name, "embedding": [float(f) for f in v]}
                                         for m, name, v in rows]}, ensure_ascii=False))
    else:
        for m, name, v in rows:
            print(f"{m}\t{name}\t" + " ".join(f"{float(f):.6g}" for f in v))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
