"""Modality completion ("missing modality recovery"): a small MLP that predicts a missing modality's
embedding from the modalities that are present, on top of a trained fusion model.

Inputs are *fused features*: the fusion model's fusion output with the target modality masked out (the
way the model sees a sample that lacks it). Targets are the target modality's encoder features. The head
is trained with a cosine loss (``1 - cos(pred, target)``) on frozen features, so it trains in seconds.

Evaluation asks whether the predicted embedding retrieves the right item among the real target
embeddings of the evaluation samples (cosine, `polymodal.eval.retrieval.retrieval_ranks`): item R@k
(hit = the sample itself) and class R@1 (hit = a sample of the same class), each with its chance level.

    head = train_completion(model, train_samples, transform, target="audio")
    evaluate_completion(model, head, test_samples, transform, target="audio")
    # {"target": "audio", "n": 200, "item": {"R@1":.., "R@5":.., "median_rank":..},
    #  "class_R@1": .., "chance": {"item_R@1": 1/n, "class_R@1": sum_c p_c^2}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import Sample, collate
from ..errors import InvalidInput
from .classifier import FusionModel, label_ids


class CompletionHead(nn.Module):
    """``Linear -> GELU -> Linear``: fused features (B, in_dim) -> predicted target features (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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
        loss.backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def evaluate_completion(model: FusionModel, head: CompletionHead, samples: Sequence[Sample], transform: Any,
                        target: str) -> dict[str, Any]:
    """Item R@1/R@5/median rank and class R@1 of predicted ``target`` embeddings against the real ones."""
    from ..eval.retrieval import retrieval_ranks

    x, y, labels = completion_features(model, samples, transform, target)
    queries = F.normalize(head(x), dim=1).numpy()
    gallery = F.normalize(y, dim=1).numpy()
    n = len(labels)
    item = retrieval_ranks(queries, gallery, positives=[[i] for i in range(n)]).summary((1, 5))
    by_class = retrieval_ranks(queries, gallery, query_labels=labels.tolist(), gallery_labels=labels.tolist())
    freq = np.bincount(labels) / n
    return {"target": target, "n": n,
            "item": {k: item[k] for k in ("R@1", "R@5", "median_rank")},
            "class_R@1": by_class.recall(1),
            "chance": {"item_R@1": 1.0 / n, "class_R@1": float(np.sum(freq ** 2))}}


__all__ = ["CompletionHead", "completion_features", "evaluate_completion", "train_completion"]
