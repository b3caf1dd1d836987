"""polymodal: multimodal learning and cross-modal retrieval (text, image, speech/audio, video)."""

import os
from typing import Any

from .api import EmbeddingModel, load
from .data import MODALITIES, Batch, Sample, collate, open_dataset
from .errors import ConfigError, InvalidInput, MissingExtra, NotFound, PolymodalError

__version__ = "0.1.0"


def search(collection: Any, model: Any = None, **query: Any) -> Any:
    """Embed a query (``text=``, ``image=``, ``audio=(wave, sr)``, ``video=``, ``vector=``; several are fused
    with ``weights=``) and search a collection (a `polymodal.index.Collection` or its directory, opened
    read-only). ``model`` is a loaded model or a run directory. Needs the ``[index]`` extra."""
    from .index import Collection, search_with_model

    if isinstance(model, str | os.PathLike):
        model = load(model)
    if isinstance(collection, Collection):
        return search_with_model(collection, model, **query)
    coll = Collection.open(collection, readonly=True)
    try:
        return search_with_model(coll, model, **query)
    finally:
        coll.close(save=False)

__all__ = [
    "MODALITIES", "Batch", "ConfigError", "EmbeddingModel", "InvalidInput", "MissingExtra", "NotFound",
    "PolymodalError", "Sample", "__version__", "collate", "load", "open_dataset", "search",
]
