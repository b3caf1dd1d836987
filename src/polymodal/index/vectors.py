"""The raw vectors of a collection, keyed by id: the source of truth that every index is built from.

Rows are internal (a delete moves the last row into the hole); callers speak ids. After `Collection.open` the
array is a read-only memory map of the saved file, so a collection opened for search keeps its raw vectors in
the page cache rather than in process memory; the first write copies them into a growable buffer. Inside a
write, an undo journal (`begin` / `rollback` / `commit`) can return the store to exactly its state before.

Also here: exact search over an array (`exact_search`) and the exact re-ranking of a lossy index's candidates
(`rerank`), in memory-bounded chunks."""

from __future__ import annotations

from collections.abc import Callable

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
        self._journal: list[Callable[[], None]] | None = None

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
        self._log(lambda: self._unappend(ids, n0))
        self._vecs[n0: n0 + len(ids)] = vectors
        self._ids[n0: n0 + len(ids)] = ids
        self._n += len(ids)
        self._row.update(zip(ids.tolist(), range(n0, self._n), strict=True))

    def _unappend(self, ids: np.ndarray, n0: int) -> None:
        for i in ids.tolist():
            self._row.pop(i, None)
        self._n = n0

    def replace(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._reserve(0)
        rows = self.rows(ids)
        if self._journal is not None:
            old = self._vecs[rows].copy()
            self._log(lambda: self._vecs.__setitem__(rows, old))
        self._vecs[rows] = vectors

    def remove(self, ids: np.ndarray) -> None:
        """Delete present ids; the last row fills each hole, so the live rows stay one dense block."""
        self._reserve(0)
        undo: list[tuple[int, int, np.ndarray, int | None]] = []
        self._log(lambda: self._unremove(undo))
        for i in ids.tolist():
            r = self._row.pop(i)
            last = self._n - 1
            moved = int(self._ids[last]) if r != last else None
            if self._journal is not None:
                undo.append((i, r, self._vecs[r].copy(), moved))
            if moved is not None:
                self._vecs[r] = self._vecs[last]
                self._ids[r] = moved
                self._row[moved] = r
            self._n = last

    def _unremove(self, undo: list[tuple[int, int, np.ndarray, int | None]]) -> None:
        for i, r, vec, moved in reversed(undo):
            last = self._n
            if moved is not None:   # row r holds the row that was moved there from `last`
                self._vecs[last] = self._vecs[r]
                self._ids[last] = moved
                self._row[moved] = last
            self._vecs[r], self._ids[r], self._row[i] = vec, i, r
            self._n = last + 1

    # ------------------------------------------------------------------ transactions

    def begin(self) -> None:
        """Start recording appends, replaces and removes, so that `rollback` can undo them exactly."""
        self._journal = []

    def commit(self) -> None:
        self._journal = None

    def rollback(self) -> None:
        journal, self._journal = self._journal, None
        for undo in reversed(journal or []):
            undo()

    def _log(self, undo: Callable[[], None]) -> None:
        if self._journal is not None:
            self._journal.append(undo)

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


RERANK_FLOATS = 1 << 24   # the exact re-ranking gathers at most this many candidate floats at once


def rerank(queries: np.ndarray, ids: np.ndarray, store: VectorStore, k: int, metric: str,
           chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for candidate ids (from a lossy index), best k per query, -1 padded."""
    nq, fetch = ids.shape
    chunk = max(1, min(chunk, RERANK_FLOATS // max(1, fetch * store.dim)))
    out_s = np.full((nq, k), np.inf if metric == "l2" else -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    for a in range(0, nq, chunk):   # chunks bound the (queries, candidates, dim) gather
        s, i = _rerank_chunk(queries[a: a + chunk], ids[a: a + chunk], store, k, metric)
        out_s[a: a + chunk, : s.shape[1]], out_i[a: a + chunk, : i.shape[1]] = s, i
    return out_s, out_i


def _rerank_chunk(queries: np.ndarray, ids: np.ndarray, store: VectorStore, k: int, metric: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    nq, fetch = ids.shape
    rows = store.rows(ids.reshape(-1)).reshape(nq, fetch)   # -1 for padding
    valid = rows >= 0
    s = np.empty((nq, fetch), np.float32)
    cols = max(1, RERANK_FLOATS // max(1, nq * store.dim))  # candidates gathered at once: (nq, cols, d)
    for a in range(0, fetch, cols):
        r, v = rows[:, a: a + cols], valid[:, a: a + cols]
        vecs = store.vectors[np.maximum(r, 0)]
        if metric == "l2":
            s[:, a: a + cols] = np.where(v, ((vecs - queries[:, None, :]) ** 2).sum(-1), np.inf)
        else:
            s[:, a: a + cols] = np.where(v, np.einsum("qfd,qd->qf", vecs, queries), -np.inf)
    order = np.argsort(s if metric == "l2" else -s, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(s, order, 1)
    top_i = np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(ids, order, 1), -1)
    return top_s, top_i
