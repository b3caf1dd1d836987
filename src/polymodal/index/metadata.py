"""Per-id metadata in SQLite: one row per item (`id INTEGER PRIMARY KEY, meta TEXT` holding a JSON object),
joined to search hits by id, and filters compiled to SQL over ``json_extract``.

A writer works on a private copy of the published database (WAL mode, so commits are cheap) and publishes
it with SQLite's backup API at save; readers open the published, immutable file read-only."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .validate import is_utf8

_SCHEMA = "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, meta TEXT NOT NULL)"
RANGE_OPS = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class MetadataStore:
    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool):
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._lock = threading.Lock()  # one connection, shared by threads: SQLite calls go one at a time
        self.dirty = False
        self._was_dirty = False

    @classmethod
    def open_readonly(cls, path: Path) -> MetadataStore:
        # immutable=1: the published file never changes, so SQLite skips locking and WAL lookups entirely.
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        conn.execute("SELECT count(*) FROM items").fetchone()  # opens the file now, before it can be cleaned up
        return cls(conn, path, readonly=True)

    @classmethod
    def open_working(cls, work: Path, source: Path | None) -> MetadataStore:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
        if source is not None:
            shutil.copyfile(source, work)
        conn = sqlite3.connect(str(work), check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # the working copy is disposable: durability comes from save()
        conn.execute(_SCHEMA)
        conn.commit()
        return cls(conn, work, readonly=False)

    # ------------------------------------------------------------------ writes (inside the caller's transaction)

    def put(self, ids: np.ndarray, metas: list[str] | None, mode: str) -> None:
        """mode 'insert' (ids are new), 'replace' (overwrite), 'keep' (new ids get {}, existing keep theirs)."""
        with self._lock:
            if metas is None or mode == "keep":
                rows = zip(ids.tolist(), metas or ["{}"] * len(ids), strict=True)
                verb = "INSERT OR IGNORE" if mode == "keep" else "INSERT"
            else:
                rows = zip(ids.tolist(), metas, strict=True)
                verb = "INSERT OR REPLACE" if mode == "replace" else "INSERT"
            self._conn.executemany(f"{verb} INTO items(id, meta) VALUES (?, ?)", rows)
            self.dirty = True

    def delete(self, ids: np.ndarray) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))",
                               (json.dumps(ids.tolist()),))
            self.dirty = True

    def begin(self) -> None:
        """Start a write: `rollback` returns to here (the SQL transaction, and the dirty flag)."""
        self._was_dirty = self.dirty

    def commit(self) -> None:
        with self._lock:
            self._conn.commit()

    def rollback(self) -> None:
        with self._lock:
            self._conn.rollback()
        self.dirty = self._was_dirty

    def restore(self, ids: np.ndarray, rows: dict[int, str]) -> None:
        """Undo a committed write: ``ids`` get back exactly the ``rows`` (id -> JSON text) they had, and ids
        without a row are removed again."""
        with self._lock:
            try:
                self._conn.execute("DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))",
                                   (json.dumps(ids.tolist()),))
                self._conn.executemany("INSERT INTO items(id, meta) VALUES (?, ?)", rows.items())
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
        self.dirty = self._was_dirty

    # ------------------------------------------------------------------ reads

    def get_raw(self, ids: np.ndarray) -> dict[int, str]:
        """id -> stored JSON text, for the ids present."""
        if len(ids) == 0:
            return {}
        values = ids.tolist()
        if len(values) <= 500:   # a literal IN list plans faster than json_each for the common small case
            sql, params = f"SELECT id, meta FROM items WHERE id IN ({','.join('?' * len(values))})", values
        else:
            sql, params = "SELECT id, meta FROM items WHERE id IN (SELECT value FROM json_each(?))", [json.dumps(values)]
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return {int(i): m for i, m in rows}

    def get(self, ids: np.ndarray) -> dict[int, dict[str, Any]]:
        return {i: json.loads(m) for i, m in self.get_raw(ids).items()}

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM items").fetchone()[0])

    def all_ids(self) -> np.ndarray:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def select_ids(self, flt: Mapping[str, Any]) -> np.ndarray:
        """Sorted ids whose metadata pass the filter (see `compile_filter`)."""
        where, params = compile_filter(flt)
        with self._lock:
            rows = self._conn.execute(f"SELECT id FROM items WHERE {where} ORDER BY id", params).fetchall()
        return np.array([r[0] for r in rows], np.int64)

    # ------------------------------------------------------------------ publish / close

    def backup_to(self, dest: Path) -> None:
        """A consistent single-file copy (rollback-journal mode, so it can be opened immutable), fsynced."""
        with self._lock:
            self._conn.commit()
            out = sqlite3.connect(str(dest))
            try:
                self._conn.backup(out)
                out.execute("PRAGMA journal_mode=DELETE")
                out.commit()
            finally:
                out.close()
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self, remove: bool = False) -> None:
        with self._lock:
            self._conn.close()
        if remove and not self.readonly:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def create_empty(path: Path) -> None:
    conn = sqlite3.connect(str(path))
    try:
        conn.execute(_SCHEMA)
        conn.commit()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- filters

INT64 = (-(2**63), 2**63 - 1)   # SQLite's INTEGER


def _scalar(v: Any, where: str) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if not INT64[0] <= v <= INT64[1]:
            raise InvalidInput(f"integer {v} does not fit in int64 (the range metadata integers are stored in)",
                               field=where)
        return v
    if isinstance(v, str):
        if not is_utf8(v):
            raise InvalidInput(f"{v!r} is not valid UTF-8 (a lone surrogate?)", field=where)
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidInput(f"value {v!r} is not finite", field=where)
        return v
    if isinstance(v, np.generic):
        return _scalar(v.item(), where)
    raise InvalidInput(f"expected a str, int, float or bool, got {type(v).__name__}", field=where)


def _path(key: Any) -> str:
    if not isinstance(key, str) or not key or '"' in key or "\\" in key or not is_utf8(key):
        raise InvalidInput(f"a filter field must be a non-empty UTF-8 string without quotes or backslashes, "
                           f"got {key!r}", field="filter")
    return f'$."{key}"'  # quoted: a key such as "attrs.size" is one top-level key, not a nested path


def _clause(key: str, value: Any) -> tuple[list[str], list[Any]]:
    where = f"filter.{key}"
    col = "json_extract(meta, ?)"
    path = _path(key)
    if value is None:
        return [f"{col} IS NULL"], [path]
    if isinstance(value, (list, tuple, set, frozenset)):
        vals = [_scalar(v, where) for v in value]
        if not vals:
            raise InvalidInput("an IN list must not be empty", field=where)
        return [f"{col} IN ({', '.join('?' * len(vals))})"], [path, *vals]
    if isinstance(value, Mapping):
        if not value:
            raise InvalidInput("an operator dict must not be empty", field=where)
        sql, params = [], []
        for op, v in value.items():
            if op == "in":
                s, p = _clause(key, list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v])
            elif op in RANGE_OPS:
                s, p = [f"{col} {RANGE_OPS[op]} ?"], [path, _scalar(v, where)]
            else:
                raise InvalidInput(f"unknown operator {op!r}; use one of {', '.join([*RANGE_OPS, 'in'])}",
                                   field=where)
            sql += s
            params += p
        return sql, params
    return [f"{col} = ?"], [path, _scalar(value, where)]


def compile_filter(flt: Any) -> tuple[str, list[Any]]:
    """``{field: value}`` equality; ``{field: [a, b]}`` IN; ``{field: {"gte": 1, "lt": 5}}`` range (ops eq, ne,
    gt, gte, lt, lte, in); ``{field: None}`` missing or null. Several fields combine with AND. Values are bound
    as parameters; fields are top-level keys of the item's metadata."""
    if not isinstance(flt, Mapping):
        raise InvalidInput(f"expected a dict {{field: condition}}, got {type(flt).__name__}", field="filter")
    sql: list[str] = []
    params: list[Any] = []
    for key, value in flt.items():
        s, p = _clause(key, value)
        sql += s
        params += p
    return (" AND ".join(sql) if sql else "1"), params
