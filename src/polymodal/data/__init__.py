"""Data: the `Sample`/`Batch` model, dataset formats, transforms and built-in synthetic data."""

from .collate import collate
from .formats import open_dataset
from .sample import MODALITIES, Batch, Sample

__all__ = ["MODALITIES", "Batch", "Sample", "collate", "open_dataset"]
