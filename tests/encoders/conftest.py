"""Fixtures shared by the encoder tests: tiny random pretrained checkpoints, built once per session and only
for the families a test asks for."""

from __future__ import annotations

import pytest
from tinyckpt import TinyCheckpoints


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoints:
    return TinyCheckpoints(tmp_path_factory)
