"""Shared by the batch-job tests: a tiny two-split data set and a tiny trained run (helpers in jobkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobkit import make_samples, tiny_run, write_split_dir


@pytest.fixture(scope="session")
def job_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 items: train (40, image+text) and val (10, every 4th text only), tars of 16 items."""
    root = tmp_path_factory.mktemp("job_data")
    return write_split_dir(root, {"train": make_samples(40, 0), "val": make_samples(10, 1, "v", text_every=4)})


@pytest.fixture(scope="session")
def job_run(job_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(job_data, tmp_path_factory.mktemp("job_run") / "run")
