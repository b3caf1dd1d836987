"""Embedding shards on disk: the output of ``polymodal embed`` and the input of ``index build --from-embeddings``.

    EMB/manifest.json                 model fingerprint, dim, modality, options, the finished shards, counts
    EMB/shard-00000.npy               float32 (n, dim), L2-normalised rows          (--format npy)
    EMB/shard-00000.ids.npy           the samples' ids, a unicode array (no pickle)
    EMB/shard-00000.meta.jsonl        one JSON object per row: what a collection stores about the sample
    EMB/shard-00000.parquet           columns id, embedding (fixed-size list), metadata (JSON)  (--format parquet)

Shard ``k`` covers input items ``k * shard_size`` .. ``(k + 1) * shard_size - 1``; it holds the items that had
the modality to embed (``count``), the others are counted as ``skipped``. Every file of a shard is written
atomically (temp file, fsync, rename) and only then is the shard listed in the manifest (itself replaced
atomically), with each file's size: a shard listed in the manifest whose files still have those sizes and
that row count is finished; anything else is redone."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, read_json_object
from ..errors import InvalidInput, NotFound, require

MANIFEST = "manifest.json"
FORMAT = "polymodal-embeddings"
VERSION = 1
FORMATS = ("npy", "parquet")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass
class ShardData:
    """One output shard's rows: sample ids, vectors (n, dim) float32, one metadata object per row."""

    ids: list[str]
    vectors: np.ndarray
    metadata: list[dict[str, Any]]
    skipped: int = 0
    modalities: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """A compact, pickle-free encoding (for moving a shard from a Ray actor to the driver)."""
        head = json.dumps({"ids": self.ids, "metadata": self.metadata, "skipped": self.skipped,
                           "modalities": self.modalities, "shape": list(self.vectors.shape)}).encode()
        vec = np.ascontiguousarray(self.vectors, dtype=np.float32).tobytes()
        return len(head).to_bytes(8, "little") + head + vec

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardData:
        n = int.from_bytes(data[:8], "little")
        head = json.loads(data[8:8 + n])
        vectors = np.frombuffer(data[8 + n:], dtype=np.float32).reshape(head["shape"]).copy()
        return cls(head["ids"], vectors, head["metadata"], head["skipped"], head["modalities"])


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_shard(out: Path, name: str, data: ShardData, fmt: str) -> dict[str, int]:
    """Write a shard's files (each atomically); returns {file name: size}."""
    vectors = np.ascontiguousarray(data.vectors, dtype=np.float32)
    files: dict[str, bytes] = {}
    if fmt == "npy":
        ids = np.array(data.ids, dtype=str) if data.ids else np.empty(0, dtype="<U1")
        files[f"{name}.npy"] = _npy_bytes(vectors)
        files[f"{name}.ids.npy"] = _npy_bytes(ids)
        files[f"{name}.meta.jsonl"] = "".join(json.dumps(m, ensure_ascii=False, sort_keys=True) + "\n"
                                              for m in data.metadata).encode("utf-8")
    elif fmt == "parquet":
        files[f"{name}.parquet"] = _parquet_bytes(data.ids, vectors, data.metadata)
    else:
        raise InvalidInput(f"expected one of {', '.join(FORMATS)}, got {fmt!r}", field="format")
    for fname, payload in files.items():
        atomic_write_bytes(out / fname, payload)
    return {fname: len(payload) for fname, payload in files.items()}


def _parquet_bytes(ids: list[str], vectors: np.ndarray, metadata: list[dict[str, Any]]) -> bytes:
    pa = require("pyarrow", "ray")
    pq = require("pyarrow.parquet", "ray")
    dim = vectors.shape[1]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim)
    table = pa.table({"id": pa.array(ids, type=pa.string()), "embedding": emb,
                      "metadata": pa.array([json.dumps(m, ensure_ascii=False, sort_keys=True) for m in metadata],
                                           type=pa.string())})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return bytes(buf.getvalue().to_pybytes())


def read_shard(out: Path, entry: dict[str, Any], fmt: str, dim: int, metadata: bool = True
               ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]] | None]:
    """(ids (n,) str, vectors (n, dim) float32, metadata per row or None) of a finished shard."""
    name = entry["name"]
    if fmt == "npy":
        vectors = np.load(out / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        ids = np.load(out / f"{name}.ids.npy", allow_pickle=False)
        metas = None
        meta_file = out / f"{name}.meta.jsonl"
        if metadata and meta_file.is_file():
            metas = [json.loads(line) for line in meta_file.read_text(encoding="utf-8").splitlines() if line]
    else:
        pq = require("pyarrow.parquet", "ray")
        table = pq.read_table(out / f"{name}.parquet")
        ids = np.array(table.column("id").to_pylist(), dtype=str)
        flat = table.column("embedding").combine_chunks().flatten().to_numpy()
        vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), dim)
        metas = [json.loads(m) for m in table.column("metadata").to_pylist()] if metadata else None
    if vectors.shape != (entry["count"], dim) or len(ids) != entry["count"]:
        raise InvalidInput(f"shard {name} holds {vectors.shape} vectors / {len(ids)} ids, the manifest says "
                           f"{entry['count']} x {dim}", source=str(out))
    if metas is not None and len(metas) != entry["count"]:
        raise InvalidInput(f"shard {name} has {len(metas)} metadata rows for {entry['count']} vectors",
                           source=str(out))
    return ids, vectors, metas


def shard_ok(out: Path, entry: dict[str, Any], fmt: str, dim: int) -> bool:
    """Whether a shard the manifest lists is intact: every file has its recorded size and the row count."""
    try:
        for fname, size in entry["files"].items():
            if (out / fname).stat().st_size != size:
                return False
        if fmt == "npy":
            shape = np.load(out / f"{entry['name']}.npy", mmap_mode="r", allow_pickle=False).shape
            return bool(shape == (entry["count"], dim))
        pq = require("pyarrow.parquet", "ray")
        return bool(pq.ParquetFile(out / f"{entry['name']}.parquet").metadata.num_rows == entry["count"])
    except (OSError, ValueError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------- manifest

def read_manifest(out: str | Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise NotFound(f"no {MANIFEST}: not a folder written by `polymodal embed`", source=str(out))
    man = read_json_object(path)
    if man.get("format") != FORMAT or man.get("version") != VERSION:
        raise InvalidInput(f"not a {FORMAT} v{VERSION} manifest (format={man.get('format')!r}, "
                           f"version={man.get('version')!r})", source=str(path))
    return man


def write_manifest(out: Path, man: dict[str, Any]) -> None:
    atomic_write_bytes(out / MANIFEST, (json.dumps(man, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


class EmbeddingShards:
    """A finished (or partial) ``polymodal embed`` output, read shard by shard: what ``index build
    --from-embeddings`` consumes (`polymodal.index.bulk.VectorSource`)."""

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        self.root = Path(path)
        self.manifest = read_manifest(self.root)
        if not self.manifest.get("complete") and not allow_incomplete:
            done, planned = len(self.manifest["shards"]), self.manifest.get("planned")
            raise InvalidInput(f"the embedding job is not finished ({done} of {planned} shards); run "
                               "`polymodal embed` again with the same arguments to finish it", source=str(path))
        self.entries = sorted(self.manifest["shards"], key=lambda e: e["index"])
        self.dim = int(self.manifest["dim"])
        self.format = str(self.manifest["options"]["format"])
        self.count = sum(int(e["count"]) for e in self.entries)

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest.get("modalities") or [])

    def __len__(self) -> int:
        return self.count

    def chunks(self) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        """(vectors, metadata) per shard, in shard order; metadata carries ``sample_id``."""
        for entry in self.entries:
            if entry["count"] == 0:
                continue
            ids, vectors, metas = read_shard(self.root, entry, self.format, self.dim)
            if metas is None:
                metas = [{} for _ in ids]
            yield np.array(vectors, dtype=np.float32), [{**m, "sample_id": str(i)} for m, i in zip(metas, ids, strict=True)]

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` rows drawn uniformly without replacement over all shards (all rows when n >= count)."""
        n = min(n, self.count)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(self.count, size=n, replace=False))
        out, first = [], 0
        for entry in self.entries:
            c = int(entry["count"])
            take = rows[(rows >= first) & (rows < first + c)] - first
            first += c
            if len(take):
                _, vectors, _ = read_shard(self.root, entry, self.format, self.dim, metadata=False)
                out.append(np.asarray(vectors[take], dtype=np.float32))
        return np.concatenate(out) if out else np.empty((0, self.dim), np.float32)


__all__ = ["FORMATS", "MANIFEST", "EmbeddingShards", "ShardData", "read_manifest", "read_shard", "shard_name",
           "shard_ok", "write_manifest", "write_shard"]
