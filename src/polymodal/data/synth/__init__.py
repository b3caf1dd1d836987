"""Built-in benchmark data, offline and deterministic from a seed: `shapes` (compositional scenes with
captions in English/Chinese, spoken captions and motion videos) and `digits` (scikit-learn's handwritten
digits with spoken and written labels). See docs/datasets.md."""

from .make import DATASETS, make_dataset

__all__ = ["DATASETS", "make_dataset"]
