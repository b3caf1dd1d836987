"""HTTP service (extra ``[serve]``): a versioned JSON API over a model and its collections, dynamic
micro-batching of embedding requests, Prometheus metrics and a static search page.

    from polymodal.serve import create_app, ServeSettings
    app = create_app(model, root="runs/collections", settings=ServeSettings(api_key="..."))

or from the shell: ``polymodal serve --model RUN --collection DIR``. Importing this package needs nothing
optional; the names below load FastAPI (or say how to install it) on first use."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ServeSettings": "app", "create_app": "app", "MicroBatcher": "batching", "QueueFull": "batching",
            "MediaLimits": "media", "MediaStore": "media"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'polymodal.serve' has no attribute {name!r}")
    from ..errors import require

    require("fastapi", "serve")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
