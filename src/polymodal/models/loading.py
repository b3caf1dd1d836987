"""Rebuild a trained run: config.json -> `build_model` -> weights from model.safetensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms.compose import SampleTransform
from ..rundir import MODEL, check_model_state, read_run_weights
from .registry import build_model


def resolve_run(run: str | os.PathLike[str]) -> Path:
    """The folder whose files load: the run itself when its top-level config and weights verify, else (with a
    `polymodal.rundir.CheckpointFallbackWarning`) its newest checkpoint that verifies; a checkpoint folder is
    itself or an error. See `polymodal.rundir.read_run_weights`, which reads and checks the weights."""
    return read_run_weights(run)[0]


def load_model(run: str | os.PathLike[str], device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, SampleTransform, dict[str, Any]]:
    """(model in eval mode, evaluation transform, run config) of a run dir or one of its checkpoints. A run
    whose top-level files do not verify loads from its newest checkpoint that does (`resolve_run`)."""
    path, cfg, state = read_run_weights(run)
    model = build_model(cfg["arch"], cfg["model"])
    check_model_state(model, state, str(path / MODEL))
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, SampleTransform.from_dict(cfg["transform"]), cfg
