"""Shared pieces of the dataset formats: the error policy (raise or skip-and-report)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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

    def warning(self, first: int = 3) -> str | None:
        """One console line with the count and the first errors (each names its file), or None."""
        if not self.skipped:
            return None
        return skipped_line(len(self.skipped), [e for _, e in self.skipped[:first]])

    def summary(self, first: int = 5) -> str:
        if not self.skipped:
            return "skipped 0 items"
        names = ", ".join(n for n, _ in self.skipped[:first])
        more = "" if len(self.skipped) <= first else f", ... (+{len(self.skipped) - first} more)"
        return f"skipped {len(self.skipped)} item(s): {names}{more}"


def skipped_line(count: int, errors: list[str]) -> str:
    """``skipped N bad item(s) (on_error=skip): err1; err2 (+K more)`` on one line."""
    shown = "; ".join(" ".join(e.split()) for e in errors)
    more = f" (+{count - len(errors)} more)" if count > len(errors) else ""
    return f"skipped {count} bad item(s) (on_error=skip): {shown}{more}"
