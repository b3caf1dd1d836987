"""Typed errors. Each carries the field and/or file it is about, so the CLI can print one clear line
and the HTTP service can map it to a 4xx JSON body."""

from __future__ import annotations


class PolymodalError(Exception):
    """Base class of every error polymodal raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.message = message
        self.field = field
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{': '.join(where)}: {self.message}" if where else self.message


class InvalidInput(PolymodalError, ValueError):
    """Input data, a file or an argument is not what was expected."""


class NotFound(PolymodalError, LookupError):
    """A referenced file, id, recipe or registry entry does not exist."""


class ConfigError(InvalidInput):
    """A recipe or an override is unknown or of the wrong type."""


class MissingExtra(PolymodalError, ImportError):
    """An optional dependency group is not installed."""


def require(module: str, extra: str):
    """Import an optional dependency or raise a one-line install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtra(
            f"'{module}' is not installed; install it with: pip install 'polymodal[{extra}]'"
        ) from exc
