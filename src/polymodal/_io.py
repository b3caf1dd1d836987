"""Small helpers every layer shares: atomic writes, reading a JSON object (or a clear error), merging JSON
objects.

Private: the public API does not re-export these; they live here so that no layer reaches into another
layer's internals for them."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InvalidInput, NotFound


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_writer(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temp file in the same folder, flushed (and fsynced unless
    ``fsync=False``), then renamed over ``path`` when the block ends without an error; on an error the temp
    file is removed and ``path`` is untouched. Readers see the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> None:
    """`atomic_writer` for bytes in hand. ``fsync=False`` for many small files that can be re-created (one
    fsync each would dominate, e.g. media beside a data set or a collection)."""
    with atomic_writer(path, fsync) as fh:
        fh.write(data)


def read_json_object(path: str | os.PathLike[str], error: type[InvalidInput] = InvalidInput,
                     expected: str = "expected a JSON object") -> dict[str, Any]:
    """A JSON object from ``path``. A missing file is NotFound; unreadable JSON or another JSON value is
    ``error`` (InvalidInput, or a subclass such as ConfigError for recipes), naming the file."""
    path = Path(path)
    if not path.is_file():
        raise NotFound("no such file", source=str(path))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"invalid JSON ({exc})", source=str(path)) from None
    if not isinstance(obj, dict):
        raise error(expected, source=str(path))
    return obj


def json_bytes(obj: Any) -> bytes:
    """Stable, strict JSON (sorted keys, no NaN) as UTF-8 bytes with a trailing newline."""
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: objects merge key by key; anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
