"""`load_embedding_model(SPEC)`: any model polymodal can embed with, as an `EmbeddingModel`.

SPEC is a polymodal alignment run (or one of its checkpoints), a pretrained checkpoint (see
`polymodal.models.pretrained`: a Hugging Face CLIP / SigLIP / CLAP / Chinese-CLIP / ALIGN folder, an OpenCLIP model,
a sentence-transformers folder), or an ONNX export written by ``polymodal export`` (`polymodal.models.onnx`).
``runtime="onnx"`` runs the towers with onnxruntime instead of torch (extra ``[onnx]``).

`polymodal.load` is this function; the library layers that need to load a model by name (a Ray actor of the batch
embedding job, the service) call it here, below the front door."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import InvalidInput
from ..rundir import CONFIG, RUN_FORMAT, read_run_config
from .alignment import AlignmentModel
from .embedding import EmbeddingModel
from .loading import load_model, resolve_run

RUNTIMES = ("torch", "onnx")


def load_embedding_model(spec: str | os.PathLike[str], device: str | torch.device = "cpu",
                         runtime: str = "torch") -> EmbeddingModel:
    """An `EmbeddingModel` for ``spec`` (see the module docstring). Errors name what was looked for."""
    if runtime not in RUNTIMES:
        raise InvalidInput(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}", field="runtime")
    from . import onnx, pretrained

    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir() and onnx.is_export_dir(path):
        if runtime != "onnx":
            raise InvalidInput(f"{path} is an ONNX export: load it with runtime='onnx' (--runtime onnx)",
                               field="runtime", source=str(path))
        return onnx.load_export(path)
    if is_polymodal_run(path):
        model = _load_run(path, device)
    else:
        model = pretrained.load_pretrained(text, device)
    return onnx.with_runtime(model, runtime) if runtime != "torch" else model


def is_polymodal_run(path: Path) -> bool:
    """A folder whose config.json says it is a polymodal run (its ``format``), or a run whose top-level config
    is damaged but which has checkpoints (the run loader then falls back to them)."""
    if not path.is_dir():
        return False
    if (path / "checkpoints").is_dir():
        return True
    try:
        cfg = json.loads((path / CONFIG).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == RUN_FORMAT


def _load_run(run: Path, device: str | torch.device) -> EmbeddingModel:
    arch = read_run_config(resolve_run(run))["arch"]  # refuse another arch before building anything
    if arch != "alignment":
        raise InvalidInput(f"run is a {arch!r} model; embedding needs an 'alignment' run", field="arch",
                           source=str(run / CONFIG))
    model, transform, cfg = load_model(run, device)
    assert isinstance(model, AlignmentModel)  # what the "alignment" arch builds
    return EmbeddingModel(model, transform, cfg, torch.device(device), name=str(run))


__all__ = ["RUNTIMES", "is_polymodal_run", "load_embedding_model"]
