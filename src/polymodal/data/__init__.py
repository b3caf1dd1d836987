"""Data: the `Sample`/`Batch` model, dataset formats, transforms and built-in synthetic data."""

from .sample import MODALITIES, Batch, Sample, collate

__all__ = ["MODALITIES", "Batch", "Sample", "collate"]
