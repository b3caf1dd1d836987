"""A fake text->image model (`polymodal.models.t2i_front.ImageGenerator`) for the service, CLI and report tests.

Its pictures depend only on (prompt, seed), through sha256 and no RNG stream: the background colour comes from the
prompt, an 8x8 square's place and colour from the seed (`fake_picture`, the reference a test compares with). It
follows the protocol: prompt-major order, picture k of a call drawn with seed ``seed + k``, ``progress`` after each
batch, bad requests refused by `check_request`. A prompt with "boom" fails (InvalidInput, field prompt), an unknown
sampler too (field sampler). It records every call and can hold one until a gate opens.

Plain numpy and polymodal only (no FastAPI): tests outside tests/serve load it by path."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

import numpy as np

from polymodal.errors import InvalidInput
from polymodal.models.t2i_front import ImageOptions, check_request, image_seeds

SIZE = 16
SAFETY = 20.0
SAMPLERS = (None, "ddim", "dpm", "ddpm")


def fake_picture(prompt: str, seed: int, size: int = SIZE) -> np.ndarray:
    """The fake's picture of ``prompt`` with ``seed``: uint8 (size, size, 3)."""
    p = hashlib.sha256(prompt.encode("utf-8")).digest()
    s = hashlib.sha256(str(seed).encode("ascii")).digest()
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.frombuffer(p[:3], np.uint8)
    x, y = s[0] % (size - 7), s[1] % (size - 7)
    img[y:y + 8, x:x + 8] = np.frombuffer(s[2:5], np.uint8)
    return img


class FakeImageModel:
    task = "text_to_image"

    def __init__(self, name: str = "runs/t2i", image_size: int = SIZE, langs: tuple[str, ...] = ("en", "zh")):
        self.name, self.image_size, self.langs = name, image_size, langs
        self.calls: list[tuple[list[str], int, ImageOptions, int]] = []   # (prompts, n, options, batch_size)
        self.gate: threading.Event | None = None   # set: calls wait for it
        self.entered = threading.Event()           # a call has started
        self.threads: set[str] = set()

    def generate_images(self, prompts: str | Sequence[str], n: int = 1, options: ImageOptions | None = None,
                        progress: Callable[[int, int], None] | None = None, batch_size: int = 8,
                        max_images: int | None = None) -> list[np.ndarray]:
        rows, opts = check_request(prompts, n, options, max_images)
        if opts.sampler not in SAMPLERS:
            raise InvalidInput(f"unknown sampler {opts.sampler!r}", field="sampler")
        if any("boom" in p for p in rows):
            raise InvalidInput("the fake refuses prompts with 'boom'", field="prompt")
        self.calls.append((rows, n, opts, batch_size))
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(SAFETY), "the test never opened the gate"
        wanted = [p for p in rows for _ in range(n)]
        seeds = image_seeds(opts.seed, len(wanted))
        out: list[np.ndarray] = []
        for start in range(0, len(wanted), batch_size):
            out += [fake_picture(p, s, self.image_size) for p, s in
                    zip(wanted[start:start + batch_size], seeds[start:start + batch_size], strict=True)]
            if progress is not None:
                progress(len(out), len(wanted))
        return out
