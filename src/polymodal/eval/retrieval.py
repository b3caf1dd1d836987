"""Retrieval metrics with CLIP_benchmark's definitions, computed in chunks.

A query is a hit at k when at least one of its positives is among the top k gallery items. With several
captions per image this gives both CLIP_benchmark conventions: text->image scores every caption as its own
query (one positive: its image); image->text scores every image (positives: all of its captions).

Ranks are 0-based here: the rank of a query is the number of gallery items ranked above its best
positive. Ties are broken by gallery order (an item with an equal score and a lower index ranks first),
which is deterministic, unlike ``topk`` on ties. ``median_rank = floor(median(rank)) + 1`` and
``mean_rank = mean(rank) + 1`` as in OpenCLIP. Scores are never materialised as an Nq x Ng matrix:
queries and gallery are walked in blocks, so memory is O(chunk^2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInput


@dataclass(frozen=True)
class RankStats:
    ranks: np.ndarray  # (Nq,) 0-based rank of the best positive

    def recall(self, k: int) -> float:
        return float((self.ranks < k).mean())

    def summary(self, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        out = {f"R@{k}": self.recall(k) for k in ks}
        out["median_rank"] = float(math.floor(float(np.median(self.ranks))) + 1)
        out["mean_rank"] = float(self.ranks.mean() + 1)
        out["n_queries"] = int(self.ranks.shape[0])
        return out


def _positive_mask(q_idx: torch.Tensor, g_lo: int, g_hi: int, positives: list[np.ndarray] | None,
                   q_labels: torch.Tensor | None, g_labels: torch.Tensor | None) -> torch.Tensor:
    if q_labels is not None and g_labels is not None:
        return q_labels[q_idx][:, None] == g_labels[None, g_lo:g_hi]
    assert positives is not None
    mask = torch.zeros(len(q_idx), g_hi - g_lo, dtype=torch.bool)
    for row, qi in enumerate(q_idx.tolist()):
        p = positives[qi]
        p = p[(p >= g_lo) & (p < g_hi)] - g_lo
        mask[row, torch.as_tensor(p, dtype=torch.long)] = True
    return mask


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, *, positives: Sequence[Sequence[int]] | None = None,
                    query_labels: Sequence[int] | None = None, gallery_labels: Sequence[int] | None = None,
                    chunk: int = 2048) -> RankStats:
    """Rank of the best positive for every query. Give either ``positives`` (gallery indices per query) or
    ``query_labels``/``gallery_labels`` (a gallery item is positive when its label equals the query's)."""
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    g = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise InvalidInput(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be (N, D) with equal D",
                           field="queries")
    by_labels = query_labels is not None and gallery_labels is not None
    if by_labels == (positives is not None):
        raise InvalidInput("give exactly one of positives or query_labels+gallery_labels", field="positives")
    pos = [np.asarray(p, dtype=np.int64) for p in positives] if positives is not None else None
    ql = torch.as_tensor(np.asarray(query_labels)) if by_labels else None
    gl = torch.as_tensor(np.asarray(gallery_labels)) if by_labels else None
    nq, ng = q.shape[0], g.shape[0]
    if pos is not None and len(pos) != nq:
        raise InvalidInput(f"{len(pos)} positive lists for {nq} queries", field="positives")
    ranks = np.empty(nq, dtype=np.int64)
    for q_lo in range(0, nq, chunk):
        q_idx = torch.arange(q_lo, min(q_lo + chunk, nq))
        qc = q[q_idx]
        # Pass 1: best positive score and its (lowest) gallery index.
        best = torch.full((len(q_idx),), -math.inf)
        best_at = torch.full((len(q_idx),), ng, dtype=torch.long)
        for g_lo in range(0, ng, chunk):
            g_hi = min(g_lo + chunk, ng)
            s = qc @ g[g_lo:g_hi].T
            s = s.masked_fill(~_positive_mask(q_idx, g_lo, g_hi, pos, ql, gl), -math.inf)
            val, arg = s.max(dim=1)
            better = val > best
            best = torch.where(better, val, best)
            best_at = torch.where(better, arg + g_lo, best_at)
        if torch.isinf(best).any():
            bad = int(q_idx[torch.isinf(best)][0])
            raise InvalidInput(f"query {bad} has no positive in the gallery", field="positives")
        # Pass 2: items scoring above the best positive, or equal with a lower index.
        above = torch.zeros(len(q_idx), dtype=torch.long)
        for g_lo in range(0, ng, chunk):
            g_hi = min(g_lo + chunk, ng)
            s = qc @ g[g_lo:g_hi].T
            idx = torch.arange(g_lo, g_hi)[None, :]
            above += ((s > best[:, None]) | ((s == best[:, None]) & (idx < best_at[:, None]))).sum(dim=1)
        ranks[q_lo:q_lo + len(q_idx)] = above.numpy()
    return RankStats(ranks)


def recall_at_k(queries: np.ndarray, gallery: np.ndarray, positives: Sequence[Sequence[int]],
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    return retrieval_ranks(queries, gallery, positives=positives).summary(ks)


def duplicate_rate(texts: Sequence[str]) -> float:
    """Fraction of texts identical to at least one other text in the list (ambiguous text queries)."""
    from collections import Counter

    if not texts:
        return 0.0
    counts = Counter(t.strip().lower() for t in texts)
    return sum(1 for t in texts if counts[t.strip().lower()] > 1) / len(texts)
