"""The files inside one generation folder of a collection, and how a save and an open handle them.

    ids.npy  vectors.npy        the raw vectors and their ids (`VectorStore`; memory-mapped on open)
    index.faiss  [labels.npy  dead.npy]   the ANN index (`AnnIndex.write` / `AnnIndex.read`)
    meta.sqlite                 the metadata (`MetadataStore`)

A save writes only what changed since the previous generation and hard-links the rest from it (generations
are immutable, so sharing a file is safe). The protocol around these folders (CURRENT, temp folders,
publishing, cleanup) is in `persist.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput
from . import persist
from .faiss_index import AnnIndex
from .metadata import MetadataStore, create_empty
from .vectors import VectorStore

ANN_FILES = ("index.faiss", "labels.npy", "dead.npy")


def read_files(root: Path, folder: Path, state: dict[str, Any], writer: bool
               ) -> tuple[VectorStore, AnnIndex, MetadataStore]:
    """The vectors, index and metadata of the generation in ``folder``. A writer gets a private working copy of
    the metadata (``root/.work.sqlite``); a reader opens the generation's file read-only."""
    dim = int(state["dim"])
    ids = np.load(folder / "ids.npy")
    vectors = np.load(folder / "vectors.npy", mmap_mode="r" if len(ids) else None)
    if vectors.shape != (len(ids), dim) or len(ids) != state["count"]:
        raise InvalidInput(f"vectors {vectors.shape} / ids {ids.shape} do not match count {state['count']}",
                           source=str(folder))
    ann = AnnIndex.read(folder, dim, state["metric"], state["ann"])
    db = folder / "meta.sqlite"
    meta = MetadataStore.open_working(root / persist.WORK_DB, db) if writer else MetadataStore.open_readonly(db)
    return VectorStore(dim, ids, vectors), ann, meta


def write_files(tmp: Path, prev: Path | None, store: VectorStore, ann: AnnIndex, meta: MetadataStore,
                vectors_changed: bool) -> None:
    """Fill the new generation folder ``tmp``: each part is written if it changed (or there is no previous
    generation ``prev``), else hard-linked from ``prev``."""
    if vectors_changed or prev is None:
        np.save(tmp / "ids.npy", store.ids)
        np.save(tmp / "vectors.npy", store.vectors)
    else:
        for f in ("ids.npy", "vectors.npy"):
            persist.link_or_copy(prev / f, tmp / f)
    if ann.dirty or prev is None:
        ann.write(tmp)
    else:
        for f in ANN_FILES:
            if (prev / f).exists():
                persist.link_or_copy(prev / f, tmp / f)
    if meta.dirty or prev is None:
        if prev is None and len(store) == 0 and meta.count() == 0:
            create_empty(tmp / "meta.sqlite")
        else:
            meta.backup_to(tmp / "meta.sqlite")
    else:
        persist.link_or_copy(prev / "meta.sqlite", tmp / "meta.sqlite")
