"""`EmbedOptions`: how `embed_dataset` runs (what the shards hold, and the engine that computes them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInput
from .shards import FORMATS

ENGINES = ("local", "ray")
MODALITIES = ("text", "image", "audio", "video")
RUNTIMES = ("torch", "onnx")


@dataclass(frozen=True)
class EmbedOptions:
    modality: str | None = None      # embed this modality (samples without it are skipped); None: per sample
    split: str | None = None         # one split of a generated data set (None: all, in manifest order)
    batch_size: int = 64             # inputs per model.embed call
    shard_size: int = 10_000         # input items per output shard
    format: str = "npy"              # npy | parquet
    engine: str = "local"            # local | ray
    ray_address: str | None = None   # an existing Ray cluster ("auto", "ray://host:10001"); None: start one here
    workers: int = 2                 # Ray actors, each holding one copy of the model
    cpus_per_worker: float = 1.0
    device: str = "cpu"
    runtime: str = "torch"              # torch | onnx (an ONNX export needs onnx)
    progress: bool = True

    def check(self) -> None:
        for name in ("batch_size", "shard_size", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"must be a positive integer, got {value!r}", field=name)
        if self.format not in FORMATS:
            raise InvalidInput(f"expected one of {', '.join(FORMATS)}, got {self.format!r}", field="format")
        if self.engine not in ENGINES:
            raise InvalidInput(f"expected one of {', '.join(ENGINES)}, got {self.engine!r}", field="engine")
        if self.runtime not in RUNTIMES:
            raise InvalidInput(f"expected one of {', '.join(RUNTIMES)}, got {self.runtime!r}", field="runtime")
        if self.modality is not None and self.modality not in MODALITIES:
            raise InvalidInput(f"expected one of {', '.join(MODALITIES)}, got {self.modality!r}", field="modality")
        if not self.cpus_per_worker > 0:
            raise InvalidInput(f"must be > 0, got {self.cpus_per_worker!r}", field="cpus_per_worker")


__all__ = ["ENGINES", "MODALITIES", "RUNTIMES", "EmbedOptions"]
