"""ONNX export and the onnxruntime runtime of an `EmbeddingModel` (placeholder: being written)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInput
from .embedding import EmbeddingModel


def is_export_dir(path: Path) -> bool:
    return (path / "polymodal_export.json").is_file()


def load_export(path: Path) -> EmbeddingModel:
    raise InvalidInput("ONNX exports cannot be loaded yet", source=str(path))


def with_runtime(model: EmbeddingModel, runtime: str) -> EmbeddingModel:
    raise InvalidInput(f"runtime {runtime!r} is not available yet", field="runtime")
