"""`GenerativeModel`: a trained generative run behind one call, raw inputs in and strings out.

``polymodal.load(RUN).generate(image=..., audio=..., video=..., prompt=..., **decoding)``: a captioner takes
images (or clips), a VQA model images/clips and questions (``prompt``), an ASR model ``(waveform, rate)``
pairs, a language model prompts. One item or a list per argument (lists of equal length); the result is a list
of strings in input order. Decoding settings are `polymodal.lm.DecodingOptions` fields (``num_beams=3``,
``do_sample=True, top_p=0.9, seed=0``, ``stop=["."]``, ...)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.collate import collate
from ..data.sample import Sample
from ..data.transforms.compose import SampleTransform
from ..errors import InvalidInput
from ..lm.decoding import DecodingOptions
from ..rundir import CONFIG, read_run_config
from .generator import TextGenerator, TokenStreamer
from .loading import load_model, resolve_run

GENERATIVE_ARCHS: tuple[str, ...] = ("lm", "captioner", "vqa", "asr", "mllm")
MAX_BATCH = 64  # rows decoded together


class GenerativeModel:
    def __init__(self, model: TextGenerator, transform: SampleTransform, config: dict[str, Any],
                 device: torch.device, name: str = ""):
        self.model, self.transform, self.config = model, transform, config
        self.device, self.name = device, name

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    @property
    def needs_prompt(self) -> bool:
        return self.task in ("vqa", "lm")

    def generate(self, image: Any = None, audio: Any = None, video: Any = None,
                 prompt: str | Sequence[str] | None = None, *, batch_size: int = 16,
                 streamer: TokenStreamer | None = None, **decoding: Any) -> list[str]:
        """Strings generated for the inputs (see the module docstring)."""
        options = DecodingOptions.from_dict(decoding)
        samples = self.samples(image=image, audio=audio, video=video, prompt=prompt)
        prompts = _listed(prompt, "prompt") if prompt is not None else None
        if prompts is not None and len(prompts) == 1 and len(samples) > 1:
            prompts = prompts * len(samples)
        return self.generate_samples(samples, prompts, options, batch_size=batch_size, streamer=streamer)

    def samples(self, image: Any = None, audio: Any = None, video: Any = None,
                prompt: str | Sequence[str] | None = None) -> list[Sample]:
        """The inputs as samples (checked against what the model reads)."""
        given = {m: v for m, v in (("audio", audio), ("image", image), ("video", video)) if v is not None}
        extra = sorted(set(given) - set(self.modalities))
        if extra:
            raise InvalidInput(f"this {self.task} model reads {', '.join(self.modalities) or 'only a prompt'}, "
                               f"not {extra[0]}", field=extra[0])
        missing = [m for m in self.modalities if m not in given]
        if self.modalities and len(missing) == len(self.modalities):
            raise InvalidInput(f"give {' or '.join(f'{m}=' for m in self.modalities)}", field=self.modalities[0])
        if self.needs_prompt and prompt is None:
            what = "a question" if self.task == "vqa" else "a prompt"
            raise InvalidInput(f"this {self.task} model needs {what} (prompt=)", field="prompt")
        columns = {m: _items(m, v) for m, v in given.items()}
        if prompt is not None and not self.modalities:
            columns["text"] = _listed(prompt, "prompt")
        sizes = {m: len(v) for m, v in columns.items()}
        if len(set(sizes.values())) > 1:
            raise InvalidInput(f"inputs differ in length: {sizes}", field="generate")
        n = next(iter(sizes.values()))
        out = []
        for i in range(n):
            kw: dict[str, Any] = {}
            for m, items in columns.items():
                if m == "audio":
                    kw["audio"], kw["sample_rate"] = items[i]
                else:
                    kw[m] = items[i]
            out.append(Sample(id=f"g{i}", source=f"input[{i}]", **kw))
        return out

    def generate_samples(self, samples: Sequence[Sample], prompts: Sequence[str | None] | None = None,
                         options: DecodingOptions | None = None, *, batch_size: int = 16,
                         streamer: TokenStreamer | None = None) -> list[str]:
        """Strings for samples already built (from a data dir, or `samples`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
            raise InvalidInput(f"batch_size must be an integer in [1, {MAX_BATCH}], got {batch_size!r}",
                               field="batch_size")
        if prompts is not None and len(prompts) != len(samples):
            raise InvalidInput(f"expected {len(samples)} prompts, got {len(prompts)}", field="prompt")
        if streamer is not None and len(samples) > batch_size:
            raise InvalidInput("streaming decodes one batch: give at most batch_size inputs", field="stream")
        options = options or DecodingOptions()
        out: list[str] = []
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                part = list(samples[start:start + batch_size])
                batch = collate(part, self.transform).to(self.device)
                p = None if prompts is None else list(prompts[start:start + batch_size])
                out.extend(self.model.generate(batch, p, options, streamer))
        return out

    def __repr__(self) -> str:
        return f"GenerativeModel(task={self.task!r}, reads={self.modalities})"


def run_arch(run: str | os.PathLike[str]) -> str | None:
    """The arch of a polymodal run folder (None when it is not one or has no readable config)."""
    try:
        return str(read_run_config(resolve_run(Path(run)))["arch"])
    except Exception:  # not a run: the caller tries the other loaders
        return None


def load_generative_model(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> GenerativeModel:
    path = Path(run)
    arch = run_arch(path)
    if arch not in GENERATIVE_ARCHS:
        raise InvalidInput(f"{path} is not a generative run (arch {arch!r}; generative: "
                           f"{', '.join(GENERATIVE_ARCHS)})", field="arch", source=str(path / CONFIG))
    model, transform, cfg = load_model(path, device)
    if not isinstance(model, TextGenerator):
        raise InvalidInput(f"arch {arch!r} did not build a generator", field="arch", source=str(path / CONFIG))
    return GenerativeModel(model, transform, cfg, torch.device(device), name=str(path))


def _listed(value: Any, field: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise InvalidInput("expected a string or a list of strings", field=field)
    return list(value)


def _items(modality: str, value: Any) -> list[Any]:
    if modality == "audio":
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
            value = [value]
        items = list(value)
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise InvalidInput("expected (waveform, sample_rate) pairs", field=f"audio[{i}]")
            wave = np.asarray(item[0], dtype=np.float32)
            out.append((wave, int(item[1])))
        return out
    ndim = 3 if modality == "image" else 4
    if isinstance(value, np.ndarray):
        return [value] if value.ndim == ndim else list(value)
    if not isinstance(value, Sequence):
        raise InvalidInput(f"expected an array or a list of arrays, got {type(value).__name__}", field=modality)
    return list(value)


__all__ = ["GENERATIVE_ARCHS", "GenerativeModel", "load_generative_model", "run_arch"]
