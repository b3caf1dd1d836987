"""The tiny data set shared by the trainer tests (helpers live in trainkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainkit import make_samples, write_split_dir


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_data")
    return write_split_dir(root, {"train": make_samples(40, 0), "val": make_samples(8, 1)}, ["image", "text"])
