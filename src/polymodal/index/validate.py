"""Input checks shared by every write and search path. Each raises `InvalidInput` naming the field, and each
runs before anything is written, so a rejected call leaves the collection untouched."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput

METRICS = ("cosine", "ip", "l2")
PAD_ID = -1  # marks "no hit" in SearchResult.ids, so it cannot be a user id


def as_ids(ids: Any, field: str = "ids") -> np.ndarray:
    """A 1-D int64 array from ints (a list, an integer numpy array or one int). Floats, bools, strings: rejected."""
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, (bool, np.bool_)):
        ids = [ids]
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise InvalidInput(f"expected a sequence of int64 ids, got {type(ids).__name__}", field=field)
    arr = np.asarray(ids) if isinstance(ids, np.ndarray) else None
    if arr is None:
        for i, v in enumerate(ids):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise InvalidInput(f"id at position {i} is {v!r} ({type(v).__name__}), expected an int", field=field)
        try:
            arr = np.array([int(v) for v in ids], dtype=np.int64)
        except OverflowError:
            raise InvalidInput("an id does not fit in int64", field=field) from None
    elif arr.dtype.kind not in "iu":
        raise InvalidInput(f"ids must be integers, got dtype {arr.dtype}", field=field)
    elif arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidInput("an id does not fit in int64", field=field)
    arr = np.ascontiguousarray(arr, dtype=np.int64).reshape(-1) if arr.ndim <= 1 else arr
    if arr.ndim != 1:
        raise InvalidInput(f"ids must be 1-D, got shape {arr.shape}", field=field)
    if arr.size and (arr == PAD_ID).any():
        raise InvalidInput(f"id {PAD_ID} is reserved (it pads search results)", field=field)
    return arr


def check_unique(ids: np.ndarray, field: str = "ids") -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if uniq.size != ids.size:
        dup = uniq[counts > 1][:5].tolist()
        raise InvalidInput(f"duplicate ids in one call: {dup}", field=field)


def as_vectors(x: Any, dim: int, metric: str, field: str = "vectors", allow_1d: bool = False,
               normalize: bool = True) -> np.ndarray:
    """A C-contiguous float32 (n, dim) array, finite, and L2-normalized when the metric is cosine (this is where
    raw vectors enter a collection; ``normalize=False``: the caller guarantees unit rows already)."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"cannot read as an array ({exc})", field=field) from None
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise InvalidInput(f"expected a numeric array, got dtype {arr.dtype}", field=field)
    if allow_1d and arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInput(f"expected shape (n, {dim}), got {arr.shape}", field=field)
    if arr.shape[1] != dim:
        raise InvalidInput(f"wrong dimension: expected {dim}, got {arr.shape[1]}", field=field)
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        with np.errstate(over="ignore", invalid="ignore"):   # overflow to inf is reported just below
            arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = ~np.isfinite(arr).all(axis=1)
        raise InvalidInput(f"row {int(np.argmax(bad))} contains NaN or inf (or overflows float32)", field=field)
    if metric == "cosine" and normalize:
        norms = np.sqrt(np.einsum("ij,ij->i", arr, arr))[:, None]
        if (norms == 0).any():
            raise InvalidInput(f"row {int(np.argmax(norms[:, 0] == 0))} is a zero vector; cosine needs a direction",
                               field=field)
        arr = np.ascontiguousarray(arr / norms, dtype=np.float32)
    return arr


def as_metadata(metadata: Any, n: int, field: str = "metadata") -> list[str] | None:
    """None, or one JSON-object string per row (the stored form). Non-finite floats are rejected."""
    if metadata is None:
        return None
    if isinstance(metadata, Mapping) or not isinstance(metadata, Sequence) or isinstance(metadata, str):
        raise InvalidInput(f"expected a list of dicts (one per id), got {type(metadata).__name__}", field=field)
    if len(metadata) != n:
        raise InvalidInput(f"expected {n} entries (one per id), got {len(metadata)}", field=field)
    out = []
    for i, m in enumerate(metadata):
        if m is None:
            m = {}
        if not isinstance(m, Mapping):
            raise InvalidInput(f"entry {i} is {type(m).__name__}, expected a dict", field=field)
        if not all(isinstance(k, str) for k in m):
            raise InvalidInput(f"entry {i} has a non-string key", field=field)
        try:
            text = json.dumps(dict(m), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"entry {i} is not JSON-serialisable ({exc})", field=field) from None
        if not is_utf8(text):
            where = unencodable_path(m) or "?"
            raise InvalidInput(f"entry {i} has a string that is not valid UTF-8 (a lone surrogate?) at {where}",
                               field=field)
        out.append(text)
    return out


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (lone surrogates such as "\\ud800", which JSON can carry, do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unencodable_path(value: Any, path: str = "") -> str | None:
    """Where in a JSON-like value the first string that is not valid UTF-8 sits (a key or a value), e.g.
    ``a.b[1]``; None when there is none."""
    if isinstance(value, str):
        return None if is_utf8(value) else (path or "(value)")
    if isinstance(value, Mapping):
        for k, v in value.items():
            name = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and not is_utf8(k):
                return f"{path}.<key {k!r}>" if path else f"<key {k!r}>"
            found = unencodable_path(v, name)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for j, v in enumerate(value):
            found = unencodable_path(v, f"{path}[{j}]")
            if found:
                return found
    return None


MAX_K = 100_000   # hits per query: each costs a result slot and, for lossy indexes, k_factor candidates


def check_k(k: Any) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInput(f"k must be a positive int, got {k!r}", field="k")
    if k > MAX_K:
        raise InvalidInput(f"k must be at most {MAX_K:,}, got {k}", field="k")
    return int(k)


def check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}", field="metric")
    return str(metric)


def check_dim(dim: Any) -> int:
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= 65536:
        raise InvalidInput(f"dim must be an int in [1, 65536], got {dim!r}", field="dim")
    return int(dim)


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_bytes(value: Any, field: str = "memory_budget") -> int:
    """Bytes from an int or a string such as '4GiB', '512MB', '2g'."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number, unit = float(value), ""
    elif isinstance(value, str):
        s = value.strip().lower().replace(" ", "")
        i = len(s)
        while i and s[i - 1].isalpha():
            i -= 1
        try:
            number, unit = float(s[:i]), s[i:]
        except ValueError:
            raise InvalidInput(f"cannot read a size from {value!r} (e.g. '4GiB', '512MB')", field=field) from None
    else:
        raise InvalidInput(f"expected bytes as an int or a string like '4GiB', got {value!r}", field=field)
    if unit not in _UNITS or not math.isfinite(number) or number <= 0:
        raise InvalidInput(f"cannot read a positive size from {value!r} (e.g. '4GiB', '512MB')", field=field)
    return int(number * _UNITS[unit])
