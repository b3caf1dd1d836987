"""Pretrained checkpoints as embedding models, no training (placeholder: being written)."""

from __future__ import annotations

import torch

from ..errors import NotFound
from .embedding import EmbeddingModel


def load_pretrained(spec: str, device: str | torch.device = "cpu") -> EmbeddingModel:
    raise NotFound("not a polymodal run", source=spec)
