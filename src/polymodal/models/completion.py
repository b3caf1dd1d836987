"""Modality completion ("missing modality recovery"): a small MLP that predicts a missing modality's
embedding from the modalities that are present, on top of a trained fusion model.

Inputs are *fused features*: the fusion model's fusion output with the target modality masked out (the
way the model sees a sample that lacks it). Targets are the target modality's encoder features. The head
is trained with a cosine loss (``1 - cos(pred, target)``) on frozen features, so it trains in seconds.

Evaluation asks whether the predicted embedding retrieves the right item among the real target
embeddings of the evaluation samples (cosine): item R@k (hit = the sample itself) and class R@1 (hit = a
sample of the same class), each with its chance level. Training lives in `polymodal.train.completion`,
evaluation in `polymodal.eval.completion`; this module holds the head and the features both use.

    head = train_completion(model, train_samples, transform, target="audio")       # polymodal.train
    evaluate_completion(model, head, test_samples, transform, target="audio")      # polymodal.eval
    # {"target": "audio", "n": 200, "item": {"R@1":.., "R@5":.., "median_rank":..},
    #  "class_R@1": .., "chance": {"item_R@1": 1/n, "class_R@1": sum_c p_c^2}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.collate import collate
from ..data.sample import Sample
from ..errors import InvalidInput
from .classifier import FusionModel, label_ids


class CompletionHead(nn.Module):
    """``Linear -> GELU -> Linear``: fused features (B, in_dim) -> predicted target features (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


@torch.no_grad()
def completion_features(model: FusionModel, samples: Sequence[Sample], transform: Any, target: str,
                        batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(fused features with ``target`` masked (N, F), target encoder features (N, D), labels (N,)) for the
    samples that have ``target`` and at least one other modality the model uses."""
    if target not in model.modalities or target not in model.classifier.encoders:
        raise InvalidInput(f"the model has no {target!r} encoder (it has {list(model.modalities)})", field="target")
    others = [m for m in model.modalities if m != target]
    keep = [s for s in samples if getattr(s, target) is not None and any(getattr(s, m) is not None for m in others)]
    if len(keep) < 2:
        raise InvalidInput(f"need >= 2 samples with {target!r} and another modality, got {len(keep)}",
                           field="samples")
    device = next(model.parameters()).device
    fused, feats = [], []
    model.eval()
    for lo in range(0, len(keep), batch_size):
        batch = collate(keep[lo:lo + batch_size], transform).to(device)
        without = {m: (torch.zeros_like(v) if m == target else v) for m, v in batch.mask.items()}
        fused.append(model.fused(batch, without).float().cpu())
        feats.append(model.classifier.encoders[target](batch.part(target)).float().cpu())
    labels = label_ids([s.metadata for s in keep], model.label_field, model.num_classes, model.classes,
                       [s.id for s in keep])
    return torch.cat(fused), torch.cat(feats), np.asarray(labels, dtype=np.int64)


__all__ = ["CompletionHead", "completion_features"]
