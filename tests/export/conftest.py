"""Export tests need the [onnx] extra; without it the folder is not collected. `tiny_run` is a run directory of the
packaged imagebind_tiny recipe (text, image, audio, video towers) with random weights: parity does not need
training, and writing it takes a fraction of a second."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

collect_ignore_glob = [] if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")) else ["test_*.py"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exportkit import write_random_run

    return write_random_run(tmp_path_factory.mktemp("export") / "run")
