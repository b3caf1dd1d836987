"""A fake embedding model with the `EmbeddingModel.embed` interface and helpers to build request bodies.

The fake embeds deterministically and independently per item (so batched == unbatched exactly):
  text  -> bag of words: each word hashed (sha256) to a dimension, summed, normalized
  image -> mean RGB and the mean of each row band, projected by a fixed random matrix
  audio -> a few waveform statistics and the sample rate, projected
  video -> the image embedding of the mean frame
It records every call (modality, n items) and can be slowed down: delay + per_item * n seconds per call."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

SAFETY = 20.0  # seconds; only reached when the behaviour under test is broken
DIM = 16
KEY = "s3cret"  # the API key of the `client` fixture (conftest.py)
AUTH = {"Authorization": f"Bearer {KEY}"}


class FakeModel:
    modalities = ("audio", "image", "text", "video")
    dim = DIM

    def __init__(self, delay: float = 0.0, per_item: float = 0.0):
        self.delay, self.per_item = delay, per_item
        self.calls: list[tuple[str, int]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()
        self._proj = np.random.default_rng(0).standard_normal((8, DIM))

    def embed(self, text: Any = None, image: Any = None, audio: Any = None, video: Any = None) -> np.ndarray:
        given = {m: v for m, v in (("audio", audio), ("image", image), ("text", text), ("video", video))
                 if v is not None}
        assert len(given) == 1, given.keys()
        (modality, items), = given.items()
        with self._lock:
            self.calls.append((modality, len(items)))
            self.threads.add(threading.current_thread().name)
        if self.delay or self.per_item:
            time.sleep(self.delay + self.per_item * len(items))
        rows = [getattr(self, f"_{modality}")(x) for x in items]
        out = np.stack(rows).astype(np.float32) if rows else np.zeros((0, DIM), np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _text(self, s: str) -> np.ndarray:
        if not isinstance(s, str) or not s.strip():
            from polymodal.errors import InvalidInput
            raise InvalidInput("text is empty", field="text")
        v = np.zeros(DIM)
        for word in s.lower().split():
            h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
            v[h % DIM] += 1.0
        return v

    def _image(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float64) / 255.0
        bands = np.array_split(x.mean(axis=(1, 2)), 5)
        feats = np.concatenate([x.mean(axis=(0, 1)), [b.mean() if b.size else 0.0 for b in bands]])
        return feats @ self._proj + 0.01

    def _audio(self, item: tuple[np.ndarray, int]) -> np.ndarray:
        wave, sr = item
        w = np.asarray(wave, np.float64)
        feats = np.array([w.mean(), w.std(), np.abs(w).max(), len(w) / sr, sr / 48000, w[: len(w) // 2].std(),
                          w[len(w) // 2:].std(), 1.0])
        return feats @ self._proj

    def _video(self, vid: np.ndarray) -> np.ndarray:
        return self._image(vid.mean(axis=0).astype(np.uint8))


def png_b64(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wav_b64(wave: np.ndarray, sr: int) -> str:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def solid(color: tuple[int, int, int], h: int = 24, w: int = 32) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = color
    img[: h // 3] //= 2  # not quite uniform, so row bands differ
    return img


def tone(freq: float, seconds: float = 0.25, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t) * np.linspace(0.2, 1.0, len(t))).astype(np.float32)


def err(resp: Any, status: int, field: str | None = "-", kind: str | None = None) -> dict[str, Any]:
    """The error body of ``resp``, checked: its status, the error's shape, and its field / type when given."""
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert set(body) == {"type", "message", "field"}
    if field != "-":
        assert body["field"] == field, body
    if kind:
        assert body["type"] == kind, body
    return dict(body)


@contextmanager
def running(tmp_path: Path, model: Any = None, **settings: Any) -> Iterator[str]:
    """A server on 127.0.0.1 (any free port) in a thread, as `polymodal serve` runs it; yields its base URL once it
    listens."""
    from polymodal.serve import ServeSettings, create_app
    from polymodal.serve.server import bind, make_server, url_of

    cfg = ServeSettings(**settings)
    app = create_app(model or FakeModel(), root=tmp_path / "root", collection=tmp_path / "root" / "main", settings=cfg)
    sock = bind("127.0.0.1", 0)
    listening = threading.Event()
    server = make_server(app, cfg, log_level="warning", on_listening=listening.set)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert listening.wait(SAFETY), "the server did not start"
        yield url_of(sock, "127.0.0.1").rstrip("/")
    finally:
        server.should_exit = True
        thread.join(SAFETY)
        sock.close()
