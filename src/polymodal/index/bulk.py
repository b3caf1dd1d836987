"""Bulk build: a collection from precomputed embeddings (the autofaiss / clip-retrieval way).

    coll = build_from_vectors("runs/coll", source, index="IVF1024,PQ32", model={"fingerprint": ..., "name": ...})

``source`` is anything with ``dim``, ``len()``, ``sample(n, seed)`` (rows drawn uniformly) and ``chunks()``
(``(vectors, metadata)`` in order), such as the shards ``polymodal embed`` writes
(`polymodal.jobs.EmbeddingShards`). The index the final size calls for (``auto``: autofaiss' rules, see
`tuning.choose_auto`, for the whole count; or the kind / factory string given) is trained once, on a sample
drawn over all chunks, before anything is added; then the chunks are added one after another (FAISS
parallelises each add over its OpenMP threads, IVF encoding and HNSW insertion alike, while the next chunk is
read in a background thread), and the collection is saved once at the end. Building the same index
incrementally with `Collection.add` would instead stage, train at 1,000 vectors and retrain each time the
collection grew 4x. Ids are ``first_id, first_id + 1, ...`` in chunk order; the metadata of each row is
stored as given; ``model`` / ``modalities`` are recorded as the collection's model (so searches with another
model are refused). A failed build deletes the half-built collection."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidInput
from .collection import DEFAULT_BUDGET, Collection
from .faiss_index import NAMED_KINDS, TRAIN_PER_LIST, AnnIndex, default_params
from .tuning import choose_auto
from .validate import as_vectors

Chunk = tuple[np.ndarray, list[dict[str, Any]] | None]


class VectorSource(Protocol):
    dim: int

    def __len__(self) -> int: ...

    def sample(self, n: int, seed: int = 0) -> np.ndarray: ...

    def chunks(self) -> Iterable[Chunk]: ...


def _planned_ann(spec: str, n: int, dim: int, metric: str, budget: int) -> AnnIndex | None:
    """The index a collection of ``n`` vectors ends with, still empty; None when it needs no up-front work
    (flat, or an IVF kind too small to train: the collection stages it as usual)."""
    if spec == "auto":
        kind, m = choose_auto(n, dim, budget)
        ann = None if kind == "flat" else AnnIndex(dim, metric, kind, hnsw_m=m, budget=budget)
    elif spec in NAMED_KINDS:
        ann = None if spec == "flat" else AnnIndex(dim, metric, spec, budget=budget)
    else:
        ann = AnnIndex(dim, metric, "factory", spec, budget=budget)
    if ann is None or (ann.needs_training() and n < ann.min_train()):
        return None
    return ann


def train_planned(ann: AnnIndex, n: int, source: VectorSource, train_sample: int | None, seed: int) -> dict[str, Any]:
    """Create ``ann``'s FAISS index for ``n`` vectors and train it (if it needs training) on a sample of the
    source; what `AnnIndex.build` does, without adding the vectors. Returns {"trained_on": rows}."""
    index = ann._new_faiss_index(n)   # the structure AnnIndex.build would create for n vectors
    rows = 0
    if not index.is_trained:
        import faiss

        ivf = faiss.try_extract_index_ivf(index)
        default = min(n, max(TRAIN_PER_LIST * (int(ivf.nlist) if ivf is not None else 256), 39 * 256))
        want = default if train_sample is None else min(train_sample, n)
        sample = as_vectors(source.sample(want, seed), ann.dim, ann.metric, field="train_sample")
        rows = len(sample)
        try:
            index.train(np.ascontiguousarray(sample))
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()
            raise InvalidInput(f"cannot train {ann.built_spec!r} on {rows} vectors: {lines[-1] if lines else exc}",
                               field="train_sample") from None
    ann.index, ann.trained_n, ann.dirty = index, n, True
    return {"trained_on": rows}


def _prefetched(chunks: Iterable[Chunk]) -> Iterator[Chunk]:
    """The chunks, each read in a background thread while the previous one is added."""
    it = iter(chunks)
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(next, it, None)
        while True:
            chunk = nxt.result()
            if chunk is None:
                return
            nxt = pool.submit(next, it, None)
            yield chunk


def build_from_vectors(path: str | Path, source: VectorSource, *, metric: str = "cosine", index: str = "auto",
                       memory_budget: int | str = DEFAULT_BUDGET, train_sample: int | None = None,
                       model: Any = None, modalities: Iterable[str] | None = None, first_id: int = 0,
                       seed: int = 0, progress: Callable[[int], None] | None = None
                       ) -> tuple[Collection, dict[str, Any]]:
    """A new collection at ``path`` holding every vector of ``source`` (see the module doc), returned open for
    writing and saved, with a report (rows trained on, seconds spent training, adding, saving).
    ``train_sample``: rows to train an IVF / PQ index on (default: what `AnnIndex.build` uses, max(64 nlist,
    9984) capped at the count)."""
    n, dim = len(source), int(source.dim)
    if train_sample is not None and (isinstance(train_sample, bool) or train_sample < 1):
        raise InvalidInput(f"must be a positive integer, got {train_sample!r}", field="train_sample")
    coll = Collection.create(path, dim=dim, metric=metric, index=index, memory_budget=memory_budget)
    try:
        spec, budget = coll._cfg["index"], int(coll._cfg["memory_budget"])
        ann = _planned_ann(spec, n, dim, coll.metric, budget)
        t0 = time.perf_counter()
        report: dict[str, Any] = {"trained_on": 0}
        if ann is not None:
            report = train_planned(ann, n, source, train_sample, seed)
            coll._ann = ann   # a new, empty collection that only this function holds
            coll._params, coll._tuned, coll._state_dirty = default_params(ann.nlist, ann.lossy), None, True
        t1 = time.perf_counter()
        mods = list(modalities or [])
        next_id = first_id
        for vectors, metadata in _prefetched(source.chunks()):
            ids = np.arange(next_id, next_id + len(vectors), dtype=np.int64)
            coll.add(ids, vectors, metadata, model=model, modalities=mods)
            next_id += len(vectors)
            if progress is not None:
                progress(len(vectors))
        if next_id - first_id != n:
            raise InvalidInput(f"the source said {n} vectors but gave {next_id - first_id}", field="source")
        t2 = time.perf_counter()
        coll.save()
    except BaseException:
        coll.drop()
        raise
    report.update(added=n, train_s=round(t1 - t0, 3), add_s=round(t2 - t1, 3),
                  save_s=round(time.perf_counter() - t2, 3))
    return coll, report


__all__ = ["VectorSource", "build_from_vectors", "train_planned"]
