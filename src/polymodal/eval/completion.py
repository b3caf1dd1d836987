"""Evaluate a modality-completion head: do predicted embeddings retrieve the real ones?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.sample import Sample
from ..models.classifier import FusionModel
from ..models.completion import CompletionHead, completion_features
from .retrieval import retrieval_ranks


@torch.no_grad()
def evaluate_completion(model: FusionModel, head: CompletionHead, samples: Sequence[Sample], transform: Any,
                        target: str) -> dict[str, Any]:
    """Item R@1/R@5/median rank and class R@1 of predicted ``target`` embeddings against the real ones."""
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


__all__ = ["evaluate_completion"]
