"""The write half of `Collection`: add / upsert / delete / compact, each one transaction.

A write changes the metadata inside an SQL transaction, the vectors and the ANN index with an undo journal
(`VectorStore.begin`, `AnnIndex.begin`), stages its media (`PendingMedia`) and updates the model record; then
the index is maintained (a new index is built beside the old one and swapped in), the SQL transaction commits
and, with ``save=True``, the collection is saved. Any failure on the way, the save included, undoes all of it
(`_rollback`): the in-memory collection is then exactly as before the write, and keeps accepting writes. Only
when an undo itself fails is the collection marked broken (the saved state is intact; reopen it)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound
from .faiss_index import AnnIndex, default_params
from .identity import check_modalities, merged_record, model_identity
from .locking import RWLock
from .media import MediaStore, PendingMedia, as_media
from .metadata import MetadataStore
from .tuning import RANK, choose_auto
from .validate import as_ids, as_metadata, as_vectors, check_unique
from .vectors import VectorStore

log = logging.getLogger("polymodal.index")


@dataclass
class _Undo:
    """What a write needs to return the collection to its state before the write."""

    ann: AnnIndex
    params: dict[str, Any]
    tuned: dict[str, Any] | None
    model: dict[str, Any] | None
    flags: tuple[bool, bool]
    ids: np.ndarray | None = None            # save=True: the rows of these ids, to restore after the SQL commit
    rows: dict[int, str] = field(default_factory=dict)
    media: list[Callable[[], None]] = field(default_factory=list)


class Writes:
    """Mixed into `Collection` (which sets these attributes and saves); see the module doc."""

    root: Path
    dim: int
    metric: str
    readonly: bool
    media: MediaStore
    _cfg: dict[str, Any]
    _store: VectorStore
    _ann: AnnIndex
    _meta: MetadataStore
    _params: dict[str, Any]
    _tuned: dict[str, Any] | None
    _model: dict[str, Any] | None
    _pending: PendingMedia | None
    _rw: RWLock
    _txn_lock: threading.Lock
    _vec_dirty: bool
    _state_dirty: bool
    _closed: bool
    _broken: bool

    def _save_locked(self) -> str:
        raise NotImplementedError

    def _check_writable(self) -> None:
        if self._closed:
            raise InvalidInput("the collection is closed", source=str(self.root))
        if self.readonly:
            raise InvalidInput("the collection was opened read-only", field="readonly", source=str(self.root))
        if self._broken:
            raise InvalidInput("an earlier write failed and could not be undone; reopen the collection (the saved "
                               "state is intact)", source=str(self.root))

    def _validate_write(self, ids: Any, vectors: Any, metadata: Any) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
        ids = as_ids(ids)
        check_unique(ids)
        vecs = as_vectors(vectors, self.dim, self.metric)
        if len(vecs) != len(ids):
            raise InvalidInput(f"{len(ids)} ids but {len(vecs)} vectors", field="vectors")
        return ids, vecs, as_metadata(metadata, len(ids))

    @contextmanager
    def _transaction(self, ids: np.ndarray, save: bool) -> Iterator[_Undo]:
        """One write, all or nothing: the body changes metadata (in an SQL transaction), vectors and index
        (journaled), media (staged) and the model record; then come index maintenance, the SQL commit and,
        with ``save``, the save. Any failure rolls everything back to the state before the write. Searches run
        on during the save and may see the write; a failed save takes it back."""
        with self._txn_lock:
            with self._rw.write():
                self._check_writable()
                undo = _Undo(self._ann, dict(self._params), self._tuned, self._model,
                             (self._vec_dirty, self._state_dirty))
                if save:
                    undo.ids, undo.rows = ids, self._meta.get_raw(ids)
                self._store.begin()
                self._ann.begin()
                self._meta.begin()
                try:
                    yield undo
                    self._maintain()
                    self._meta.commit()
                except BaseException:
                    self._rollback(undo, committed=False)
                    raise
            if save:
                try:
                    with self._rw.read():
                        self._save_locked()
                except BaseException:
                    with self._rw.write():
                        self._rollback(undo, committed=True)
                    raise
            self._store.commit()
            undo.ann.commit()
            self._ann.commit()

    def _rollback(self, undo: _Undo, committed: bool) -> None:
        try:
            for step in reversed(undo.media):
                step()
            if self._pending is not None:
                self._pending.forget_journal()
                if not self._pending.changes:
                    self._pending.discard()
                    self._pending = None
            self._ann = undo.ann
            undo.ann.rollback()
            self._store.rollback()
            if committed:
                assert undo.ids is not None
                self._meta.restore(undo.ids, undo.rows)
            else:
                self._meta.rollback()
        except BaseException:
            self._broken = True   # the undo itself failed: refuse further writes; the saved state is intact
            log.exception("could not undo a failed write to %s; reopen it", self.root)
            raise
        finally:
            self._params, self._tuned, self._model = undo.params, undo.tuned, undo.model
            self._vec_dirty, self._state_dirty = undo.flags

    def _pending_media(self) -> PendingMedia:
        if self._pending is None:
            self._pending = PendingMedia(self.media, uuid.uuid4().hex[:16])
        return self._pending

    def _note_model(self, model: Any, modalities: Iterable[str] | str | None) -> None:
        ident = model_identity(model)
        if ident is None:
            return
        record = merged_record(self._model, ident, check_modalities(modalities))
        if record != self._model:
            self._model, self._state_dirty = record, True

    def add(self, ids: Any, vectors: Any, metadata: list[dict[str, Any]] | None = None, *,
            media: Sequence[Mapping[str, bytes] | None] | None = None, model: Any = None,
            modalities: Iterable[str] | str | None = None, save: bool = False) -> None:
        """Insert new items. Any id already present -> InvalidInput (use `upsert`); nothing is written then.
        ``media``: per item ``{"image": png bytes, "audio": flac bytes}`` (or None), published with the save.
        ``model``: what embedded the vectors (an object with a ``fingerprint``, or ``{"fingerprint", "name"}``)
        and ``modalities`` what they were embedded from: recorded on the first fill, another model refused.
        ``save=True``: save as part of the write (a failed save undoes it)."""
        ids, vecs, metas = self._validate_write(ids, vectors, metadata)
        files = as_media(media, len(ids))
        check_modalities(modalities)
        with self._transaction(ids, save) as undo:
            present = self._store.contains(ids)
            if present.any():
                raise InvalidInput(f"ids already exist: {ids[present][:5].tolist()} (use upsert to replace)",
                                   field="ids")
            self._note_model(model, modalities)
            self._meta.put(ids, metas, "insert")
            self._store.append(ids, vecs)
            self._ann.add(ids, vecs)
            if files is not None:
                undo.media.append(self._pending_media().stage(ids.tolist(), files))
            self._vec_dirty = True

    def upsert(self, ids: Any, vectors: Any, metadata: list[dict[str, Any]] | None = None, *,
               media: Sequence[Mapping[str, bytes] | None] | None = None, model: Any = None,
               modalities: Iterable[str] | str | None = None, save: bool = False) -> None:
        """Insert or replace. With ``metadata=None`` existing items keep their metadata (new ones get {}); with
        ``media=None`` they keep their media (given, an item's media are replaced: {} removes them). ``model``,
        ``modalities``, ``save``: as for `add`."""
        ids, vecs, metas = self._validate_write(ids, vectors, metadata)
        files = as_media(media, len(ids))
        check_modalities(modalities)
        with self._transaction(ids, save) as undo:
            self._note_model(model, modalities)
            present = self._store.contains(ids)
            old = self._store.take(ids[present])
            self._meta.put(ids, metas, "replace" if metas is not None else "keep")
            self._store.replace(ids[present], vecs[present])
            self._store.append(ids[~present], vecs[~present])
            self._ann.remove(ids[present], old)
            self._ann.add(ids, vecs)
            if files is not None:
                undo.media.append(self._pending_media().stage(ids.tolist(), files))
            self._vec_dirty = True

    def delete(self, ids: Any, missing: str = "error", *, save: bool = False) -> int:
        """Remove items (and their media); returns how many. Unknown ids -> NotFound (nothing removed) unless
        missing='ignore'. ``save=True``: save as part of the write."""
        if missing not in ("error", "ignore"):
            raise InvalidInput(f"expected 'error' or 'ignore', got {missing!r}", field="missing")
        ids = as_ids(ids)
        check_unique(ids)
        with self._transaction(ids, save) as undo:
            present = self._store.contains(ids)
            if missing == "error" and not present.all():
                raise NotFound(f"ids not in the collection: {ids[~present][:5].tolist()}", field="ids")
            ids = ids[present]
            old = self._store.take(ids)
            self._meta.delete(ids)
            self._store.remove(ids)
            self._ann.remove(ids, old)
            undo.media.append(self._pending_media().remove(ids.tolist()))
            self._vec_dirty = True
        return len(ids)

    def _maintain(self) -> None:
        """auto: move up to the index the size now calls for; IVF: train / retrain; HNSW: compact. A new index
        is built beside the old one and swapped in, so a failure leaves the old one as it was."""
        ann, n = self._ann, len(self._store)
        try:
            if self._cfg["index"] == "auto":
                kind, m = choose_auto(n, self.dim, self._cfg["memory_budget"], ann.kind, ann.hnsw_m)
                if RANK[kind] > RANK[ann.kind]:
                    fresh = AnnIndex(self.dim, self.metric, kind, hnsw_m=m, budget=self._cfg["memory_budget"])
                    fresh.build(self._store)
                    self._ann = fresh
                    self._reset_params()
                    return
            action = ann.maintenance(self._store)
            if action is not None:
                self._ann = ann.rebuilt(self._store)
                if action in ("trained", "retrained"):
                    self._reset_params()
        except RuntimeError as exc:   # FAISS: e.g. fewer training points than a quantizer has centroids
            lines = str(exc).strip().splitlines()
            raise InvalidInput(f"cannot build the index {ann.spec or ann.kind!r} over {n} vectors: "
                               f"{lines[-1] if lines else exc}", field="index") from None

    def _reset_params(self) -> None:
        """New index structure: tuned values no longer apply."""
        self._params = default_params(self._ann.nlist, self._ann.lossy)
        self._tuned = None
        self._state_dirty = True

    def compact(self) -> None:
        """Rebuild the ANN index from the raw vectors (drops HNSW tombstones), and remove media files of items
        the collection does not hold."""
        with self._transaction(np.empty(0, np.int64), save=False):
            self._ann = self._ann.rebuilt(self._store)
            pending = set(self._pending.changes) if self._pending is not None else set()
            self.media.collect_garbage(lambda ids: self._store.contains(ids) | np.isin(ids, list(pending)))
