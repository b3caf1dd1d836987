"""Batch jobs over data sets: embedding a data set into sharded arrays (resumable), in this process or on Ray
(extra ``[ray]``), and reading those shards back (what ``index build --from-embeddings`` consumes)."""

from .embed import embed_dataset, plan_shards
from .options import ENGINES, RUNTIMES, EmbedOptions
from .shards import FORMATS, EmbeddingShards, ShardData, read_manifest
from .source import DataSource

__all__ = ["ENGINES", "FORMATS", "DataSource", "EmbedOptions", "EmbeddingShards", "RUNTIMES", "ShardData", "embed_dataset",
           "plan_shards", "read_manifest"]
