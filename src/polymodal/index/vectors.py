"""The raw vectors of a collection, keyed by id: the source of truth that every index is built from.

Rows are internal (a delete moves the last row into the hole); callers speak ids. After `Collection.open` the
array is a read-only memory map of the saved file, so a collection opened for search keeps its raw vectors in
the page cache rather than in process memory; the first write copies them into a growable buffer."""

from __future__ import annotations

import faiss
import numpy as np


class VectorStore:
    def __init__(self, dim: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None):
        self.dim = dim
        self._ids = np.empty(0, np.int64) if ids is None else ids
        self._vecs = np.empty((0, dim), np.float32) if vectors is None else vectors
        self._n = len(self._ids)
        self._row: dict[int, int] = dict(zip(self._ids.tolist(), range(self._n), strict=True))
        self._writable = vectors is None

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self._n]

    @property
    def vectors(self) -> np.ndarray:
        return self._vecs[: self._n]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where absent."""
        get = self._row.get
        return np.fromiter((get(i, -1) for i in ids.tolist()), np.int64, count=len(ids))

    def contains(self, ids: np.ndarray) -> np.ndarray:
        row = self._row
        return np.fromiter((i in row for i in ids.tolist()), bool, count=len(ids))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of ids that are all present (copy)."""
        out: np.ndarray = self._vecs[self.rows(ids)]
        return out

    # ------------------------------------------------------------------ writes

    def _reserve(self, extra: int) -> None:
        need = self._n + extra
        if self._writable and need <= len(self._vecs):
            return
        cap = max(need, 2 * len(self._vecs), 1024) if self._writable else max(need, 1024)
        vecs = np.empty((cap, self.dim), np.float32)
        vecs[: self._n] = self._vecs[: self._n]
        ids = np.empty(cap, np.int64)
        ids[: self._n] = self._ids[: self._n]
        self._vecs, self._ids, self._writable = vecs, ids, True

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._reserve(len(ids))
        n0 = self._n
        self._vecs[n0: n0 + len(ids)] = vectors
        self._ids[n0: n0 + len(ids)] = ids
        self._n += len(ids)
        self._row.update(zip(ids.tolist(), range(n0, self._n), strict=True))

    def replace(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._reserve(0)
        self._vecs[self.rows(ids)] = vectors

    def remove(self, ids: np.ndarray) -> None:
        """Delete present ids; the last row fills each hole, so the live rows stay one dense block."""
        self._reserve(0)
        for i in ids.tolist():
            r = self._row.pop(i)
            last = self._n - 1
            if r != last:
                moved = int(self._ids[last])
                self._vecs[r] = self._vecs[last]
                self._ids[r] = moved
                self._row[moved] = r
            self._n = last

    def nbytes(self) -> int:
        return self._n * (self.dim * 4 + 8)


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def exact_search(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, row numbers) over the rows of ``base`` with FAISS' brute-force kernels (BLAS for
    batches), without copying ``base`` into an index. k is clamped to len(base); rows are -1 padded."""
    nq = len(queries)
    scores = np.full((nq, k), np.inf if metric == "l2" else -np.inf, np.float32)
    rows = np.full((nq, k), -1, np.int64)
    kk = min(k, len(base))
    if kk == 0 or nq == 0:
        return scores, rows
    d, i = faiss.knn(queries, np.ascontiguousarray(base), kk, faiss_metric(metric))
    scores[:, :kk], rows[:, :kk] = d, i
    return scores, rows
