"""`embed_dataset`: embed every item of a data set into sharded arrays, resumably, locally or on Ray.

    summary = embed_dataset("runs/clip", "data/shapes", "emb/", EmbedOptions(modality="image", shard_size=10_000))

The items ``0 .. n-1`` of the data set are cut into output shards of ``shard_size`` items (see `shards.py`
for the files). Each finished shard is written atomically and then recorded in ``manifest.json``, so a job
that is killed continues where it stopped when run again with the same arguments: the shards the manifest
lists are verified (file sizes, row count) and skipped, the rest are embedded. A manifest written for another
model (fingerprint) or other data or options is refused rather than mixed. Engines: ``local`` (this process,
the model passed in or loaded from ``model_spec``) and ``ray`` (`ray_engine.py`: actors that each load the
model from ``model_spec``, on this machine or a cluster); both run `ShardEmbedder`, so they write the same
shards."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, ModelMismatch
from .options import ENGINES, EmbedOptions
from .shards import (
    FORMAT,
    MANIFEST,
    VERSION,
    ShardData,
    read_manifest,
    shard_name,
    shard_ok,
    write_manifest,
    write_shard,
)
from .source import DataSource, SequentialReader, describe
from .worker import ShardEmbedder

# options that decide what the shards hold: a resumed job must match them (batch size, engine, workers do not)
IDENTITY_KEYS = ("split", "modality", "shard_size", "format", "items", "data_digest")


def plan_shards(n_items: int, shard_size: int) -> list[tuple[int, int, int]]:
    """(shard index, first item, end item) for every output shard."""
    return [(k, k * shard_size, min((k + 1) * shard_size, n_items)) for k in range(math.ceil(n_items / shard_size))]


def _new_manifest(model: Any, spec: str, source: DataSource, opts: EmbedOptions, n_shards: int) -> dict[str, Any]:
    options = {**describe(source), "modality": opts.modality, "shard_size": opts.shard_size, "format": opts.format}
    return {"format": FORMAT, "version": VERSION,
            "model": {"fingerprint": model.fingerprint, "name": getattr(model, "name", None) or spec},
            "dim": int(model.dim), "dtype": "float32", "normalized": True, "modality": opts.modality,
            "modalities": [opts.modality] if opts.modality else [], "options": options, "planned": n_shards,
            "shards": [], "count": 0, "skipped": 0, "complete": False}


def _resume(out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: ``fresh`` for a new output folder; the old one (its intact shards only)
    when it was written for the same model, data and options; refused otherwise."""
    if not (out / MANIFEST).is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InvalidInput(f"exists and holds no {MANIFEST}: choose a new or empty folder", field="--out",
                               source=str(out))
        out.mkdir(parents=True, exist_ok=True)
        return fresh
    old = read_manifest(out)
    if old["model"]["fingerprint"] != fresh["model"]["fingerprint"]:
        raise ModelMismatch(f"{out} holds embeddings of model {old['model'].get('name')} (fingerprint "
                            f"{old['model']['fingerprint'][:12]}), not of this model ({fresh['model']['fingerprint'][:12]}); "
                            "use a new --out folder", field="model", source=str(out))
    changed = [k for k in IDENTITY_KEYS if old["options"].get(k) != fresh["options"].get(k)]
    if old.get("dim") != fresh["dim"]:
        changed.append("dim")
    if changed:
        diff = ", ".join(f"{k}: {old['options'].get(k)!r} -> {fresh['options'].get(k)!r}" for k in changed)
        raise InvalidInput(f"{out} was written with other data or options ({diff}); resume with the same "
                           "arguments or use a new --out folder", field="--out", source=str(out))
    for pattern in (".shard-*.tmp", f".{MANIFEST}.*.tmp"):   # temp files of writes a crash cut short
        for tmp in out.glob(pattern):
            tmp.unlink(missing_ok=True)
    fmt, dim = old["options"]["format"], int(old["dim"])
    kept = [e for e in old["shards"] if shard_ok(out, e, fmt, dim)]
    return {**old, "shards": kept}


class _Writer:
    """Writes finished shards and keeps the manifest in step (one atomic replace per shard)."""

    def __init__(self, out: Path, manifest: dict[str, Any]):
        self.out, self.man = out, manifest
        self.written = 0
        self._sync()

    def _sync(self) -> None:
        man = self.man
        man["shards"].sort(key=lambda e: e["index"])
        man["count"] = sum(e["count"] for e in man["shards"])
        man["skipped"] = sum(e["skipped"] for e in man["shards"])
        man["complete"] = len(man["shards"]) == man["planned"]
        write_manifest(self.out, man)

    def done(self) -> set[int]:
        return {int(e["index"]) for e in self.man["shards"]}

    def finish(self, index: int, start: int, stop: int, data: ShardData) -> None:
        name = shard_name(index)
        files = write_shard(self.out, name, data, self.man["options"]["format"])
        self.man["shards"] = [e for e in self.man["shards"] if e["index"] != index]
        self.man["shards"].append({"index": index, "name": name, "start": start, "stop": stop,
                                   "count": len(data.ids), "skipped": data.skipped, "files": files})
        if self.man["modality"] is None:
            self.man["modalities"] = sorted(set(self.man["modalities"]) | set(data.modalities))
        self.written += 1
        self._sync()


def embed_dataset(model_spec: str, data: str | Path, out: str | Path, options: EmbedOptions | None = None,
                  model: Any = None) -> dict[str, Any]:
    """Embed ``data`` with the model ``model_spec`` names (anything `load_embedding_model` accepts; ``model``:
    the same model already loaded) into shards under ``out``; see the module doc. Returns a summary."""
    opts = options or EmbedOptions()
    opts.check()
    t0 = time.perf_counter()
    source = DataSource.open(data, opts.split)
    if model is None:
        from ..models import load_embedding_model
        model = load_embedding_model(model_spec, opts.device, opts.runtime)
    if opts.modality is not None and opts.modality not in model.modalities:
        raise InvalidInput(f"the model embeds {', '.join(model.modalities)}, not {opts.modality}", field="modality")
    plan = plan_shards(len(source), opts.shard_size)
    out = Path(out)
    writer = _Writer(out, _resume(out, _new_manifest(model, model_spec, source, opts, len(plan))))
    done = writer.done()
    pending = [p for p in plan if p[0] not in done]
    from tqdm import tqdm

    initial = sum(b - a for k, a, b in plan if k in done)
    with tqdm(total=len(source), initial=initial, desc=f"embedding ({opts.engine})", unit="item", file=sys.stderr,
              disable=None if opts.progress else True, dynamic_ncols=True) as bar:
        t_embed = time.perf_counter()
        for (index, start, stop), shard in _run(opts, model, model_spec, source, pending, bar.update):
            writer.finish(index, start, stop, shard)
        seconds = time.perf_counter() - t_embed
    embedded = sum(b - a for _, a, b in pending)
    man = writer.man
    return {"out": str(out), "engine": opts.engine, "workers": opts.workers if opts.engine == "ray" else 1,
            "items": len(source), "count": man["count"], "skipped": man["skipped"], "shards": len(man["shards"]),
            "resumed_shards": len(done), "written_shards": writer.written, "dim": man["dim"],
            "model": man["model"]["fingerprint"], "complete": man["complete"],
            "items_per_s": round(embedded / seconds, 1) if seconds > 0 and embedded else None,
            "seconds": round(time.perf_counter() - t0, 2), "options": asdict(opts)}


def _run(opts: EmbedOptions, model: Any, spec: str, source: DataSource, pending: list[tuple[int, int, int]],
         update: Any) -> Iterator[tuple[tuple[int, int, int], ShardData]]:
    if not pending:
        return
    if opts.engine == "local":
        embedder = ShardEmbedder(model, SequentialReader(source), opts.modality, opts.batch_size)   # one pass
        for index, start, stop in pending:
            yield (index, start, stop), embedder.embed_range(start, stop, update)
        return
    from .ray_engine import run_ray

    by_index = {p[0]: p for p in pending}
    for index, shard in run_ray(spec, source, pending, opts, model.fingerprint):
        p = by_index[index]
        update(p[2] - p[1])
        yield p, shard


__all__ = ["ENGINES", "EmbedOptions", "embed_dataset", "plan_shards"]
