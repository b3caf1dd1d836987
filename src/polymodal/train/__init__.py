"""Training: `Trainer` / `train` (one process or torchrun DDP), optimizers, schedule, checkpoints."""

from ..errors import TrainingError
from .trainer import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "TrainingError", "train"]
