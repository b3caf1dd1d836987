"""Embedding one output shard: read its range of the data set, pick each sample's modality, embed in batches,
keep the rows in data order. The local engine and each Ray actor run this same code, so both write the same
shards (same batches, same rows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..index.records import EMBED_PREFERENCE, item_metadata
from .shards import ShardData
from .source import DataSource, SequentialReader


def pick_modality(sample: Any, wanted: str | None, supported: tuple[str, ...]) -> str | None:
    """``wanted`` if the sample has it; else the first of image, video, audio, text the sample has and the
    model embeds (what ``index build`` does)."""
    if wanted is not None:
        return wanted if getattr(sample, wanted) is not None else None
    return next((m for m in EMBED_PREFERENCE if m in supported and getattr(sample, m) is not None), None)


def _value(sample: Any, modality: str) -> Any:
    return (sample.audio, sample.sample_rate) if modality == "audio" else getattr(sample, modality)


class ShardEmbedder:
    """Embeds ranges of ``source`` (a `DataSource`, or a `SequentialReader` of one) with ``model`` (anything with
    ``embed(**{modality: values}, batch_size=n)``, ``dim`` and ``modalities``); each model call gets
    ``batch_size`` inputs, run as one forward pass of that size."""

    def __init__(self, model: Any, source: DataSource | SequentialReader, modality: str | None, batch_size: int):
        self.model, self.source, self.modality, self.batch_size = model, source, modality, batch_size
        self.supported = tuple(model.modalities)
        self.dim = int(model.dim)

    def embed_range(self, start: int, stop: int, progress: Callable[[int], None] | None = None) -> ShardData:
        """The shard of items ``start <= i < stop``. ``progress(n)`` is called as items are done."""
        ids: list[str] = []
        metas: list[dict[str, Any]] = []
        rows: list[np.ndarray | None] = []
        buffers: dict[str, list[tuple[int, Any]]] = {}
        seen: set[str] = set()
        skipped = 0

        def flush(modality: str) -> None:
            buf = buffers.pop(modality, [])
            if not buf:
                return
            values = [v for _, v in buf]
            emb = np.asarray(self.model.embed(**{modality: values}, batch_size=self.batch_size), dtype=np.float32)
            if emb.shape != (len(buf), self.dim):
                raise InvalidInput(f"the model returned {emb.shape} embeddings for {len(buf)} {modality} inputs, "
                                   f"expected ({len(buf)}, {self.dim})", field="model")
            for (row, _), vec in zip(buf, emb, strict=True):
                rows[row] = vec
            if progress is not None:
                progress(len(buf))

        for sample, split in self.source.read(start, stop):
            modality = pick_modality(sample, self.modality, self.supported)
            if modality is None:
                skipped += 1
                if progress is not None:
                    progress(1)
                continue
            buf = buffers.setdefault(modality, [])
            buf.append((len(rows), _value(sample, modality)))
            ids.append(sample.id)
            metas.append(item_metadata(sample, modality, split))
            rows.append(None)
            seen.add(modality)
            if len(buf) >= self.batch_size:
                flush(modality)
        for modality in list(buffers):
            flush(modality)
        vectors = np.stack([r for r in rows if r is not None]) if rows else np.empty((0, self.dim), np.float32)
        return ShardData(ids, vectors.astype(np.float32, copy=False), metas, skipped, sorted(seen))


__all__ = ["ShardEmbedder", "pick_modality"]
