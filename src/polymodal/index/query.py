"""Queries from any modality: embed each input with a model, fuse several into one vector, search.

Fusion: ``q = sum_m w_m * e_m / ||e_m||``, then ``q / ||q||`` (weights default to 1 each). A spoken query plus
a text hint, say, becomes one point between the two in the shared space."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .collection import Collection
from .searching import SearchResult

INPUTS = ("audio", "image", "text", "video", "vector")


def check_weights(weights: Mapping[str, Any] | None, given: list[str]) -> dict[str, float]:
    out = dict.fromkeys(given, 1.0)
    for key, w in (weights or {}).items():
        if key not in given:
            raise InvalidInput(f"weight for {key!r}, which is not among the query inputs ({', '.join(given)})",
                               field="weights")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InvalidInput(f"weight for {key!r} must be a finite number >= 0, got {w!r}", field="weights")
        out[key] = float(w)
    if not any(out.values()):
        raise InvalidInput("all weights are zero", field="weights")
    return out


def fuse(embeddings: Mapping[str, np.ndarray], weights: Mapping[str, Any] | None = None) -> np.ndarray:
    """One (D,) float32 unit vector from several (D,) or (1, D) embeddings (see the module doc)."""
    if not embeddings:
        raise InvalidInput("no query input given", field="query")
    w = check_weights(weights, list(embeddings))
    total: np.ndarray | None = None
    for name, e in embeddings.items():
        v = np.asarray(e, dtype=np.float64).reshape(-1)
        norm = np.linalg.norm(v)
        if not np.isfinite(v).all() or norm == 0:
            raise InvalidInput("embedding is zero or not finite", field=name)
        total = w[name] * v / norm if total is None else total + w[name] * v / norm
        if total.shape != v.shape:
            raise InvalidInput(f"dimension {v.shape[0]} differs from the other inputs' {total.shape[0]}", field=name)
    assert total is not None
    norm = np.linalg.norm(total)
    if norm < 1e-12:
        raise InvalidInput("the weighted inputs cancel out (zero vector)", field="weights")
    return (total / norm).astype(np.float32)


def embed_inputs(model: Any, text: str | None = None, image: np.ndarray | None = None,
                 audio: tuple[np.ndarray, int] | None = None, video: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{modality: (D,) embedding} for each input given, one ``model.embed`` call per modality."""
    given = {"text": text, "image": image, "audio": audio, "video": video}
    out = {}
    supported = tuple(getattr(model, "modalities", ()))
    for name, value in given.items():
        if value is None:
            continue
        if name not in supported:
            raise InvalidInput(f"this model embeds {', '.join(supported) or 'nothing'}, not {name}", field=name)
        emb = np.asarray(model.embed(**{name: [value]}), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != 1:
            raise InvalidInput(f"model.embed returned shape {emb.shape}, expected (1, D)", field=name)
        out[name] = emb[0]
    return out


def search_with_model(collection: Collection, model: Any, text: str | None = None, image: np.ndarray | None = None,
                      audio: tuple[np.ndarray, int] | None = None, video: np.ndarray | None = None,
                      vector: np.ndarray | None = None, weights: Mapping[str, float] | None = None, k: int = 10,
                      filter: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> SearchResult:
    """Embed each given input (``audio`` = (waveform, sample_rate)), fuse them with ``weights`` (keys: text,
    image, audio, video, vector), and search. ``model`` may be None when only ``vector`` is given."""
    embs: dict[str, np.ndarray] = {}
    if any(v is not None for v in (text, image, audio, video)):
        if model is None:
            raise InvalidInput("a model is needed to embed text/image/audio/video queries", field="model")
        embs = embed_inputs(model, text=text, image=image, audio=audio, video=video)
    if vector is not None:
        embs["vector"] = np.asarray(vector, dtype=np.float32)
    q = fuse(embs, weights)
    return collection.search(q[None, :], k=k, filter=filter, params=params)
