"""polymodal: multimodal learning and cross-modal retrieval (text, image, speech/audio, video).

Importing polymodal sets ``OMP_WAIT_POLICY=PASSIVE`` in the environment when it is not set already (before
torch loads): idle OpenMP threads then sleep instead of spinning, which on a small or shared CPU is worth up to
2x (measured 4-5x for the CLI on 2 busy cores). Set the variable yourself (e.g. ``ACTIVE``) to choose otherwise;
it has no effect if torch was imported before polymodal."""

from ._runtime import configure_threads as _configure_threads

_configure_threads()  # before torch loads: idle OpenMP threads sleep instead of spinning

from ._version import __version__  # noqa: E402
from .api import load, load_embedding, load_generator, search  # noqa: E402
from .data import MODALITIES, Batch, Sample, collate, open_dataset  # noqa: E402
from .errors import ConfigError, InvalidInput, MissingExtra, NotFound, PolymodalError  # noqa: E402
from .models import EmbeddingModel  # noqa: E402

__all__ = [
    "MODALITIES", "Batch", "ConfigError", "EmbeddingModel", "InvalidInput", "MissingExtra", "NotFound",
    "PolymodalError", "Sample", "__version__", "collate", "load", "load_embedding", "load_generator", "open_dataset",
    "search",
]


def __dir__() -> list[str]:
    """The curated API (tab completion shows it, not the submodules the import system binds here)."""
    return sorted(__all__)
