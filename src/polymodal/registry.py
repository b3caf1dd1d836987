"""One tiny name -> factory registry, reused by encoders, fusions, losses and recipes; and `require_ints`, the
size check every config dataclass (models, bridges) runs in its ``__post_init__``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from .errors import ConfigError, NotFound

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise NotFound(f"unknown {self.kind} '{name}' (known: {known})", field=self.kind) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def require_ints(obj: Any, names: Sequence[str], where: str, low: int = 1) -> None:
    """Each of ``obj``'s attributes ``names`` is an integer >= ``low`` (a config dataclass's ``__post_init__``);
    the error names ``where.name``."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"must be an integer >= {low}, got {v!r}", field=f"{where}.{name}" if where else name)
