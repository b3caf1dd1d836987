"""Queries from any modality: the one embed -> fuse -> search pipeline behind `polymodal.search`, the
`polymodal search` command and the service's ``POST /v1/search``.

    embed_query(model, text=..., ...)             {input: (D,) embedding}, one ``model.embed`` call per input
    search_query(collection, embeddings, ...)     fuse the inputs and search (the service calls this with the
                                                  embeddings its micro-batcher returned)
    search_with_model(collection, model, ...)     both

Fusion: ``q = sum_m w_m * e_m / ||e_m||``, then ``q / ||q||`` (weights default to 1 each). A spoken query plus
a text hint, say, becomes one point between the two in the shared space.

Each vector is normalised once, where it enters unnormalised:
- model embeddings are L2-normalised float32 by contract (`Embedder`): checked here, never rescaled;
- a raw user ``vector`` is normalised as it enters the query, so a weight means the same for every input and a
  lone vector is searched as a direction whatever the metric;
- the weighted sum of several inputs is renormalised (it is not a unit vector); a lone input is the query;
- the collection then takes the unit query as it is (``normalized=True``); a raw vector given straight to
  `Collection.search` is normalised there instead, for cosine.
`fuse` is the same fusion for vectors of any norm: it normalises each input first."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ..data.sample import MODALITIES
from ..errors import InvalidInput, ModelOutputError
from .collection import Collection
from .identity import check_model
from .searching import SearchResult

INPUTS = (*MODALITIES, "vector")
UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed of a model embedding (float32 rounding is ~1e-6)


class Embedder(Protocol):
    """What the query pipeline needs of a model (an `EmbeddingModel`, or anything shaped like one): ``embed``
    takes a list of one modality (``audio``: (waveform, sample_rate) pairs) and returns float32 ``(N, dim)``
    rows, L2-normalised; ``modalities`` names those it embeds. Optional: ``fingerprint`` (a string that
    changes whenever the embeddings would, e.g. a hash of config and weights) and ``name`` (e.g. the run):
    with a fingerprint, a collection filled by another model is refused (`identity.check_model`)."""

    @property
    def modalities(self) -> Sequence[str]: ...

    @property
    def dim(self) -> int: ...

    def embed(self, text: Any = None, image: Any = None, audio: Any = None, video: Any = None) -> np.ndarray: ...


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


def _one_row(e: Any, field: str, dtype: type[np.floating[Any]]) -> np.ndarray:
    """A (D,) ``dtype`` view (or copy) of a (D,) or (1, D) array."""
    try:
        v = np.asarray(e, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"cannot read as a vector ({exc})", field=field) from None
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.size == 0:
        raise InvalidInput(f"expected one (D,) vector, got shape {v.shape}", field=field)
    return v


def _unit(e: Any, field: str) -> np.ndarray:
    """A raw vector, L2-normalised: the one normalisation of a vector that enters unnormalised."""
    v = _one_row(e, field, np.float64)
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0:
        raise InvalidInput("vector is zero or not finite", field=field)
    return (v / norm).astype(np.float32)


def _embedding(e: Any, field: str) -> np.ndarray:
    """A model embedding, checked against the contract (finite, unit norm) but not rescaled. A violation is the
    model's fault (ModelOutputError), not the caller's: a raw vector of any norm goes in as 'vector'."""
    v = _one_row(e, field, np.float32)
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or abs(norm - 1.0) > UNIT_TOLERANCE:
        raise ModelOutputError(f"the model's {field} embedding has norm {norm:.6g}; model embeddings must be "
                               "L2-normalised", field=field)
    return v


def _combine(units: Mapping[str, np.ndarray], weights: Mapping[str, Any] | None) -> np.ndarray:
    """``normalize(sum_m w_m u_m)`` of (D,) unit vectors; a lone input is already the (unit) query."""
    if not units:
        raise InvalidInput("no query input given", field="query")
    w = check_weights(weights, list(units))
    if len(units) == 1:
        return next(iter(units.values()))
    total: np.ndarray | None = None
    for name, u in units.items():
        if total is not None and u.shape != total.shape:
            raise InvalidInput(f"dimension {u.shape[0]} differs from the other inputs' {total.shape[0]}", field=name)
        term = w[name] * u.astype(np.float64)
        total = term if total is None else total + term
    assert total is not None
    norm = float(np.linalg.norm(total))
    if norm < 1e-12:
        raise InvalidInput("the weighted inputs cancel out (zero vector)", field="weights")
    return (total / norm).astype(np.float32)


def fuse(embeddings: Mapping[str, Any], weights: Mapping[str, Any] | None = None) -> np.ndarray:
    """One (D,) float32 unit vector from several (D,) or (1, D) vectors of any norm (see the module doc)."""
    return _combine({name: _unit(e, name) for name, e in embeddings.items()}, weights)


def query_vector(embeddings: Mapping[str, Any], weights: Mapping[str, Any] | None, dim: int) -> np.ndarray:
    """The unit (D,) query of `search_query`: model embeddings under their modality (unit, checked), a raw user
    vector under "vector" (normalised here), fused with ``weights``."""
    units = {}
    for name, e in embeddings.items():
        if name not in INPUTS:
            raise InvalidInput(f"unknown query input {name!r}; use {', '.join(INPUTS)}", field="query")
        v = _unit(e, name) if name == "vector" else _embedding(e, name)
        if v.shape[0] != dim:
            raise InvalidInput(f"dimension {v.shape[0]} does not match the collection's {dim}", field=name)
        units[name] = v
    return _combine(units, weights)


def search_query(collection: Collection, embeddings: Mapping[str, Any], weights: Mapping[str, Any] | None = None,
                 k: int = 10, filter: dict[str, Any] | None = None, params: dict[str, Any] | None = None, *,
                 model: Any = None, allow_model_mismatch: bool = False) -> SearchResult:
    """Fuse and search: ``embeddings`` maps "audio"/"image"/"text"/"video" to the model's (D,) embedding of
    that input (as `embed_query` or the service's batcher returns it) and "vector" to a raw user vector.
    ``model``: the model that embedded them, checked against the one that filled the collection (a mismatch
    is refused, or only warned about with ``allow_model_mismatch``)."""
    if model is not None and any(name != "vector" for name in embeddings):
        check_model(collection.model, model, allow_model_mismatch)
    q = query_vector(embeddings, weights, collection.dim)
    return collection.search(q[None, :], k=k, filter=filter, params=params, normalized=True)


def embed_query(model: Embedder, text: str | None = None, image: np.ndarray | None = None,
                audio: tuple[np.ndarray, int] | None = None, video: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """{modality: (D,) embedding} for each input given, one ``model.embed`` call per modality."""
    given = {"text": text, "image": image, "audio": audio, "video": video}
    out = {}
    supported = tuple(model.modalities)
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


def search_with_model(collection: Collection, model: Embedder | None, text: str | None = None,
                      image: np.ndarray | None = None, audio: tuple[np.ndarray, int] | None = None,
                      video: np.ndarray | None = None, vector: np.ndarray | None = None,
                      weights: Mapping[str, float] | None = None, k: int = 10, filter: dict[str, Any] | None = None,
                      params: dict[str, Any] | None = None, allow_model_mismatch: bool = False) -> SearchResult:
    """Embed each given input (``audio`` = (waveform, sample_rate)), fuse them with ``weights`` (keys: text,
    image, audio, video, vector), and search. ``model`` may be None when only ``vector`` is given. A model
    whose fingerprint differs from the one that filled the collection is refused (`ModelMismatch`) before
    anything is embedded, unless ``allow_model_mismatch=True`` (then a warning)."""
    embs: dict[str, np.ndarray] = {}
    if any(v is not None for v in (text, image, audio, video)):
        if model is None:
            raise InvalidInput("a model is needed to embed text/image/audio/video queries", field="model")
        check_model(collection.model, model, allow_model_mismatch)
        embs = embed_query(model, text=text, image=image, audio=audio, video=video)
    if vector is not None:
        embs["vector"] = vector
    return search_query(collection, embs, weights, k=k, filter=filter, params=params)
