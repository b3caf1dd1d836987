"""The search pipeline behind `Collection.search`: pick exact or ANN, honour filters, guarantee k hits.

- No ANN yet (flat, or an IVF kind still too small to train), ``params={"exact": True}``, or a selective
  filter (at most max(20,000, 5% of n) matching ids): exact search over the (filtered) raw vectors.
- Otherwise the ANN index with an IDSelector restricting the walk to the matching ids; rows that came back
  with fewer than min(k, matching) hits are searched again with a 4x larger nprobe / efSearch (twice), and
  any still short fall back to exact search, so a filtered search returns k hits whenever k exist."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .faiss_index import AnnIndex
from .vectors import VectorStore, exact_search

EXACT_SUBSET_MAX = 20_000
EXACT_SUBSET_FRACTION = 0.05
ENLARGE_ROUNDS = 2
PARAM_KEYS = ("nprobe", "efSearch", "k_factor")
# Upper bounds: FAISS takes efSearch as a C int, and k * k_factor candidates are fetched and re-ranked.
PARAM_MAX = {"nprobe": 1 << 20, "efSearch": 1 << 16, "k_factor": 1024}


@dataclass
class SearchResult:
    """``ids`` (n, k) int64, -1 where fewer than k hits exist; ``scores`` (n, k) float32: inner product
    (cosine similarity for cosine collections; higher is better) or squared L2 distance (lower is better),
    padded with -inf / +inf; ``metadata[i]`` one dict per real hit of query i, in rank order."""

    ids: np.ndarray
    scores: np.ndarray
    metadata: list[list[dict[str, Any]]] = field(default_factory=list)

    def hits(self, i: int = 0) -> list[dict[str, Any]]:
        """Query i's hits as ``[{"id", "score", "metadata"}]`` (JSON-friendly)."""
        out = []
        for j, (hid, score) in enumerate(zip(self.ids[i].tolist(), self.scores[i].tolist(), strict=True)):
            if hid < 0:
                break
            meta = self.metadata[i][j] if i < len(self.metadata) and j < len(self.metadata[i]) else {}
            out.append({"id": hid, "score": score, "metadata": meta})
        return out


def check_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"expected a dict, got {type(params).__name__}", field="params")
    out: dict[str, Any] = {}
    for key, v in params.items():
        if key == "exact":
            if not isinstance(v, bool):
                raise InvalidInput(f"'exact' must be true or false, got {v!r}", field="params.exact")
            out[key] = v
        elif key in PARAM_KEYS:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidInput(f"must be a positive int, got {v!r}", field=f"params.{key}")
            if v > PARAM_MAX[key]:
                raise InvalidInput(f"must be at most {PARAM_MAX[key]:,}, got {v}", field=f"params.{key}")
            out[key] = int(v)
        else:
            raise InvalidInput(f"unknown search parameter {key!r}; use {', '.join([*PARAM_KEYS, 'exact'])}",
                               field="params")
    return out


def padding(metric: str) -> float:
    return np.inf if metric == "l2" else -np.inf


def exact_ids(store: VectorStore, q: np.ndarray, k: int, metric: str, allowed: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    if allowed is None:
        base, ids = store.vectors, store.ids
    else:
        rows = store.rows(allowed)
        rows = rows[rows >= 0]
        base, ids = store.vectors[rows], store.ids[rows]
    scores, rows = exact_search(base, q, k, metric)
    return scores, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def _enlarged(params: dict[str, Any], ann: AnnIndex) -> dict[str, Any]:
    p = dict(params)
    p["nprobe"] = min(int(p.get("nprobe", 1)) * 4, ann.nlist or 1)
    p["efSearch"] = int(p.get("efSearch", 64)) * 4
    p["k_factor"] = int(p.get("k_factor", 1)) * 2
    return p


def _complete(store: VectorStore, ann: AnnIndex, metric: str, q: np.ndarray, want: int, params: dict[str, Any],
              allowed: np.ndarray | None, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-search rows that came back with fewer than ``want`` hits (a filter or tombstones starved them)."""
    for _ in range(ENLARGE_ROUNDS):
        short = (ids >= 0).sum(axis=1) < want
        if not short.any():
            return scores, ids
        params = _enlarged(params, ann)
        scores[short], ids[short] = ann.search(q[short], want, params, allowed, store)
    short = (ids >= 0).sum(axis=1) < want
    if short.any():
        scores[short], ids[short] = exact_ids(store, q[short], want, metric, allowed)
    return scores, ids


def search_ids(store: VectorStore, ann: AnnIndex, metric: str, q: np.ndarray, k: int, params: dict[str, Any],
               allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of shape (len(q), k), padded; ``allowed`` = sorted ids passing the filter, or None."""
    n = len(store)
    if allowed is not None and len(allowed) == n:
        allowed = None   # the filter keeps everything: no selector needed
    available = n if allowed is None else len(allowed)
    want = min(k, available)
    if want == 0:
        return np.full((len(q), k), padding(metric), np.float32), np.full((len(q), k), -1, np.int64)
    selective = allowed is not None and available <= max(EXACT_SUBSET_MAX, EXACT_SUBSET_FRACTION * n)
    if params.get("exact") or not ann.ready or selective:
        s, i = exact_ids(store, q, want, metric, allowed)
    else:
        s, i = ann.search(q, want, params, allowed, store)
        s, i = _complete(store, ann, metric, q, want, params, allowed, s, i)
    if want == k:
        return s, i
    scores = np.full((len(q), k), padding(metric), np.float32)
    ids = np.full((len(q), k), -1, np.int64)
    scores[:, :want], ids[:, :want] = s[:, :want], i[:, :want]
    return scores, ids
