"""Shared pieces of the dataset formats: the error policy (raise or skip-and-report) and atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ...errors import InvalidInput, NotFound, PolymodalError

T = TypeVar("T")


@dataclass
class ErrorPolicy:
    """``on_error='raise'`` (default) stops at the first bad item with an error naming the file;
    ``'skip'`` skips it and records it, so the caller can report a count and the first few names."""

    on_error: str = "raise"
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise InvalidInput(f"on_error must be 'raise' or 'skip', got {self.on_error!r}", field="on_error")

    def handle(self, err: PolymodalError, name: str) -> None:
        if self.on_error == "raise":
            raise err
        self.skipped.append((name, str(err)))

    def guard(self, make: Callable[[], T], name: str) -> Iterator[T]:
        try:
            item = make()
        except (InvalidInput, NotFound) as err:
            self.handle(err, name)
            return
        yield item

    def summary(self, first: int = 5) -> str:
        if not self.skipped:
            return "skipped 0 items"
        names = ", ".join(n for n, _ in self.skipped[:first])
        more = "" if len(self.skipped) <= first else f", ... (+{len(self.skipped) - first} more)"
        return f"skipped {len(self.skipped)} item(s): {names}{more}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
