"""Typed errors. Each carries the field and/or file it is about, so the CLI can print one clear line
and the HTTP service can map it to a 4xx JSON body."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


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


class ModelOutputError(PolymodalError):
    """A model broke its own contract (e.g. embeddings that are not L2-normalised): a fault of the model, not
    of the caller's input (the service answers 500, not 422)."""


class TrainingError(PolymodalError):
    """Training had to stop (the loss or the gradients became NaN/inf)."""


class Conflict(PolymodalError):
    """The request conflicts with the current state (a name taken, a collection another process writes)."""


class QueueFull(RuntimeError):
    """The embedding micro-batcher's queue holds ``queue_size`` requests already."""

    def __init__(self, retry_after_s: float):
        super().__init__("the embedding queue is full; retry later")
        self.retry_after_s = retry_after_s


class BatcherClosed(RuntimeError):
    """The micro-batcher was stopped (the service is shutting down)."""


class ApiError(Exception):
    """An HTTP error with the service's JSON body (raised by the service's endpoints, rendered by its handler)."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.field, self.headers = status, kind, message, field, headers


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency or raise a one-line install hint. A package that is installed but fails to
    import (a dependency of its own missing or built for another version, e.g. open_clip's torchvision) says so,
    with the reason, instead of claiming it is not installed."""
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError, OSError) as exc:
        top = module.split(".")[0]
        try:
            installed = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            installed = False
        if installed and not (isinstance(exc, ModuleNotFoundError) and exc.name == top):
            reason = " ".join(str(exc).split())[:200]
            raise MissingExtra(f"'{module}' is installed but cannot be imported ({type(exc).__name__}: {reason}); "
                               f"install what it needs with: pip install 'polymodal[{extra}]'") from exc
        raise MissingExtra(
            f"'{module}' is not installed; install it with: pip install 'polymodal[{extra}]'"
        ) from exc


class CollectionLocked(Conflict, InvalidInput):
    """Another process (or object) holds a collection's writer lock; ``pid`` names the holder when known. An
    InvalidInput too, for callers that caught the lock error as one before it had its own class."""

    def __init__(self, message: str, *, pid: int | None = None, field: str | None = None,
                 source: str | None = None):
        self.pid = pid
        super().__init__(message, field=field, source=source)


class ModelMismatch(Conflict):
    """A collection is searched (or written) with another model than the one that filled it: the embeddings of
    two models are not comparable, so the results would be meaningless."""
