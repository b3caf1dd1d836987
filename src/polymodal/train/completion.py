"""Fit a modality-completion head (`polymodal.models.completion`) on a frozen fusion model's features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data.sample import Sample
from ..models.classifier import FusionModel
from ..models.completion import CompletionHead, completion_features


def train_completion(model: FusionModel, samples: Sequence[Sample], transform: Any, target: str, *,
                     steps: int = 300, lr: float = 2e-3, batch_size: int = 128, hidden: int = 128,
                     seed: int = 0) -> CompletionHead:
    """Fit a `CompletionHead` for ``target`` on ``samples`` (the fusion model stays frozen)."""
    x, y, _ = completion_features(model, samples, transform, target)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the head's init must not disturb the caller's RNG stream
        torch.manual_seed(seed)
        head = CompletionHead(x.shape[1], y.shape[1], hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    head.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
        loss = (1.0 - F.cosine_similarity(head(x[idx]), y[idx], dim=1)).mean()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return head.eval()


__all__ = ["train_completion"]
