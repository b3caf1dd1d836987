"""The Ray engine of `embed_dataset` (extra ``[ray]``): the pending output shards as a Ray Dataset (one row per
shard: its range of input items), ``map_batches`` with an actor pool whose actors each load the model once and
embed whole shards (`ShardEmbedder`, the local engine's code), and the driver writing each shard as it comes
back (the same files, manifest and resumability as the local engine).

One row per shard keeps the object store small (a row's result is one shard of vectors) and lets each actor
read its shard's input files itself: on a cluster (``ray_address``) the data set and the model must be at the
same path on every node (a shared file system), and polymodal installed there; the output is written by the
driver only. Without an address a local Ray instance is started with ``workers * cpus_per_worker`` CPUs, and
shut down at the end; an already initialised Ray (``ray.init`` by the caller) is used as it is. The model
spec's local paths are made absolute for the actors, which load it with the job's device and runtime.

Data without per-tar counts (JSONL, folders, tars without ``sizes.json``) can only be enumerated from its first
item: each actor keeps one enumeration open (`SequentialReader`) and continues it for the next shard it gets,
so as shards arrive roughly in order it walks the data about once; WebDataset with ``sizes.json`` avoids
the walk altogether (each shard opens only its tars)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelMismatch, require
from .options import EmbedOptions
from .shards import ShardData
from .source import DataSource, SequentialReader
from .worker import ShardEmbedder


class ShardActor:
    """A Ray Data actor: holds one model and embeds the shards of the rows it is given."""

    def __init__(self, spec: str, device: str, runtime: str, source: DataSource, modality: str | None,
                 batch_size: int, fingerprint: str, threads: int):
        import torch

        from ..models import load_embedding_model

        torch.set_num_threads(max(1, threads))
        model = load_embedding_model(spec, device, runtime)
        if model.fingerprint != fingerprint:
            raise ModelMismatch(f"the Ray worker loaded {spec} with fingerprint {model.fingerprint[:12]}, but the "
                                f"driver's model has {fingerprint[:12]}: the file differs on this node",
                                field="model", source=spec)
        # one reader per actor: shards arrive mostly in order, so data without per-tar counts is walked
        # about once per actor rather than from its start for every shard
        self.embedder = ShardEmbedder(model, SequentialReader(source), modality, batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = [self.embedder.embed_range(int(a), int(b)).to_bytes()
                    for a, b in zip(batch["start"], batch["stop"], strict=True)]
        out = np.empty(len(payloads), dtype=object)
        out[:] = payloads
        return {"shard": np.asarray(batch["shard"], dtype=np.int64), "payload": out}


def _absolute(path: str) -> str:
    p = Path(path).expanduser()
    return str(p.resolve()) if path and p.exists() else path


def _spec_for_workers(spec: str) -> str:
    """The spec with its local paths made absolute (a worker's working folder is not the driver's): a plain
    path, the PATH of ``KIND:PATH``, and the config / checkpoint of ``open_clip:ARCH[:CHECKPOINT]`` (the grammar
    of `polymodal.models.pretrained.detect`). Names that are no existing path (an OpenCLIP architecture) stay."""
    from ..models.pretrained import ALIASES, KINDS, _is_drive

    head, sep, rest = spec.partition(":")
    key = ALIASES.get(head, head)
    if sep and key in KINDS and not _is_drive(head):
        if key == "open_clip":
            arch, sep2, checkpoint = rest.partition(":")
            arch = _absolute(arch) if arch.endswith(".json") else arch
            return f"{head}:{arch}{sep2}{_absolute(checkpoint)}"
        return f"{head}:{_absolute(rest)}"
    return _absolute(spec)


def run_ray(spec: str, source: DataSource, pending: list[tuple[int, int, int]], opts: EmbedOptions,
            fingerprint: str) -> Iterator[tuple[int, ShardData]]:
    """(shard index, rows) for each pending shard, as the actors finish them (in any order)."""
    ray = require("ray", "ray")
    rdata = require("ray.data", "ray")
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
        if opts.ray_address:
            ray.init(address=opts.ray_address, **kwargs)
        else:
            cpus = max(1, int(round(opts.workers * opts.cpus_per_worker)))
            ray.init(num_cpus=cpus, **kwargs)
        started = True
    try:
        ctx = rdata.DataContext.get_current()
        ctx.enable_progress_bars = False     # the job has its own bar (items, ETA)
        ctx.print_on_execution_start = False
        rows = [{"shard": k, "start": a, "stop": b} for k, a, b in pending]
        ds = rdata.from_items(rows, override_num_blocks=len(rows))
        gpus = 1 if opts.device.startswith("cuda") else 0
        threads = max(1, int(opts.cpus_per_worker))
        ds = ds.map_batches(
            ShardActor, batch_size=1, batch_format="numpy",
            compute=rdata.ActorPoolStrategy(size=opts.workers),
            num_cpus=opts.cpus_per_worker, num_gpus=gpus,
            fn_constructor_kwargs={"spec": _spec_for_workers(spec), "device": opts.device, "runtime": opts.runtime,
                                   "source": source, "modality": opts.modality, "batch_size": opts.batch_size,
                                   "fingerprint": fingerprint, "threads": threads})
        for row in ds.iter_rows():
            yield int(row["shard"]), ShardData.from_bytes(bytes(row["payload"]))
    finally:
        if started:
            ray.shutdown()


__all__ = ["ShardActor", "run_ray"]
