"""The service tests need the [serve] and [index] extras; without them the folder is not collected."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

collect_ignore_glob = [] if all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "faiss")) else ["test_*.py"]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``client(model=None, **ServeSettings fields)`` -> an entered TestClient over a fresh root (API key KEY)."""
    from fastapi.testclient import TestClient
    from servekit import KEY, FakeModel

    from polymodal.serve import ServeSettings, create_app

    opened: list[TestClient] = []

    def make(model: FakeModel | None = None, **settings: Any) -> TestClient:
        app = create_app(model or FakeModel(), root=tmp_path / "root", collection=tmp_path / "root" / "main",
                         settings=ServeSettings(**{"api_key": KEY, **settings}))
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)
