"""Evaluation: retrieval (recall@k, ranks), zero-shot classification, robustness of fusion models."""

from .retrieval import RankStats, recall_at_k, retrieval_ranks
from .zeroshot import class_embeddings, zeroshot_metrics

__all__ = ["RankStats", "class_embeddings", "recall_at_k", "retrieval_ranks", "zeroshot_metrics"]
