"""The front door of a text->image run: ``polymodal.load(RUN).generate_images(["a red star above a blue square"])``.

`ImageGenerator` is the protocol the CLI (`polymodal generate RUN --prompt ...`), the HTTP service
(``POST /v1/images/generations``) and the report's gallery program against; `TextToImageModel` implements it for
the ``latent_diffusion`` and ``token_ar`` archs (`polymodal.models.t2i_diffusion`, `polymodal.models.t2i_ar`).

Seeds: image ``k`` of a call (prompt-major: prompt ``i``'s ``j``-th image is ``k = i * n + j``) draws its noise
from its own generator seeded ``seed + k``, so an image does not depend on the batch it was made in, and
``generate_images(p, n=4, seed=0)[2]`` equals ``generate_images(p, n=4, seed=2)[0]``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import InvalidInput
from ..rundir import CONFIG, read_run_config
from .loading import load_model, resolve_run

IMAGE_ARCHS: tuple[str, ...] = ("latent_diffusion", "token_ar")
SAMPLERS: tuple[str, ...] = ("ddim", "dpm")  # diffusion samplers (token models ignore the choice)
MAX_IMAGES = 16  # images one call may ask for (n x prompts): bounds the time and memory of one request
MAX_STEPS = 250  # sampling steps one call may ask for
MAX_GUIDANCE = 30.0


@dataclass(frozen=True)
class ImageOptions:
    """How to sample: ``steps`` (diffusion: denoising steps; ignored by token models), ``guidance``
    (classifier-free guidance scale; 1 = none), ``seed`` (None: a fresh random seed), ``sampler`` (diffusion:
    "ddim" | "dpm" | "ddpm"; None: the run's default), ``temperature``/``top_k`` (token models)."""

    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    sampler: str | None = None
    temperature: float = 1.0
    top_k: int | None = None

    def check(self) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or not 1 <= self.steps <= MAX_STEPS):
            raise InvalidInput(f"must be an integer in [1, {MAX_STEPS}], got {self.steps!r}", field="steps")
        if self.guidance is not None and not (0.0 <= float(self.guidance) <= MAX_GUIDANCE):
            raise InvalidInput(f"must be a number in [0, {MAX_GUIDANCE}], got {self.guidance!r}", field="guidance")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise InvalidInput(f"must be one of {list(SAMPLERS)}, got {self.sampler!r}", field="sampler")
        if not (0.0 < float(self.temperature) <= 10.0):
            raise InvalidInput(f"must be in (0, 10], got {self.temperature!r}", field="temperature")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise InvalidInput(f"must be an integer >= 1, got {self.top_k!r}", field="top_k")


Progress = Callable[[int, int], None]  # (images done, images in all)


@runtime_checkable
class ImageGenerator(Protocol):
    """What serves, writes and shows generated pictures. ``generate_images`` returns ``len(prompts) * n`` uint8
    ``(image_size, image_size, 3)`` arrays, prompt-major; bad prompts/options raise `InvalidInput`."""

    name: str
    task: str  # "text_to_image"
    langs: tuple[str, ...]
    image_size: int

    def generate_images(self, prompts: str | Sequence[str], n: int = 1, options: ImageOptions | None = None,
                        progress: Progress | None = None, batch_size: int = 8,
                        max_images: int | None = None) -> list[np.ndarray]: ...


def check_request(prompts: str | Sequence[str], n: int, options: ImageOptions | None,
                  max_images: int | None = None) -> tuple[list[str], ImageOptions]:
    """The prompts as a list and the options, checked (non-empty prompts, ``1 <= n``, at most ``max_images``
    images when given: the service passes `MAX_IMAGES`)."""
    rows = [prompts] if isinstance(prompts, str) else list(prompts)
    if not rows:
        raise InvalidInput("give at least one prompt", field="prompt")
    for i, p in enumerate(rows):
        if not isinstance(p, str) or not p.strip():
            raise InvalidInput(f"prompt {i} must be a non-empty string, got {p!r}", field="prompt")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInput(f"must be an integer >= 1, got {n!r}", field="n")
    if max_images is not None and len(rows) * n > max_images:
        raise InvalidInput(f"{len(rows)} prompts x n={n} = {len(rows) * n} images, more than the {max_images} one "
                           "request may ask for", field="n")
    opts = options or ImageOptions()
    opts.check()
    return rows, opts


def image_seeds(seed: int | None, count: int) -> list[int]:
    """The per-image seeds of a call (``seed + k``; a random base when ``seed`` is None)."""
    base = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
    return [base + k for k in range(count)]


def is_image_run(run: str | os.PathLike[str]) -> bool:
    """True when ``run`` is a polymodal run of a text->image arch (reads its config.json only; a run still in
    training, with no top-level config yet, is asked of its newest checkpoint)."""
    path = Path(run)
    try:
        cfg = read_run_config(path) if (path / CONFIG).is_file() else read_run_config(resolve_run(path))
        return str(cfg["arch"]) in IMAGE_ARCHS
    except Exception:  # not a run (the caller tries other loaders)
        return False


def load_image_generator(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> TextToImageModel:
    """A text->image run (arch ``latent_diffusion`` or ``token_ar``) as an `ImageGenerator`."""
    path = Path(run)
    model, _, cfg = load_model(path, device)
    if cfg.get("arch") not in IMAGE_ARCHS or not callable(getattr(model, "sample_images", None)):
        raise InvalidInput(f"{path} is not a text->image run (arch {cfg.get('arch')!r}; text->image: "
                           f"{', '.join(IMAGE_ARCHS)})", field="arch", source=str(path / CONFIG))
    return TextToImageModel(model, name=str(path))


class TextToImageModel:
    """`ImageGenerator` over a loaded text->image module (``model.sample_images(prompts, seeds, options)``)."""

    task = "text_to_image"

    def __init__(self, model: Any, name: str):
        self.model, self.name = model, name
        self.langs: tuple[str, ...] = tuple(model.langs)
        self.image_size: int = int(model.image_size)

    def generate_images(self, prompts: str | Sequence[str], n: int = 1, options: ImageOptions | None = None,
                        progress: Progress | None = None, batch_size: int = 8, max_images: int | None = None,
                        **option_values: Any) -> list[np.ndarray]:
        """``n`` pictures per prompt (prompt-major). Options as an `ImageOptions` or as keywords
        (``guidance=3, steps=25, seed=0, sampler="dpm"``)."""
        if option_values:
            unknown = sorted(set(option_values) - {f.name for f in dataclasses.fields(ImageOptions)})
            if unknown:
                raise InvalidInput(f"unknown option {unknown[0]!r}", field=unknown[0])
            options = dataclasses.replace(options or ImageOptions(), **option_values)
        rows, opts = check_request(prompts, n, options, max_images)
        wanted = [p for p in rows for _ in range(n)]
        seeds = image_seeds(opts.seed, len(wanted))
        out: list[np.ndarray] = []
        for start in range(0, len(wanted), batch_size):
            out.extend(self.model.sample_images(wanted[start:start + batch_size], seeds[start:start + batch_size],
                                                opts))
            if progress is not None:
                progress(len(out), len(wanted))
        return out

    def __repr__(self) -> str:
        return f"TextToImageModel({self.name!r}, size={self.image_size}, langs={self.langs})"
