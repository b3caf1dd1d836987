"""The service tests need the [serve] and [index] extras; without them the folder is not collected."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "faiss")) else ["test_*.py"]
