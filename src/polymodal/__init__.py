"""polymodal: multimodal learning and cross-modal retrieval (text, image, speech/audio, video)."""

from .data import MODALITIES, Batch, Sample, collate
from .errors import ConfigError, InvalidInput, MissingExtra, NotFound, PolymodalError

__version__ = "0.1.0"

__all__ = [
    "MODALITIES", "Batch", "ConfigError", "InvalidInput", "MissingExtra", "NotFound", "PolymodalError",
    "Sample", "__version__", "collate",
]
