"""The encoder contract and registry.

An encoder is an ``nn.Module`` with ``modality`` (one of MODALITIES), ``output_dim`` and
``forward(part) -> (B, output_dim)`` where ``part`` is ``Batch.part(modality)``:
``{"values": Tensor, "mask": BoolTensor(B), "pad_mask": BoolTensor(B, L) (variable-length only)}``.

Tensor layouts (produced by ``polymodal.data.transforms``):
  text  LongTensor (B, L) token ids, pad_mask (B, L)
  image float (B, 3, H, W), normalised
  audio float (B, n_mels, T) log-mel, pad_mask (B, T)
  video float (B, T, 3, H, W), normalised per frame, pad_mask (B, T)

``preprocess()`` tells the data pipeline how to prepare inputs for this encoder (tokenizer, image size,
mean/std, sample rate, mel bins, frames); an empty dict means the library defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..registry import Registry


class Encoder(nn.Module):
    modality: str = ""
    output_dim: int = 0

    def forward(self, part: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def preprocess(self) -> dict[str, Any]:
        return {}


ENCODERS: Registry[Callable[..., Encoder]] = Registry("encoder")


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    return ENCODERS.register(name)


def create_encoder(name: str, **cfg: Any) -> Encoder:
    """The one front door: build a registered encoder by name with keyword config."""
    return ENCODERS.get(name)(**cfg)
