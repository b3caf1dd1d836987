"""The front door for trained runs: ``polymodal.load(RUN).embed(text=[...])``.

``load`` reads ``RUN/config.json`` (arch, model config, transform incl. tokenizer) and
``RUN/model.safetensors``, rebuilds the model through its arch builder and returns an `EmbeddingModel`.
Embeddings leave as float32, L2-normalised numpy arrays ``(N, D)``; one modality per call.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.sample import Sample, collate
from .data.transforms.compose import SampleTransform
from .errors import ConfigError, InvalidInput, NotFound
from .train.checkpoint import MODEL, latest_checkpoint, load_model_state, read_run_config

# arch -> (module, builder(cfg: dict) -> nn.Module). The arch is explicit in every recipe and run config.
ARCH_BUILDERS: dict[str, tuple[str, str]] = {
    "alignment": ("polymodal.models.alignment", "build_alignment_model"),
    "fusion": ("polymodal.models.classifier", "build_fusion_model"),
}


def build_model(arch: str, model_cfg: dict[str, Any]) -> nn.Module:
    """Build a model from its arch and config (the ``model`` section of a recipe)."""
    if arch not in ARCH_BUILDERS:
        raise ConfigError(f"unknown arch {arch!r} (known: {', '.join(ARCH_BUILDERS)})", field="arch")
    module, func = ARCH_BUILDERS[arch]
    try:
        builder = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"arch {arch!r} is not available in this install ({exc})", field="arch") from None
    model: nn.Module = builder({**model_cfg, "arch": arch})
    return model


def load_model(run: str | os.PathLike[str], device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, SampleTransform, dict[str, Any]]:
    """(model in eval mode, evaluation transform, run config) of a run dir or one of its checkpoints."""
    path = Path(run)
    if not path.exists():
        raise NotFound("no such run directory", source=str(path))
    if not (path / MODEL).is_file():  # a run whose top-level files are missing: use its newest checkpoint
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise NotFound(f"no {MODEL} here and no checkpoint under checkpoints/", source=str(path))
        path = ckpt
    cfg = read_run_config(path)
    model = build_model(cfg["arch"], cfg["model"])
    load_model_state(model, path / MODEL)
    model.to(device).eval()
    return model, SampleTransform.from_dict(cfg["transform"]), cfg


def load(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> EmbeddingModel:
    """Load a trained alignment run for embedding (see `EmbeddingModel.embed`)."""
    model, transform, cfg = load_model(run, device)
    if cfg["arch"] != "alignment":
        raise InvalidInput(f"run is a {cfg['arch']!r} model; embedding needs an 'alignment' run", field="arch",
                           source=str(run))
    return EmbeddingModel(model, transform, cfg, torch.device(device))


class EmbeddingModel:
    """A trained alignment model plus its transform: raw inputs in, normalised embeddings out."""

    def __init__(self, model: nn.Module, transform: SampleTransform, config: dict[str, Any],
                 device: torch.device | None = None):
        self.model = model.eval()
        self.transform = transform.eval()
        self.config = config
        self.device = device or torch.device("cpu")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.model.modalities)  # type: ignore[arg-type]

    @property
    def dim(self) -> int:
        return int(self.model.dim)  # type: ignore[arg-type]

    def embed(self, text: Sequence[str] | str | None = None, image: Sequence[np.ndarray] | np.ndarray | None = None,
              audio: Sequence[tuple[np.ndarray, int]] | None = None,
              video: Sequence[np.ndarray] | np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """Embed a list of one modality: ``text`` strings, ``image`` uint8 HxWx3 arrays, ``audio``
        ``(waveform, sample_rate)`` pairs, or ``video`` uint8 TxHxWx3 arrays. Returns float32 ``(N, D)``,
        rows L2-normalised, in input order."""
        given = {m: v for m, v in (("audio", audio), ("image", image), ("text", text), ("video", video))
                 if v is not None}
        if len(given) != 1:
            got = ", ".join(given) or "nothing"
            raise InvalidInput(f"give exactly one of text=, image=, audio=, video= per call (got {got}); call "
                               "embed() once per modality", field="embed")
        (modality, items), = given.items()
        if modality not in self.modalities:
            raise InvalidInput(f"this model has no {modality} encoder (it has {', '.join(self.modalities)})",
                               field=modality)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput(f"batch_size must be a positive int, got {batch_size!r}", field="batch_size")
        samples = _samples(modality, items)
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                batch = collate(samples[start:start + batch_size], self.transform).to(self.device)
                emb = self.model.embed_batch(batch, modality)  # type: ignore[operator]
                out.append(emb.float().cpu().numpy())
        vecs = np.concatenate(out).astype(np.float32, copy=False)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)

    def __repr__(self) -> str:
        return f"EmbeddingModel(modalities={self.modalities}, dim={self.dim})"


def _samples(modality: str, items: Any) -> list[Sample]:
    if modality == "text" and isinstance(items, str):
        items = [items]
    if isinstance(items, np.ndarray) and modality in ("image", "video"):
        items = list(items) if items.ndim == (4 if modality == "image" else 5) else [items]
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise InvalidInput(f"expected a list, got {type(items).__name__}", field=modality)
    out = []
    for i, item in enumerate(items):
        src = f"{modality}[{i}]"
        if modality == "audio":
            out.append(_audio_sample(i, item, src))
        else:
            out.append(Sample(id=f"q{i}", source=src, **{modality: item}))
    return out


def _audio_sample(i: int, item: Any, src: str) -> Sample:
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise InvalidInput("expected a (waveform, sample_rate) pair", field="audio", source=src)
    wave, sr = item
    wave = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave)
    if not np.issubdtype(wave.dtype, np.floating):
        raise InvalidInput(f"expected a float waveform, got {wave.dtype}", field="audio", source=src)
    return Sample(id=f"q{i}", audio=wave.astype(np.float32, copy=False), sample_rate=sr, source=src)


__all__ = ["ARCH_BUILDERS", "EmbeddingModel", "build_model", "load", "load_model"]
