"""Models composed from encoders, projections, fusions and losses, built by arch name (`ARCHS`)."""

# Importing the arch modules registers their builders (ARCHS) and configs (MODEL_CONFIGS).
from .alignment import AlignmentConfig, AlignmentModel, Features, build_alignment_model, merge_features
from .classifier import FusionClassifier, FusionModel, build_fusion_model
from .embedding import EmbeddingModel
from .front import RUNTIMES, is_polymodal_run, load_embedding_model
from .fusion_config import FusionModelConfig
from .loading import load_model, resolve_run
from .registry import ARCHS, MODEL_CONFIGS, build_model, model_config

__all__ = ["ARCHS", "MODEL_CONFIGS", "AlignmentConfig", "AlignmentModel", "EmbeddingModel", "Features",
           "FusionClassifier", "FusionModel", "FusionModelConfig", "RUNTIMES", "build_alignment_model", "build_fusion_model",
           "build_model", "is_polymodal_run", "load_embedding_model", "load_model", "merge_features",
           "model_config", "resolve_run"]
