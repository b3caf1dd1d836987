"""The ANN accelerator of a collection: a FAISS index rebuilt from, and kept in step with, the vector store.

Two ways of holding ids:
- ``ids``: FAISS labels ARE the user's int64 ids (IVF natively, anything else inside ``IndexIDMap2``);
  deletes call ``remove_ids``.
- ``positions``: graph indexes (HNSW) cannot remove, so labels are insertion positions, mapped to ids by
  ``labels[pos]``; a delete or an upsert marks the old position dead (a tombstone), searches exclude dead
  positions with an ``IDSelectorBitmap`` inside the graph walk, and the index is rebuilt from the store
  when more than a quarter of the positions are dead.

``flat`` has no FAISS object at all: exact search runs over the store's own array (no second copy).
IVF kinds stay "staged" (searched exactly) until the store is big enough to train, and are retrained when
the collection has grown 4x since training."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .spec import NAMED_KINDS, check_index_spec
from .vectors import VectorStore, exact_search, faiss_metric, rerank

IVF_MIN_TRAIN = 1000          # below this an IVF kind is searched exactly (FAISS wants ~39 points per list)
RETRAIN_GROWTH = 4            # retrain IVF when the collection is this many times larger than at training
TOMBSTONE_FRACTION = 0.25     # rebuild a graph index when this share of its positions is dead
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
KMEANS_ITERS = 10             # k-means iterations for IVF centroids and PQ codebooks (PQ's default is 25)
TRAIN_PER_LIST = 64           # training sample = min(n, 64 * nlist)
_LOSSY = re.compile(r"PQ|SQ|LSH|RQ|LSQ")
C_INT_MAX = 2**31 - 1         # FAISS takes efSearch as a C int


def pow2_round(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def ivf_nlist(n: int) -> int:
    """autofaiss' 2^round(log2(4 sqrt n)), capped so each list has >= 39 training points."""
    cap = 1 << max(0, int(math.log2(max(n // 39, 1))))
    return max(1, min(pow2_round(4 * math.sqrt(n)), cap, 1 << 16))


def pq_m(dim: int, n: int = 0, budget: int | None = None) -> int:
    """PQ sub-quantizers: the largest divisor of dim <= min(64, dim/8) whose codes (m bytes + 8 for the id
    per vector) fit the budget; the smallest divisor when none fits. (>= 8 dims per sub-quantizer: FAISS'
    k-means is pathologically slow on 4-d sub-spaces, and exact re-ranking recovers the recall.)"""
    divisors = [m for m in range(1, max(1, min(64, dim // 8)) + 1) if dim % m == 0]
    fitting = [m for m in divisors if budget is None or n * (m + 8) <= budget]
    return max(fitting) if fitting else divisors[0]


def default_params(nlist: int | None, lossy: bool) -> dict[str, int]:
    p = {"efSearch": 128, "k_factor": 4 if lossy else 1}
    if nlist:
        p["nprobe"] = min(nlist, max(8, round(math.sqrt(nlist))))
    return p


def _core(index: Any) -> Any:
    """The innermost index under IDMap/PreTransform wrappers (downcast to its real class)."""
    idx = faiss.downcast_index(index)
    while isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        idx = faiss.downcast_index(idx.index)
    return idx


class AnnIndex:
    """kind: flat | hnsw | ivf_flat | ivf_pq | factory (``spec`` then holds the user's factory string)."""

    def __init__(self, dim: int, metric: str, kind: str, spec: str | None = None, hnsw_m: int = HNSW_M,
                 budget: int | None = None):
        self.dim, self.metric, self.kind, self.spec = dim, metric, kind, spec
        self.hnsw_m, self.budget = hnsw_m, budget
        self.index: Any = None
        self.built_spec: str | None = None   # the factory string actually built
        self.mode = "none"
        self.trained_n = 0
        self.lossy = bool(spec and _LOSSY.search(spec)) or kind == "ivf_pq"
        self._trainable = kind in ("ivf_flat", "ivf_pq") or (
            kind == "factory" and not faiss.index_factory(dim, str(spec), faiss_metric(metric)).is_trained)
        self.labels = np.empty(0, np.int64)   # positions mode: position -> user id
        self.dead = np.empty(0, bool)
        self._dead_bitmap: np.ndarray | None = None
        self._family_of: Any = None
        self._family_name = "other"
        self.dirty = True
        self._journal: list[Any] | None = None
        self._journal_dirty = True

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        return self.index is not None

    @property
    def nlist(self) -> int | None:
        ivf = faiss.try_extract_index_ivf(self.index) if self.index is not None else None
        return int(ivf.nlist) if ivf is not None else None

    @property
    def n_dead(self) -> int:
        return int(self.dead.sum())

    def needs_training(self) -> bool:
        return self._trainable

    def min_train(self) -> int:
        if self.kind == "factory":
            m = re.search(r"IVF(\d+)", self.spec or "")
            return max(IVF_MIN_TRAIN, 39 * int(m.group(1)) if m else 0)
        return IVF_MIN_TRAIN

    # ------------------------------------------------------------------ build / maintain

    def _new_faiss_index(self, n: int) -> Any:
        metric = faiss_metric(self.metric)
        if self.kind == "hnsw":
            spec = f"HNSW{self.hnsw_m}"
        elif self.kind == "ivf_flat":
            spec = f"IVF{ivf_nlist(n)},Flat"
        elif self.kind == "ivf_pq":
            nbits = 8 if n >= 39 * 256 else 4   # 8-bit PQ wants ~10k training points; 4-bit needs ~600
            # "np": no polysemous training (FAISS' factory default), which is 5x slower and unused here
            spec = f"IVF{ivf_nlist(n)},PQ{pq_m(self.dim, n, self.budget)}x{nbits}np"
        else:
            spec = str(self.spec)
        index = faiss.index_factory(self.dim, spec, metric)
        self.built_spec = spec
        core = _core(index)
        if isinstance(core, faiss.IndexHNSW):
            core.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.niter = KMEANS_ITERS
            pq = getattr(faiss.downcast_index(ivf), "pq", None)
            if pq is not None:
                pq.cp.niter = KMEANS_ITERS
                pq.cp.max_points_per_centroid = 64   # 16k training points per codebook
        if isinstance(core, (faiss.IndexHNSW, faiss.IndexNSG, faiss.IndexNNDescent)):
            self.mode = "positions"
        else:
            self.mode = "ids"
            if ivf is None:
                index = faiss.IndexIDMap2(index)
        return index

    def build(self, store: VectorStore, seed: int = 0) -> None:
        """(Re)build from the store; IVF kinds too small to train stay staged (``index = None``). All or nothing:
        when training or adding fails, this object is left as it was."""
        n = len(store)
        if self.kind == "flat" or (self.needs_training() and n < self.min_train()):
            self.index, self.labels, self.dead, self._dead_bitmap = None, np.empty(0, np.int64), np.empty(0, bool), None
            self.mode, self.trained_n, self.dirty = "none", 0, True
            return
        fresh = AnnIndex(self.dim, self.metric, self.kind, self.spec, self.hnsw_m, self.budget)
        index = fresh._new_faiss_index(n)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            nlist = faiss.try_extract_index_ivf(index)
            cap = TRAIN_PER_LIST * (int(nlist.nlist) if nlist is not None else 256)
            rows = np.sort(rng.choice(n, size=min(n, max(cap, 39 * 256)), replace=False))
            index.train(np.ascontiguousarray(store.vectors[rows]))
        fresh.index, fresh.trained_n = index, n
        fresh.add(store.ids, store.vectors)
        self.index, self.labels, self.dead, self._dead_bitmap = fresh.index, fresh.labels, fresh.dead, None
        self.mode, self.trained_n, self.built_spec, self.dirty = fresh.mode, n, fresh.built_spec, True

    def maintenance(self, store: VectorStore) -> str | None:
        """What the store's size now calls for: 'trained' (big enough to train), 'retrained' (grown 4x since
        training), 'compacted' (too many tombstones), or None."""
        n = len(store)
        if self.kind == "flat":
            return None
        if self.index is None:
            return "trained" if n >= self.min_train() else None
        if self.needs_training() and n >= RETRAIN_GROWTH * max(self.trained_n, 1):
            return "retrained"
        if self.mode == "positions" and len(self.dead) and self.n_dead > TOMBSTONE_FRACTION * len(self.dead):
            return "compacted"
        return None

    def rebuilt(self, store: VectorStore) -> AnnIndex:
        """A new index of the same kind built from the store (this one is left untouched)."""
        fresh = AnnIndex(self.dim, self.metric, self.kind, self.spec, self.hnsw_m, self.budget)
        fresh.build(store)
        return fresh

    # ------------------------------------------------------------------ writes

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is None or len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.dirty = True
        if self.mode == "positions":
            self._log(self._tombstone_added_undo(len(self.labels)))
            self.index.add(vectors)
            self.labels = np.concatenate([self.labels, ids])
            self.dead = np.concatenate([self.dead, np.zeros(len(ids), bool)])
            self._dead_bitmap = None
        else:
            index = self.index
            self._log(lambda: index.remove_ids(faiss.IDSelectorBatch(ids)))
            index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray, vectors: np.ndarray | None = None) -> None:
        """Remove present ``ids``; inside a `begin` / `rollback` span, ``vectors`` (theirs) lets an id-mapped
        index put them back on rollback."""
        if self.index is None or len(ids) == 0:
            return
        self.dirty = True
        if self.mode == "positions":
            newly = np.flatnonzero(np.isin(self.labels, ids) & ~self.dead)
            self._log(lambda: self._set_dead(newly, False))
            self._set_dead(newly, True)
        else:
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            if self._journal is not None:
                if vectors is None:
                    raise ValueError("remove() inside a transaction needs the removed vectors")
                index, back = self.index, np.ascontiguousarray(vectors, dtype=np.float32)
                self._log(lambda: index.add_with_ids(back, ids))
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def _set_dead(self, positions: np.ndarray, value: bool) -> None:
        self.dead[positions] = value
        self._dead_bitmap = None

    def _tombstone_added_undo(self, n0: int) -> Any:
        """Undo of a graph add: a graph cannot drop nodes, so positions from ``n0`` on become tombstones
        (searches never return them; the next rebuild drops them)."""
        def undo() -> None:
            nt = int(self.index.ntotal)
            labels, dead = self.labels[:nt], self.dead[:nt].copy()
            if len(labels) < nt:   # the FAISS add went through but the bookkeeping did not
                labels = np.concatenate([labels, np.full(nt - len(labels), -1, np.int64)])
                dead = np.concatenate([dead, np.ones(nt - len(dead), bool)])
            dead[n0:] = True
            self.labels, self.dead, self._dead_bitmap = labels, dead, None
        return undo

    # ------------------------------------------------------------------ transactions

    def begin(self) -> None:
        """Start recording adds and removes, so that `rollback` can undo them."""
        self._journal = []
        self._journal_dirty = self.dirty

    def commit(self) -> None:
        self._journal = None

    def rollback(self) -> None:
        """Undo the adds and removes since `begin`: an id-mapped index (IVF, IDMap) removes what was added and
        re-adds what was removed (same ids, same codes); a graph gets its dead flags back and its new positions
        tombstoned. Searches then return what they returned before."""
        journal, self._journal = self._journal, None
        for undo in reversed(journal or []):
            undo()
        self.dirty = self._journal_dirty

    def _log(self, undo: Any) -> None:
        if self._journal is not None:
            self._journal.append(undo)

    # ------------------------------------------------------------------ search

    def _selector(self, allowed: np.ndarray | None) -> tuple[Any, list[Any]]:
        """(IDSelector or None, objects to keep alive during the search)."""
        sel: Any
        if self.mode == "ids":
            if allowed is None:
                return None, []
            sel = faiss.IDSelectorBatch(allowed)
            return sel, [sel, allowed]
        if allowed is None and not self.dead.any():
            return None, []
        if allowed is None:
            if self._dead_bitmap is None:
                self._dead_bitmap = np.packbits(~self.dead, bitorder="little")
            bits = self._dead_bitmap
        else:
            bits = np.packbits(~self.dead & np.isin(self.labels, allowed), bitorder="little")
        sel = faiss.IDSelectorBitmap(len(self.dead), faiss.swig_ptr(bits))
        return sel, [sel, bits]

    def _family(self) -> str:
        """'hnsw', 'ivf' or 'other', cached per FAISS object (the SWIG look-ups cost more than a small search)."""
        if self._family_of is not self.index:
            core = _core(self.index)
            self._family_name = ("hnsw" if isinstance(core, faiss.IndexHNSW)
                                 else "ivf" if faiss.try_extract_index_ivf(self.index) is not None else "other")
            self._family_of = self.index
        return self._family_name

    def _params(self, params: dict[str, int], sel: Any) -> Any:
        family = self._family()
        if family == "hnsw":
            p = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            p.efSearch = min(int(params.get("efSearch", 64)), C_INT_MAX)
        elif family == "ivf":
            p = faiss.SearchParametersIVF()
            p.nprobe = int(params.get("nprobe", 1))   # FAISS clamps it to nlist
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    def search(self, queries: np.ndarray, k: int, params: dict[str, int], allowed: np.ndarray | None,
               store: VectorStore) -> tuple[np.ndarray, np.ndarray]:
        """(scores, user ids), -1 padded. Lossy codes fetch ``k * k_factor`` candidates and re-rank them exactly
        against the raw vectors in the store."""
        fetch = k * max(1, int(params.get("k_factor", 1))) if self.lossy else k
        fetch = min(fetch, max(k, int(self.index.ntotal)))   # more candidates than vectors only pads
        p = dict(params)
        p["efSearch"] = max(int(p.get("efSearch", 64)), fetch)   # HNSW returns at most efSearch hits
        sel, keep = self._selector(allowed)
        scores, labels = self.index.search(queries, fetch, params=self._params(p, sel))
        del keep
        if self.mode == "positions":
            labels = np.where(labels >= 0, self.labels[np.maximum(labels, 0)], -1)
        if self.lossy:
            return rerank(queries, labels, store, k, self.metric)
        return scores, labels

    # ------------------------------------------------------------------ persistence

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "built_spec": self.built_spec, "mode": self.mode,
                "trained_n": self.trained_n, "hnsw_m": self.hnsw_m, "budget": self.budget}

    def write(self, folder: Path) -> list[str]:
        """Files for one generation (not fsynced here)."""
        if self.index is None:
            return []
        faiss.write_index(self.index, str(folder / "index.faiss"))
        files = ["index.faiss"]
        if self.mode == "positions":
            np.save(folder / "labels.npy", self.labels)
            np.save(folder / "dead.npy", self.dead)
            files += ["labels.npy", "dead.npy"]
        return files

    @classmethod
    def read(cls, folder: Path, dim: int, metric: str, st: dict[str, Any]) -> AnnIndex:
        ann = cls(dim, metric, st["kind"], st.get("spec"), st.get("hnsw_m", HNSW_M), st.get("budget"))
        ann.mode, ann.trained_n, ann.built_spec = st["mode"], int(st["trained_n"]), st.get("built_spec")
        if ann.mode != "none":
            ann.index = faiss.read_index(str(folder / "index.faiss"))
        if ann.mode == "positions":
            ann.labels = np.load(folder / "labels.npy")
            ann.dead = np.load(folder / "dead.npy")
        ann.dirty = False
        return ann

    def nbytes(self) -> int:
        """Approximate in-memory size of the FAISS structures (codes, graph links, ids, centroids)."""
        if self.index is None:
            return 0
        core = _core(self.index)
        ivf: Any = faiss.try_extract_index_ivf(self.index)
        total = self.labels.nbytes + self.dead.nbytes
        if ivf is not None:
            sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.int64)
            total += int(sizes.sum()) * (ivf.code_size + 8) + ivf.nlist * self.dim * 4
        elif isinstance(core, faiss.IndexHNSW):
            h: Any = core.hnsw
            total += core.ntotal * self.dim * 4 + (h.neighbors.size() + h.offsets.size() * 2) * 4 + h.levels.size() * 4
        else:
            total += int(self.index.ntotal) * (self.dim * 4 + 16)
        return int(total)

    def describe(self) -> str:
        return json.dumps(self.state())


__all__ = ["NAMED_KINDS", "AnnIndex", "check_index_spec", "default_params", "exact_search", "ivf_nlist", "pq_m", "rerank"]
