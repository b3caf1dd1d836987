"""Text-to-speech with eSpeak NG (the ``[speech]`` extra: ``espeakng-loader`` ships the library and its data).

We drive the C API through ctypes in SYNCHRONOUS mode: ``espeak_Synth`` returns only when the whole
utterance has gone through our callback, which collects the int16 samples. Output is mono float32 at
the engine's rate (22050 Hz).

Determinism: eSpeak NG keeps synthesis state in function-level statics (pitch flutter index, wave
phase, echo buffer), so the same text spoken twice in one process gives slightly different samples,
and the result would depend on what the process said before. Data sets must be byte-identical
whatever the number of worker processes, so before every utterance we unload and reload the library
(``dlclose``/``dlopen``, ~3 ms), which resets all of that state. A lock serialises threads; each
process (fork or spawn) gets its own engine, checked by pid."""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InvalidInput, MissingExtra, NotFound, require

# Voice families per caption language, and the variants we draw from (eSpeak NG "!v" voice variants,
# language-independent: formants, pitch range, breathiness). "" is the language's default voice.
BASE_VOICES: dict[str, tuple[str, ...]] = {"en": ("en", "en-us", "en-gb-x-rp"), "zh": ("cmn",)}
VARIANTS: tuple[str, ...] = ("", "+m1", "+m2", "+m3", "+m4", "+m7", "+f1", "+f2", "+f3", "+f4", "+croak")
RATE_RANGE = {"en": (140, 200), "zh": (130, 180)}  # words per minute
PITCH_RANGE = (30, 70)  # eSpeak base pitch 0..100, 50 = the voice's normal

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when the data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK, _EE_NOT_FOUND = 0, 2
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """One speaker setting: eSpeak voice name (e.g. ``"en-us+f3"``), rate (wpm) and base pitch (0..99)."""

    name: str
    rate: int = 175
    pitch: int = 50
    seed: int = 0  # seeds eSpeak's noise generator (breathy variants)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate, "pitch": self.pitch, "seed": self.seed}


def random_voice(rng: np.random.Generator, lang: str) -> Voice:
    """Draw a voice for a caption language (``"en"`` or ``"zh"``) from the sample's RNG."""
    if lang not in BASE_VOICES:
        raise InvalidInput(f"no voice for language {lang!r} (known: {sorted(BASE_VOICES)})", field="lang")
    bases = BASE_VOICES[lang]
    base = bases[int(rng.integers(len(bases)))]
    variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
    lo, hi = RATE_RANGE[lang]
    return Voice(base + variant, int(rng.integers(lo, hi + 1)), int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                 int(rng.integers(2**31)))


class _Engine:
    """The loaded library plus our callback. Not thread-safe by itself: use through `_LOCK`."""

    def __init__(self) -> None:
        loader = require("espeakng_loader", "speech")
        self._lib_path: str = loader.get_library_path()
        self._data_path: bytes = os.fsencode(loader.get_data_path())
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: the C side holds only a pointer
        self._lib: ctypes.CDLL | None = None
        self.sample_rate = 0
        self._load()

    def _collect(self, wav: Any, n: int, _events: Any) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    def _load(self) -> None:
        lib = ctypes.CDLL(self._lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise MissingExtra(f"eSpeak NG failed to initialise with data at {self._data_path.decode()!r}; "
                               "reinstall it with: pip install --force-reinstall 'polymodal[speech]'")
        lib.espeak_SetSynthCallback(self._callback)
        # breathy variants (f2, f3, ...) add noise from eSpeak's own generator, which it seeds from the clock
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        self._lib, self.sample_rate = lib, int(rate)

    def unload(self) -> None:
        import _ctypes  # dlclose lives here (CPython, POSIX)

        if self._lib is not None:
            self._lib.espeak_Terminate()
            _ctypes.dlclose(self._lib._handle)
            self._lib = None

    def _reset(self) -> None:
        self.unload()
        self._load()

    def synth(self, text: str, voice: Voice, seed: int) -> np.ndarray:
        self._reset()  # fresh state for every utterance (see the module docstring)
        lib = self._lib
        assert lib is not None
        if self._set_seed is not None:
            self._set_seed(seed)
        status = lib.espeak_SetVoiceByName(voice.name.encode("ascii"))
        if status == _EE_NOT_FOUND:
            raise NotFound(f"eSpeak NG has no voice {voice.name!r}", field="voice")
        if status != _EE_OK:
            raise InvalidInput(f"eSpeak NG rejected voice {voice.name!r} (status {status})", field="voice")
        lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate), 0)
        lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != _EE_OK:
            raise InvalidInput(f"eSpeak NG failed to speak (status {status})", field="text")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


_LOCK = threading.Lock()
_ENGINE: tuple[int, _Engine] | None = None  # (pid, engine): a forked child must not reuse its parent's


def _engine() -> _Engine:
    global _ENGINE
    pid = os.getpid()
    if _ENGINE is None or _ENGINE[0] != pid:
        if _ENGINE is not None:
            # a forked child inherits its parent's loaded library; drop that reference too, or
            # dlclose would never really unload it and the state reset would silently stop working
            _ENGINE[1].unload()
        _ENGINE = (pid, _Engine())
    return _ENGINE[1]


def available() -> bool:
    """True when the ``[speech]`` extra is installed and the engine starts."""
    try:
        with _LOCK:
            _engine()
        return True
    except MissingExtra:
        return False


def trim_silence(wave: np.ndarray, sample_rate: int, threshold: float = 0.01, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``threshold`` x peak, keeping ``margin_s`` seconds of each."""
    if wave.size == 0:
        return wave
    loud = np.flatnonzero(np.abs(wave) > threshold * float(np.abs(wave).max()))
    if loud.size == 0:
        return wave
    margin = int(margin_s * sample_rate)
    return wave[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def synthesize(text: str, voice: str | Voice = "en", rate: int = 175, pitch: int = 50,
               *, seed: int = 0, trim: bool = True) -> tuple[np.ndarray, int]:
    """Speak ``text`` -> ``(float32 waveform in [-1, 1], sample_rate)``.

    ``voice`` is an eSpeak NG voice name: ``"en"``, ``"en-us"``, ``"cmn"`` (Mandarin: give it Chinese
    characters), optionally with a variant (``"en+f3"``, ``"cmn+m2"``), or a `Voice` (then ``rate`` and
    ``pitch`` come from it). ``rate`` is in words per minute (80..450), ``pitch`` 0..99 (50 = normal).
    ``seed`` drives the breath noise of some variants (a `Voice` carries its own). The same arguments always give the same samples."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("nothing to speak: text is empty", field="text")
    v = voice if isinstance(voice, Voice) else Voice(str(voice), rate, pitch, seed)
    if not 80 <= v.rate <= 450:
        raise InvalidInput(f"rate must be in 80..450 words per minute, got {v.rate}", field="rate")
    if not 0 <= v.pitch <= 99:
        raise InvalidInput(f"pitch must be in 0..99, got {v.pitch}", field="pitch")
    with _LOCK:
        engine = _engine()
        pcm = engine.synth(text, v, v.seed % (2**31))
        sr = engine.sample_rate
    if pcm.size == 0:
        raise InvalidInput(f"eSpeak NG produced no audio for {text[:40]!r} with voice {v.name!r}", field="text")
    wave = pcm.astype(np.float32) / np.float32(32768.0)
    return (trim_silence(wave, sr) if trim else wave), sr
