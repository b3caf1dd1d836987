"""Training: `Trainer` / `train` (one process or torchrun DDP), optimizers, schedule, checkpoints.

Kept light: importing ``polymodal.train.checkpoint`` (what ``polymodal.load`` needs) must not pull in
the trainer. ``Trainer``, ``train`` and ``TrainResult`` are imported on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "Trainer", "TrainingError", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'polymodal.train' has no attribute {name!r}")
