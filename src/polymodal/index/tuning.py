"""Choosing an index (`auto`) and tuning its search parameters (`tune`).

auto, in the spirit of autofaiss (``external/optimize.py``), re-evaluated after every write and only ever
moving up (flat -> hnsw -> ivf_pq), never back:
  1. n < 10,000                                   -> flat (exact)
  2. HNSW with M = min(32, floor((budget / (4 n) - d) / 2)) while M >= 8, i.e. while the raw vectors and the
     graph links (4 (d + 2M) bytes per vector) fit the memory budget; once built, M stays fixed and HNSW is
     kept while 4 n (d + 2M) <= budget
  3. beyond that                                  -> IVF-PQ: nlist = 2^round(log2(4 sqrt n)) (at most n/39),
     m = the largest divisor of d <= min(64, d/8) with n (m + 8) <= budget, 8-bit codes, exact re-ranking
     of k * k_factor candidates against the raw vectors (kept on disk, memory-mapped).
autofaiss also uses IVF-Flat between HNSW and IVF-PQ; we go straight to IVF-PQ with re-ranking, which tune()
brings to the same recall.

tune goes beyond autofaiss (which tunes to a latency bound): it measures recall@k against exact search for
a sample of the collection's own vectors held out of the index (see `_held_out`), or for the caller's own
queries, and picks the fastest nprobe / efSearch / k_factor that reaches the target (mean recall minus one
standard error over the queries >= target, so sampling noise does not pass a setting that only just fails)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .faiss_index import HNSW_M, AnnIndex
from .vectors import VectorStore, exact_search

AUTO_FLAT_MAX = 10_000
AUTO_MIN_HNSW_M = 8
RANK = {"flat": 0, "hnsw": 1, "ivf_pq": 2}
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
K_FACTOR_GRID = (1, 2, 4, 8, 16)
TUNE_GRAPH_MAX = 1_000_000   # graph indexes are tuned on a held-out copy of at most this many vectors


def hnsw_m_for(n: int, dim: int, budget: int) -> int:
    return min(HNSW_M, math.floor((budget / (4 * max(n, 1)) - dim) / 2))


def choose_auto(n: int, dim: int, budget: int, current: str = "flat", current_m: int = HNSW_M) -> tuple[str, int]:
    """(kind, hnsw M) that `auto` wants for n vectors; never below ``current``."""
    if current == "ivf_pq":
        return "ivf_pq", current_m
    if current == "hnsw":
        fits = 4 * n * (dim + 2 * current_m) <= budget
        return ("hnsw", current_m) if fits else ("ivf_pq", current_m)
    if n < AUTO_FLAT_MAX:
        return "flat", HNSW_M
    m = hnsw_m_for(n, dim, budget)
    return ("hnsw", m) if m >= AUTO_MIN_HNSW_M else ("ivf_pq", HNSW_M)


# ---------------------------------------------------------------------------------------------- tune

def per_query_recall(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|found ∩ truth| / |truth| for each query (padding -1 ignored)."""
    scores = []
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        scores.append(len(np.intersect1d(f[f >= 0], t)) / len(t) if len(t) else 1.0)
    return np.array(scores)


def _grid(ann: AnnIndex) -> list[dict[str, int]]:
    """Candidate parameter sets, cheapest first within each k_factor."""
    factors = K_FACTOR_GRID if ann.lossy else (1,)
    nlist = ann.nlist
    if nlist:
        probes = [p for p in (1 << i for i in range(17)) if p < nlist] + [nlist]
        return [{"k_factor": f, "nprobe": p} for f in factors for p in probes]
    if ann.mode == "positions":
        return [{"k_factor": f, "efSearch": e} for f in factors for e in EF_GRID]
    return [{"k_factor": f} for f in factors]


def _measure(ann: AnnIndex, store: VectorStore, q: np.ndarray, truth: np.ndarray, k: int,
             params: dict[str, int]) -> tuple[float, float, float]:
    """(mean recall, its lower bound: mean - one standard error, QPS)."""
    t0 = time.perf_counter()
    _, ids = ann.search(q, k, params, None, store)
    dt = time.perf_counter() - t0
    r = per_query_recall(ids, truth)
    return float(r.mean()), float(r.mean() - r.std() / np.sqrt(len(r))), len(q) / max(dt, 1e-9)


def _grid_search(ann: AnnIndex, store: VectorStore, q: np.ndarray, truth: np.ndarray, k: int,
                 target_recall: float) -> list[dict[str, Any]]:
    tried: list[dict[str, Any]] = []
    for params in _grid(ann):
        if any(t["reached"] and t["params"]["k_factor"] == params["k_factor"] for t in tried):
            continue   # a cheaper setting with this k_factor already reached the target
        recall, lower, qps = _measure(ann, store, q, truth, k, params)
        # the sample is a sample: require the target one standard error below the measured mean
        tried.append({"params": params, "recall": round(recall, 4), "recall_low": round(lower, 4),
                      "qps": round(qps, 1), "reached": lower >= target_recall})
    return tried


def _truth(store: VectorStore, q: np.ndarray, k: int, metric: str, exclude: np.ndarray | None) -> np.ndarray:
    """Exact top-k ids over the store without the ``exclude`` ids (the held-out sample)."""
    fetch = k if exclude is None else k + min(len(exclude), 32)
    while True:
        _, rows = exact_search(store.vectors, q, min(fetch, len(store)), metric)
        ids = np.where(rows >= 0, store.ids[np.maximum(rows, 0)], -1)
        if exclude is None:
            return ids
        out = ids >= 0
        out &= ~np.isin(ids, exclude)
        if (out.sum(axis=1) >= k).all() or fetch >= len(store):
            order = np.argsort(~out, axis=1, kind="stable")   # kept ids first, in rank order
            return np.where(np.take_along_axis(out, order, 1), np.take_along_axis(ids, order, 1), -1)[:, :k]
        fetch *= 2


def _held_out(ann: AnnIndex, store: VectorStore, metric: str, k: int, sample: int, seed: int,
              target_recall: float) -> tuple[list[dict[str, Any]], int]:
    """Grid results for a sample of the collection's own vectors, truly held out of the index searched:
    an id-mapped index (IVF) has the sample removed for the measurement and added back after; a graph index
    (HNSW) cannot remove, and a stored vector still in the graph is linked straight to its neighbours
    (recall then looks far better than for new queries), so a temporary graph of the same shape is built
    without the sample, over at most TUNE_GRAPH_MAX vectors."""
    rng = np.random.default_rng(seed)
    n = len(store)
    rows = np.sort(rng.choice(n, size=min(sample, n // 2), replace=False))
    q, qids = np.ascontiguousarray(store.vectors[rows]), store.ids[rows].copy()
    if ann.mode == "ids":
        truth = _truth(store, q, k, metric, exclude=np.sort(qids))
        ann.remove(qids)
        try:
            return _grid_search(ann, store, q, truth, k, target_recall), len(q)
        finally:
            ann.add(qids, q)
    rest = np.setdiff1d(np.arange(n), rows)
    rest = np.sort(rng.choice(rest, size=min(len(rest), TUNE_GRAPH_MAX), replace=False))
    sub = VectorStore(store.dim, store.ids[rest].copy(), np.ascontiguousarray(store.vectors[rest]))
    tmp = AnnIndex(ann.dim, ann.metric, ann.kind, ann.spec, ann.hnsw_m, ann.budget)
    tmp.build(sub)
    truth = _truth(sub, q, k, metric, exclude=None)
    return _grid_search(tmp, sub, q, truth, k, target_recall), len(q)


def tune_index(ann: AnnIndex, store: VectorStore, metric: str, target_recall: float = 0.95, k: int = 10,
               sample: int = 1000, seed: int = 0, queries: np.ndarray | None = None) -> dict[str, Any]:
    """Measure the grid; return the fastest parameters reaching the target (else the most accurate).
    ``queries``: real queries to tune for (e.g. text embeddings for an image collection); default: a sample
    of the collection's own vectors, held out of the index (see `_held_out`)."""
    if not (isinstance(target_recall, (int, float)) and 0 < target_recall <= 1):
        raise InvalidInput(f"expected a number in (0, 1], got {target_recall!r}", field="target_recall")
    if not isinstance(sample, int) or sample < 1:
        raise InvalidInput(f"expected a positive int, got {sample!r}", field="sample")
    if not ann.ready or len(store) <= 2 * k:
        return {"params": {}, "recall": 1.0, "qps": None, "reached": True, "exact": True, "tried": []}
    if queries is None:
        tried, used = _held_out(ann, store, metric, k, sample, seed, target_recall)
    else:
        tried, used = _grid_search(ann, store, queries, _truth(store, queries, k, metric, exclude=None), k,
                                   target_recall), len(queries)
    reached = [t for t in tried if t["reached"]]
    best = max(reached, key=lambda t: t["qps"]) if reached else max(tried, key=lambda t: (t["recall"], t["qps"]))
    return {"params": dict(best["params"]), "recall": best["recall"], "qps": best["qps"], "reached": bool(reached),
            "exact": False, "target_recall": float(target_recall), "k": k, "sample": used, "n": len(store),
            "queries": "given" if queries is not None else "held-out", "tried": tried}
