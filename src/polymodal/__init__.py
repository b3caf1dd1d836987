"""polymodal: multimodal learning and cross-modal retrieval (text, image, speech/audio, video)."""

from .api import EmbeddingModel, load
from .data import MODALITIES, Batch, Sample, collate, open_dataset
from .errors import ConfigError, InvalidInput, MissingExtra, NotFound, PolymodalError

__version__ = "0.1.0"

__all__ = [
    "MODALITIES", "Batch", "ConfigError", "EmbeddingModel", "InvalidInput", "MissingExtra", "NotFound",
    "PolymodalError", "Sample", "__version__", "collate", "load", "open_dataset",
]
