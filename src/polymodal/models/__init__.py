"""Models composed from encoders, projections, fusions and losses, built by arch name (`ARCHS`)."""

# Importing the arch modules registers their builders in ARCHS.
from .alignment import AlignmentModel, Features, build_alignment_model, merge_features
from .classifier import FusionClassifier, FusionModel, build_fusion_model
from .embedding import EmbeddingModel
from .loading import load_model, resolve_run
from .registry import ARCHS, build_model

__all__ = ["ARCHS", "AlignmentModel", "EmbeddingModel", "Features", "FusionClassifier", "FusionModel",
           "build_alignment_model", "build_fusion_model", "build_model", "load_model", "merge_features",
           "resolve_run"]
