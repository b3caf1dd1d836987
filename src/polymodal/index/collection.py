"""`Collection`: a persistent vector collection with stable int64 ids, SQLite metadata, filters, an
automatically chosen and tuned FAISS index, crash-safe saves and safe concurrent use.

    with Collection.create("runs/coll", dim=256) as coll:          # metric="cosine", index="auto"
        coll.add(ids, vectors, [{"caption": "a red square", "split": "test"}, ...])
    coll = Collection.open("runs/coll", readonly=True)
    res = coll.search(query_vectors, k=10, filter={"split": "test", "label": [1, 2], "year": {"gte": 2020}})
    res.ids, res.scores, res.metadata

Every write is a transaction: on any failure (validation, the index maintenance that follows it, or, with
``save=True``, the save that acknowledges it) the in-memory collection returns to exactly its previous state
(`writes.py`). The storage layout and crash-safety argument are in `persist.py`, the files of one
generation in `generation.py`; the search pipeline in `searching.py`; queries from any modality in
`query.py`; the model record in `identity.py`; media beside the collection in `media.py`."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound
from . import persist
from .faiss_index import NAMED_KINDS, AnnIndex, check_index_spec, default_params
from .generation import read_files, write_files
from .locking import RWLock
from .media import MediaStore, PendingMedia
from .metadata import MetadataStore
from .searching import SearchResult, check_params, search_ids
from .tuning import tune_index
from .validate import (
    as_ids,
    as_vectors,
    check_dim,
    check_k,
    check_metric,
    parse_bytes,
)
from .vectors import VectorStore
from .writes import Writes

DEFAULT_BUDGET = "4GiB"
log = logging.getLogger("polymodal.index")


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


class Collection(Writes):
    """Use `Collection.create` / `Collection.open`; see the module doc."""

    def __init__(self, root: Path, config: dict[str, Any], store: VectorStore, ann: AnnIndex, meta: MetadataStore,
                 lock: persist.WriterLock | None, gen: str | None, params: dict[str, Any], tuned: dict[str, Any] | None,
                 model: dict[str, Any] | None = None):
        self.root, self._cfg, self._store, self._ann, self._meta = root, config, store, ann, meta
        self._lock, self._gen, self._params, self._tuned, self._model = lock, gen, params, tuned, model
        self.readonly = lock is None
        self.dim, self.metric = int(config["dim"]), str(config["metric"])
        self.media = MediaStore(root)
        self._pending: PendingMedia | None = None     # media of unsaved writes
        self._unapplied: PendingMedia | None = None   # media of a published generation not yet moved into place
        self._rw = RWLock()
        self._txn_lock = threading.Lock()   # one write or save at a time (whole, with its rollback); before _rw
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
        coll = cls(root, config, store, ann, meta, lock, name, state["params"], state.get("tuned"), state.get("model"))
        if lock is not None:   # a crash's media: finish the published change, drop the rest and any orphans
            coll.media.recover(state.get("media_txn"))
            coll.media.collect_garbage(store.contains)
        return coll

    @classmethod
    def destroy(cls, path: str | Path) -> None:
        """Delete the collection at ``path`` from disk. Takes the writer lock first, so a collection that
        another process (or object) has open for writing is refused (`CollectionLocked`, a Conflict naming
        that process) instead of being deleted under it."""
        root = Path(path)
        if not persist.is_collection(root):
            raise NotFound("no collection to delete", source=str(root))
        lock = persist.WriterLock(root)
        try:
            persist.remove_collection(root)
        finally:
            lock.release()

    def drop(self) -> None:
        """Delete this collection from disk (a writer only: it holds the lock) and close it."""
        with self._txn_lock, self._rw.write():
            if self._closed:
                raise InvalidInput("the collection is closed", source=str(self.root))
            if self.readonly or self._lock is None:
                raise InvalidInput("the collection was opened read-only; a writer deletes it (or use "
                                   "Collection.destroy(path))", field="readonly", source=str(self.root))
            persist.remove_collection(self.root)
            self._closed = True
            self._meta.close()
            self._lock.release()

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
        with self._txn_lock, self._rw.write():
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
                "model": self.model, "unsaved_changes": self._dirty(),
            }

    @property
    def model(self) -> dict[str, Any] | None:
        """The model that filled the collection: ``{"fingerprint", "name", "modalities"}`` (the modalities its
        items were embedded from), or None when no write named one."""
        rec = self._model
        return None if rec is None else {**rec, "modalities": list(rec.get("modalities") or [])}

    def __repr__(self) -> str:
        return f"Collection({str(self.root)!r}, n={len(self._store)}, dim={self.dim}, kind={self._ann.kind!r})"

    # ------------------------------------------------------------------ save / close

    def _dirty(self) -> bool:
        return (self._vec_dirty or self._state_dirty or self._ann.dirty or self._meta.dirty
                or bool(self._pending is not None and self._pending.changes))

    def save(self) -> str:
        """Publish a new generation (atomic; see persist.py) and return its name; a no-op when unchanged."""
        with self._txn_lock, self._rw.read():
            self._check_writable()
            return self._save_locked()

    def _save_locked(self) -> str:
        if self._unapplied is not None:   # an earlier save's media move failed: finish it before going on
            self._unapplied.apply()
            self._unapplied = None
        if self._gen is not None and not self._dirty():
            return self._gen
        number = persist.gen_number(self._gen) + 1 if self._gen else 0
        prev = self.root / self._gen if self._gen else None
        pending = self._pending if self._pending is not None and self._pending.changes else None
        tmp = persist.new_tmp_folder(self.root, number)
        try:
            write_files(tmp, prev, self._store, self._ann, self._meta, self._vec_dirty)
            if pending is not None:
                pending.write_journal()   # durable before the generation that names it is published
            state = {**self._cfg, "count": len(self._store), "ann": self._ann.state(), "params": self._params,
                     "tuned": self._tuned, "model": self._model, "media_txn": pending.token if pending else None}
            name = persist.publish(self.root, tmp, number, state)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if not self._published(number):
                if pending is not None:
                    pending.forget_journal()
                raise
            name = persist.gen_name(number)   # the switch happened; only a step after it failed
            log.warning("saved %s/%s, but a step after publishing it failed", self.root, name, exc_info=True)
        self._gen = name
        self._vec_dirty = self._state_dirty = self._ann.dirty = self._meta.dirty = False
        self._pending = None
        if pending is not None:
            try:
                pending.apply()
            except OSError:
                self._unapplied = pending
                log.warning("could not move the media of %s into place; retrying at the next save", name,
                            exc_info=True)
        try:
            persist.cleanup(self.root, name)
        except OSError:
            log.warning("could not remove old generations of %s", self.root, exc_info=True)
        return name

    def _published(self, number: int) -> bool:
        try:
            return persist.read_current(self.root) == persist.gen_name(number)
        except Exception:  # noqa: BLE001 - unreadable CURRENT: not published by us
            return False

    def close(self, save: bool = True) -> None:
        """Save unsaved changes (unless ``save=False``) and release the files and the writer lock."""
        if self._closed:
            return
        with self._txn_lock, self._rw.write():
            if self._closed:
                return
            try:
                if save and not self.readonly and not self._broken and self._dirty():
                    self._save_locked()
            finally:
                self._closed = True
                if self._pending is not None and not self.readonly:
                    self._pending.discard()   # unsaved media go with the unsaved writes
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
            self._model = fresh._model
            old.close()
        return True

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.close(save=exc_type is None)
