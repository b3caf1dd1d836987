"""The collections a server serves, by name: opened lazily, one writable `Collection` each, plus a lock that
makes each write request (upsert + its media files + save) one step with respect to other writes.

A collection another process holds the writer lock of (an `index build`, say) is served read-only meanwhile
(a *fallback*): reads pick up that process's saves (`Handle.readable`), and each write request tries the lock
again (`Handle.writable`), becoming the writer once it is free and answering 409 (naming the holder) until
then. Deleting a collection takes its writer lock too, so one another process writes is never deleted.

Names are ``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``, so a name can never climb out of the root folder. A collection is
either *pinned* (given on the command line, any path) or a sub-folder of the root folder."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CollectionLocked, Conflict, InvalidInput, NotFound
from ..index import Collection, MediaStore, is_collection

log = logging.getLogger("polymodal.serve")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # used with fullmatch: match + "$" lets "name\n" in


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"collection names are 1-64 letters, digits, '_' or '-' (not starting with '_' or '-'), "
                           f"got {name!r}", field="collection")
    return name


@dataclass
class Handle:
    name: str
    path: Path
    coll: Collection
    media: MediaStore
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    fallback: bool = False   # served read-only because another process held the writer lock when opened

    def writable(self) -> Collection:
        """The collection, as its writer (call with ``write_lock`` held). A read-only fallback tries the writer
        lock again: free -> the service becomes the writer; still held -> `CollectionLocked` (a Conflict, 409)
        naming the process that holds it."""
        if self.fallback:
            coll = Collection.open(self.path)
            # searches may still run on the reader: it is left to the garbage collector, not closed under them
            self.coll, self.fallback = coll, False
            log.info("collection %s: the other writer is gone; serving it writable", self.path)
        return self.coll

    def readable(self) -> Collection:
        """The collection for a read; a read-only fallback first switches to the newest generation the other
        writer saved (a check of CURRENT when nothing changed)."""
        if self.coll.readonly:
            self.coll.refresh()
        return self.coll


class CollectionStore:
    def __init__(self, root: Path | None, pinned: Mapping[str, Path] | None = None, default: str | None = None):
        self.root = Path(root) if root is not None else None
        self.pinned = {check_name(n): Path(p) for n, p in (pinned or {}).items()}
        self._default = default
        self._open: dict[str, Handle] = {}
        self._lock = threading.Lock()

    @property
    def default(self) -> str | None:
        """The collection used when a request names none: the pinned one, else the only one there is."""
        if self._default is not None:
            return self._default
        names = self.names()
        return names[0] if len(names) == 1 else None

    def path(self, name: str) -> Path:
        check_name(name)
        if name in self.pinned:
            return self.pinned[name]
        if self.root is None:
            raise NotFound(f"no collection named {name!r}", field="collection")
        return self.root / name

    def names(self) -> list[str]:
        found = {n for n, p in self.pinned.items() if is_collection(p)}
        if self.root is not None and self.root.is_dir():
            found |= {p.name for p in self.root.iterdir() if _NAME.fullmatch(p.name) and is_collection(p)}
        return sorted(found)

    def cached(self, name: str | None) -> Handle | None:
        """The handle if the collection is open already (no I/O, safe on the event loop), else None."""
        name = name or self._default
        return self._open.get(name) if name is not None else None

    def get(self, name: str | None) -> Handle:
        """The open handle (opened now if needed); a read-only fallback first picks up the other writer's saves."""
        name = name or self.default
        if name is None:
            raise InvalidInput("no collection given and the server has no default collection", field="collection")
        with self._lock:
            handle = self._open.get(name)
        if handle is not None:
            if handle.fallback:
                handle.readable()
            return handle
        with self._lock:
            if name in self._open:
                return self._open[name]
            path = self.path(name)
            if not is_collection(path):
                raise NotFound(f"no collection named {name!r}", field="collection")
            coll, fallback = _open_collection(path)
            handle = Handle(name, path, coll, MediaStore(path), fallback=fallback)
            self._open[name] = handle
            return handle

    def create(self, name: str, dim: int, metric: str, index: str) -> Handle:
        with self._lock:
            path = self.path(name)
            if self.root is None and name not in self.pinned:
                raise InvalidInput("this server has no collections folder to create collections in", field="collection")
            if path.exists() and (is_collection(path) or any(path.iterdir())):
                raise Conflict(f"collection {name!r} exists already", field="collection")
            handle = Handle(name, path, Collection.create(path, dim=dim, metric=metric, index=index), MediaStore(path))
            self._open[name] = handle
            return handle

    def delete(self, name: str) -> None:
        """Delete a collection from disk, under its writer lock: one that another process has open for writing
        is refused with `CollectionLocked` (409, naming the process), and nothing is deleted."""
        handle = self.get(name)
        with self._lock, handle.write_lock:
            handle.writable().drop()
            self._open.pop(name, None)

    def close(self) -> None:
        with self._lock:
            for handle in self._open.values():
                with handle.write_lock:
                    handle.coll.close()
            self._open.clear()


def _open_collection(path: Path) -> tuple[Collection, bool]:
    """(the collection, whether it is a read-only fallback)."""
    try:
        return Collection.open(path), False
    except CollectionLocked as exc:
        # another process (an `index build`, say) holds the writer lock: serve what it saved, refuse writes
        log.warning("collection %s is open for writing elsewhere (%s); serving it read-only", path, exc.message)
        return Collection.open(path, readonly=True), True
