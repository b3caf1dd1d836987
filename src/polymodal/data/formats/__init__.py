"""Dataset formats: folder (media + sidecar captions), JSONL manifest, WebDataset shards, and the front
door `open_dataset` that detects which one a path holds."""

from .common import ErrorPolicy
from .dataset import Dataset, open_dataset
from .folder import read_folder, write_folder
from .jsonl import read_jsonl, write_jsonl
from .webdataset import ShardWriter, read_webdataset

__all__ = ["Dataset", "ErrorPolicy", "ShardWriter", "open_dataset", "read_folder", "read_jsonl",
           "read_webdataset", "write_folder", "write_jsonl"]
