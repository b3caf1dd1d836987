"""Rebuild a trained run: config.json -> `build_model` -> weights from model.safetensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms.compose import SampleTransform
from ..errors import NotFound
from ..rundir import MODEL, latest_checkpoint, load_model_state, read_run_config
from .registry import build_model


def resolve_run(run: str | os.PathLike[str]) -> Path:
    """The folder holding a run's weights: the run itself, or its newest checkpoint when the top-level
    files are missing (a run interrupted before its first save at the top)."""
    path = Path(run)
    if not path.exists():
        raise NotFound("no such run directory", source=str(path))
    if (path / MODEL).is_file():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise NotFound(f"no {MODEL} here and no checkpoint under checkpoints/", source=str(path))
    return ckpt


def load_model(run: str | os.PathLike[str], device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, SampleTransform, dict[str, Any]]:
    """(model in eval mode, evaluation transform, run config) of a run dir or one of its checkpoints."""
    path = resolve_run(run)
    cfg = read_run_config(path)
    model = build_model(cfg["arch"], cfg["model"])
    load_model_state(model, path / MODEL)
    model.to(device).eval()
    return model, SampleTransform.from_dict(cfg["transform"]), cfg
