"""`EmbeddingModel`: a trained alignment model plus its transform; raw inputs in, float32 L2-normalised
numpy embeddings out. `polymodal.load` returns one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..data.collate import collate
from ..data.sample import Batch, Sample
from ..data.transforms.compose import SampleTransform
from ..errors import InvalidInput
from .alignment import AlignmentModel


class TowerRunner(Protocol):
    """Runs the towers outside torch (the runtime hook; `polymodal.models.onnx` is the one implementation):
    ``embed_batch`` computes what `AlignmentModel.embed_batch` does -- the normalised (N, D) embeddings of the
    rows of a collated batch that have ``modality`` -- with another runtime."""

    runtime: str                  # e.g. "onnx"
    modalities: tuple[str, ...]
    dim: int
    fingerprint: str | None       # None: the torch model's (the runner embeds exactly like it)

    def embed_batch(self, batch: Batch, modality: str) -> torch.Tensor: ...


class EmbeddingModel:
    """A trained alignment model plus its transform: raw inputs in, normalised embeddings out.

    ``runner`` (optional) runs the towers in another runtime (onnxruntime, see `polymodal.models.onnx`); the
    transform and collation stay polymodal's. ``model`` may then be None (an ONNX export without torch weights).
    """

    def __init__(self, model: AlignmentModel | None, transform: SampleTransform, config: dict[str, Any],
                 device: torch.device | None = None, name: str | None = None, runner: TowerRunner | None = None):
        if model is None and runner is None:
            raise InvalidInput("an EmbeddingModel needs a torch model or a runner", field="model")
        self.model = model.eval() if model is not None else None
        self.runner = runner
        self.transform = transform.eval()
        self.config = config
        self.device = device or torch.device("cpu")
        self.name = name   # where it came from (the run `polymodal.load` read), for messages and records
        self._fingerprint: str | None = runner.fingerprint if runner is not None else None

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of what decides the embeddings: the architecture, model and transform config and every
        tensor of the state dict (names, dtypes, shapes, bytes, in sorted order). Two models embed alike
        exactly when their fingerprints match; a collection remembers the fingerprint of the model that
        filled it. Computed once, at first use (a pass over the weights). A runner may give its own (an INT8
        export embeds differently from its source, see docs/export.md)."""
        if self._fingerprint is None:
            assert self.model is not None  # a runner without a fingerprint always comes with the torch model
            self._fingerprint = fingerprint(self.model, self.config)
        return self._fingerprint

    @property
    def temperature(self) -> tuple[float, float | None] | None:
        """(logit multiplier, bias or None) the model scores pairs with: exp of the alignment model's learned
        ``logit_scale`` (a pretrained checkpoint's own) and SigLIP's ``logit_bias``; an ONNX export carries its
        source's in the manifest. Zero-shot probabilities use it. None when unknown (an older export)."""
        if self.model is not None:
            bias = self.model.logit_bias
            return (float(torch.exp(self.model.logit_scale.detach())),
                    None if bias is None else float(bias.detach()))
        t = self.config.get("temperature")
        if isinstance(t, dict) and isinstance(t.get("logit_scale"), int | float):
            b = t.get("logit_bias")
            return float(np.exp(t["logit_scale"])), (float(b) if isinstance(b, int | float) else None)
        return None

    def temperature_config(self) -> dict[str, float | None] | None:
        """`temperature` as the log-parameterised JSON an export's manifest keeps."""
        t = self.temperature
        return None if t is None else {"logit_scale": float(np.log(t[0])), "logit_bias": t[1]}

    @property
    def runtime(self) -> str:
        """Where the towers run: "torch", or the runner's runtime (e.g. "onnx")."""
        return self.runner.runtime if self.runner is not None else "torch"

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.runner.modalities if self.runner is not None else self._torch().modalities

    @property
    def dim(self) -> int:
        return self.runner.dim if self.runner is not None else self._torch().dim

    def _torch(self) -> AlignmentModel:
        assert self.model is not None  # see __init__: no runner means a torch model
        return self.model

    def embed_batch(self, batch: Batch, modality: str) -> torch.Tensor:
        """Normalised (N, D) embeddings of the rows of a collated ``batch`` that have ``modality``, by the
        runner when there is one, else by the torch model."""
        if self.runner is not None:
            return self.runner.embed_batch(batch, modality)
        return self._torch().embed_batch(batch, modality)

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
                emb = self.embed_batch(batch, modality)
                out.append(emb.float().cpu().numpy())
        # rows are unit vectors already: AlignmentModel.encode normalises in float32 (the one normalisation)
        return np.concatenate(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"EmbeddingModel(modalities={self.modalities}, dim={self.dim})"


FINGERPRINT_KEYS = ("arch", "model", "transform")   # the parts of a run config that change the embeddings


def fingerprint(model: torch.nn.Module, config: dict[str, Any]) -> str:
    """See `EmbeddingModel.fingerprint`."""
    h = hashlib.sha256(b"polymodal-embedding-v1\n")
    relevant = {k: config[k] for k in FINGERPRINT_KEYS if k in config} or config
    h.update(json.dumps(relevant, sort_keys=True, default=str).encode("utf-8"))
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"\n{key}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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


__all__ = ["EmbeddingModel", "TowerRunner"]
