"""`Collection`: a persistent vector collection with stable int64 ids, SQLite metadata, filters, an
automatically chosen and tuned FAISS index, crash-safe saves and safe concurrent use.

    with Collection.create("runs/coll", dim=256) as coll:          # metric="cosine", index="auto"
        coll.add(ids, vectors, [{"caption": "a red square", "split": "test"}, ...])
    coll = Collection.open("runs/coll", readonly=True)
    res = coll.search(query_vectors, k=10, filter={"split": "test", "label": [1, 2], "year": {"gte": 2020}})
    res.ids, res.scores, res.metadata

The storage layout and crash-safety argument are in `persist.py`, the files of one generation in
`generation.py`; the search pipeline in `searching.py`; queries from any modality in `query.py`."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound, PolymodalError
from . import persist
from .faiss_index import NAMED_KINDS, AnnIndex, check_index_spec, default_params
from .generation import read_files, write_files
from .locking import RWLock
from .metadata import MetadataStore
from .searching import SearchResult, check_params, search_ids
from .tuning import RANK, choose_auto, tune_index
from .validate import (
    as_ids,
    as_metadata,
    as_vectors,
    check_dim,
    check_k,
    check_metric,
    check_unique,
    parse_bytes,
)
from .vectors import VectorStore

DEFAULT_BUDGET = "4GiB"


@dataclass
class Items:
    """What `Collection.get` returns, in the order asked for."""

    ids: np.ndarray
    vectors: np.ndarray
    metadata: list[dict[str, Any]]


def _initial_ann(spec: str, dim: int, metric: str, budget: int) -> AnnIndex:
    if spec == "auto":
        return AnnIndex(dim, metric, "flat", budget=budget)
    if spec in NAMED_KINDS:
        return AnnIndex(dim, metric, spec, budget=budget)
    return AnnIndex(dim, metric, "factory", spec, budget=budget)


class Collection:
    """Use `Collection.create` / `Collection.open`; see the module doc."""

    def __init__(self, root: Path, config: dict[str, Any], store: VectorStore, ann: AnnIndex, meta: MetadataStore,
                 lock: persist.WriterLock | None, gen: str | None, params: dict[str, Any], tuned: dict[str, Any] | None):
        self.root, self._cfg, self._store, self._ann, self._meta = root, config, store, ann, meta
        self._lock, self._gen, self._params, self._tuned = lock, gen, params, tuned
        self.readonly = lock is None
        self.dim, self.metric = int(config["dim"]), str(config["metric"])
        self._rw = RWLock()
        self._save_lock = threading.Lock()
        self._vec_dirty = self._state_dirty = False
        self._closed = self._broken = False

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path: str | Path, dim: int, metric: str = "cosine", index: str = "auto",
               memory_budget: int | str = DEFAULT_BUDGET) -> Collection:
        """A new, empty collection at ``path`` (which must not exist, or be an empty folder)."""
        root = Path(path)
        dim, metric = check_dim(dim), check_metric(metric)
        spec, budget = check_index_spec(index, dim, metric), parse_bytes(memory_budget)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise InvalidInput("already exists and is not an empty folder", field="path", source=str(root))
        root.mkdir(parents=True, exist_ok=True)
        lock = persist.WriterLock(root)
        try:
            store = VectorStore(dim)
            ann = _initial_ann(spec, dim, metric, budget)
            ann.build(store)
            meta = MetadataStore.open_working(root / persist.WORK_DB, None)
            config = {"dim": dim, "metric": metric, "index": spec, "memory_budget": budget}
            coll = cls(root, config, store, ann, meta, lock, None, default_params(ann.nlist, ann.lossy), None)
            coll._save_locked()
        except BaseException:
            lock.release()
            raise
        return coll

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> Collection:
        """Open the live generation. A writer (``readonly=False``) holds the collection's lock until close()."""
        root = Path(path)
        if not root.is_dir():
            raise NotFound("no such collection folder", source=str(root))
        persist.read_current(root)
        lock = None if readonly else persist.WriterLock(root)
        try:
            if lock is not None:
                persist.cleanup(root, persist.read_current(root))
            return persist.open_generation(root, lambda name, folder, state: cls._load(root, name, folder, state, lock))
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @classmethod
    def _load(cls, root: Path, name: str, folder: Path, state: dict[str, Any], lock: persist.WriterLock | None
              ) -> Collection:
        store, ann, meta = read_files(root, folder, state, writer=lock is not None)
        config = {k: state[k] for k in ("dim", "metric", "index", "memory_budget")}
        return cls(root, config, store, ann, meta, lock, name, state["params"], state.get("tuned"))

    # ------------------------------------------------------------------ writes

    def _check_writable(self) -> None:
        if self._closed:
            raise InvalidInput("the collection is closed", source=str(self.root))
        if self.readonly:
            raise InvalidInput("the collection was opened read-only", field="readonly", source=str(self.root))
        if self._broken:
            raise InvalidInput("an earlier write failed half-way; reopen the collection (the saved state is intact)",
                               source=str(self.root))

    def _validate_write(self, ids: Any, vectors: Any, metadata: Any) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
        ids = as_ids(ids)
        check_unique(ids)
        vecs = as_vectors(vectors, self.dim, self.metric)
        if len(vecs) != len(ids):
            raise InvalidInput(f"{len(ids)} ids but {len(vecs)} vectors", field="vectors")
        return ids, vecs, as_metadata(metadata, len(ids))

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Write lock; an unexpected failure after validation rolls back the metadata and marks the in-memory
        collection broken (the saved generations are untouched)."""
        with self._rw.write():
            self._check_writable()
            try:
                yield
                self._meta.commit()
            except PolymodalError:   # expected errors are raised before anything is changed
                self._meta.rollback()
                raise
            except BaseException:
                self._meta.rollback()
                self._broken = True
                raise
            self._vec_dirty = True
            self._maintain()

    def add(self, ids: Any, vectors: Any, metadata: list[dict[str, Any]] | None = None) -> None:
        """Insert new items. Any id already present -> InvalidInput (use `upsert`); nothing is written then."""
        ids, vecs, metas = self._validate_write(ids, vectors, metadata)
        with self._writing():
            present = self._store.contains(ids)
            if present.any():
                raise InvalidInput(f"ids already exist: {ids[present][:5].tolist()} (use upsert to replace)",
                                   field="ids")
            self._meta.put(ids, metas, "insert")
            self._store.append(ids, vecs)
            self._ann.add(ids, vecs)

    def upsert(self, ids: Any, vectors: Any, metadata: list[dict[str, Any]] | None = None) -> None:
        """Insert or replace. With ``metadata=None`` existing items keep their metadata (new ones get {})."""
        ids, vecs, metas = self._validate_write(ids, vectors, metadata)
        with self._writing():
            present = self._store.contains(ids)
            self._meta.put(ids, metas, "replace" if metas is not None else "keep")
            self._store.replace(ids[present], vecs[present])
            self._store.append(ids[~present], vecs[~present])
            self._ann.remove(ids[present])
            self._ann.add(ids, vecs)

    def delete(self, ids: Any, missing: str = "error") -> int:
        """Remove items; returns how many. Unknown ids -> NotFound (nothing removed) unless missing='ignore'."""
        if missing not in ("error", "ignore"):
            raise InvalidInput(f"expected 'error' or 'ignore', got {missing!r}", field="missing")
        ids = as_ids(ids)
        check_unique(ids)
        with self._writing():
            present = self._store.contains(ids)
            if missing == "error" and not present.all():
                raise NotFound(f"ids not in the collection: {ids[~present][:5].tolist()}", field="ids")
            ids = ids[present]
            self._meta.delete(ids)
            self._store.remove(ids)
            self._ann.remove(ids)
        return len(ids)

    def _maintain(self) -> None:
        """auto: move up to the index the size now calls for; IVF: train / retrain; HNSW: compact."""
        ann, n = self._ann, len(self._store)
        if self._cfg["index"] == "auto":
            kind, m = choose_auto(n, self.dim, self._cfg["memory_budget"], ann.kind, ann.hnsw_m)
            if RANK[kind] > RANK[ann.kind]:
                self._ann = AnnIndex(self.dim, self.metric, kind, hnsw_m=m, budget=self._cfg["memory_budget"])
                self._ann.build(self._store)
                self._reset_params()
                return
        if ann.maintain(self._store) in ("trained", "retrained"):
            self._reset_params()

    def _reset_params(self) -> None:
        """New index structure: tuned values no longer apply."""
        self._params = default_params(self._ann.nlist, self._ann.lossy)
        self._tuned = None
        self._state_dirty = True

    def compact(self) -> None:
        """Rebuild the ANN index from the raw vectors (drops HNSW tombstones)."""
        with self._writing():
            self._ann.build(self._store)

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return len(self._store)

    def ids(self) -> np.ndarray:
        with self._rw.read():
            return self._store.ids.copy()

    def get(self, ids: Any) -> Items:
        """Vectors (as stored: normalized for cosine) and metadata. Unknown ids -> NotFound."""
        ids = as_ids(ids)
        with self._rw.read():
            if self._closed:
                raise InvalidInput("the collection is closed", source=str(self.root))
            rows = self._store.rows(ids)
            if (rows < 0).any():
                raise NotFound(f"ids not in the collection: {ids[rows < 0][:5].tolist()}", field="ids")
            vectors = self._store.vectors[rows].copy()
            metas = self._meta.get(ids)
        return Items(ids, vectors, [metas.get(int(i), {}) for i in ids])

    def search(self, queries: Any, k: int = 10, filter: dict[str, Any] | None = None,
               params: dict[str, Any] | None = None, with_metadata: bool = True, *,
               normalized: bool = False) -> SearchResult:
        """Top-k for each query row (a 1-D vector is one query). ``filter``: see `metadata.compile_filter`.
        ``params``: nprobe / efSearch / k_factor overrides, or {"exact": True}. A cosine collection
        L2-normalizes the queries, unless ``normalized=True`` says they already are (model embeddings, the
        fused queries of `query.py`)."""
        q = as_vectors(queries, self.dim, self.metric, field="queries", allow_1d=True, normalize=not normalized)
        k, extra = check_k(k), check_params(params)
        with self._rw.read():
            if self._closed:
                raise InvalidInput("the collection is closed", source=str(self.root))
            no_filter = filter is None or (isinstance(filter, dict) and not filter)
            allowed = None if no_filter else self._meta.select_ids(filter)  # type: ignore[arg-type]
            scores, ids = search_ids(self._store, self._ann, self.metric, q, k, {**self._params, **extra}, allowed)
            metadata = self._join(ids) if with_metadata else []
        return SearchResult(ids, scores, metadata)

    def _join(self, ids: np.ndarray) -> list[list[dict[str, Any]]]:
        raw = self._meta.get_raw(np.unique(ids[ids >= 0]))
        loads = json.loads
        return [[loads(raw.get(i, "{}")) for i in row.tolist() if i >= 0] for row in ids]

    # ------------------------------------------------------------------ tune / info

    def tune(self, target_recall: float = 0.95, k: int = 10, sample: int = 1000, seed: int = 0,
             queries: Any = None) -> dict[str, Any]:
        """Pick the fastest nprobe / efSearch / k_factor whose recall@k against exact search reaches
        ``target_recall``, measured on ``queries`` if given (your real query distribution, e.g. text embeddings
        for an image collection), else on ``sample`` held-out queries made from the collection's own vectors.
        The choice becomes the default for searches and is saved with the collection (next save/close)."""
        k = check_k(k)
        q = None if queries is None else as_vectors(queries, self.dim, self.metric, field="queries")
        with self._rw.write():
            self._check_writable()
            report = tune_index(self._ann, self._store, self.metric, target_recall, k, sample, seed, q)
            if not report["exact"]:
                self._params = {**self._params, **report["params"]}
                self._tuned = {key: v for key, v in report.items() if key != "tried"}
                self._state_dirty = True
        return report

    def info(self) -> dict[str, Any]:
        with self._rw.read():
            ann = self._ann
            return {
                "path": str(self.root), "generation": self._gen, "readonly": self.readonly, "count": len(self._store),
                "dim": self.dim, "metric": self.metric, "index": self._cfg["index"], "kind": ann.kind,
                "faiss": ann.built_spec if ann.ready else None, "trained_at": ann.trained_n or None,
                "staged": ann.kind != "flat" and not ann.ready, "nlist": ann.nlist, "tombstones": ann.n_dead,
                "params": dict(self._params), "tuned": self._tuned, "memory_budget": self._cfg["memory_budget"],
                "bytes": {"vectors": self._store.nbytes(), "index": ann.nbytes()},
                "unsaved_changes": self._dirty(),
            }

    def __repr__(self) -> str:
        return f"Collection({str(self.root)!r}, n={len(self._store)}, dim={self.dim}, kind={self._ann.kind!r})"

    # ------------------------------------------------------------------ save / close

    def _dirty(self) -> bool:
        return self._vec_dirty or self._state_dirty or self._ann.dirty or self._meta.dirty

    def save(self) -> str:
        """Publish a new generation (atomic; see persist.py) and return its name; a no-op when unchanged."""
        with self._rw.read(), self._save_lock:
            self._check_writable()
            return self._save_locked()

    def _save_locked(self) -> str:
        if self._gen is not None and not self._dirty():
            return self._gen
        number = persist.gen_number(self._gen) + 1 if self._gen else 0
        prev = self.root / self._gen if self._gen else None
        tmp = persist.new_tmp_folder(self.root, number)
        try:
            write_files(tmp, prev, self._store, self._ann, self._meta, self._vec_dirty)
            state = {**self._cfg, "count": len(self._store), "ann": self._ann.state(), "params": self._params,
                     "tuned": self._tuned}
            name = persist.publish(self.root, tmp, number, state)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._gen = name
        self._vec_dirty = self._state_dirty = self._ann.dirty = self._meta.dirty = False
        persist.cleanup(self.root, name)
        return name

    def close(self, save: bool = True) -> None:
        """Save unsaved changes (unless ``save=False``) and release the files and the writer lock."""
        if self._closed:
            return
        with self._rw.write():
            if self._closed:
                return
            try:
                if save and not self.readonly and not self._broken and self._dirty():
                    with self._save_lock:
                        self._save_locked()
            finally:
                self._closed = True
                self._meta.close(remove=not self.readonly)
                if self._lock is not None:
                    self._lock.release()

    def refresh(self) -> bool:
        """Read-only collections: switch to the newest saved generation if there is one. True if it changed."""
        if not self.readonly:
            return False
        if persist.read_current(self.root) == self._gen:
            return False
        fresh = Collection.open(self.root, readonly=True)
        with self._rw.write():
            old = self._meta
            self._store, self._ann, self._meta = fresh._store, fresh._ann, fresh._meta
            self._gen, self._params, self._tuned, self._cfg = fresh._gen, fresh._params, fresh._tuned, fresh._cfg
            old.close()
        return True

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.close(save=exc_type is None)
