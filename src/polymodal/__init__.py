"""polymodal: multimodal learning and cross-modal retrieval (text, image, speech/audio, video)."""

from ._runtime import configure_threads as _configure_threads

_configure_threads()  # before torch loads: idle OpenMP threads sleep instead of spinning

from ._version import __version__  # noqa: E402
from .api import load, search  # noqa: E402
from .data import MODALITIES, Batch, Sample, collate, open_dataset  # noqa: E402
from .errors import ConfigError, InvalidInput, MissingExtra, NotFound, PolymodalError  # noqa: E402
from .models import EmbeddingModel  # noqa: E402

__all__ = [
    "MODALITIES", "Batch", "ConfigError", "EmbeddingModel", "InvalidInput", "MissingExtra", "NotFound",
    "PolymodalError", "Sample", "__version__", "collate", "load", "open_dataset", "search",
]
