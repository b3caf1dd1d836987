"""`polymodal index build|info|tune`: embed a data set into a collection, print its info, tune its search.

    polymodal index build --model RUN --data DIR [--split S] [--modality image] --collection DIR [--index auto]
    polymodal index build --from-embeddings EMB --collection DIR [--index auto|IVF1024,PQ32] [--train-sample N]
    polymodal index info DIR
    polymodal index tune DIR [--target-recall 0.95]

A build records the model (its fingerprint, the run, the modalities embedded) in the collection; `polymodal
search` then refuses another model. ``--from-embeddings`` builds from the shards of ``polymodal embed`` instead
(no model loaded: the fingerprint comes from their manifest), training the index once on a sample and then
adding the shards (`polymodal.index.bulk`). Thumbnails and audio are written with the collection's save, so a build
that fails or is killed leaves none behind."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..api import load_embedding as load
from ..data.formats import open_dataset
from ..errors import InvalidInput
from ..index import Collection
from ..index.faiss_index import NAMED_KINDS
from ..index.identity import merged_record
from ..index.media import media_files
from ..index.records import EMBED_PREFERENCE, item_metadata


def _open_dataset(path: str, split: str | None) -> Any:
    return open_dataset(path, split)


# ---------------------------------------------------------------------------------------------- build

def _pick_modality(sample: Any, wanted: str | None, supported: tuple[str, ...]) -> str | None:
    if wanted is not None:
        return wanted if getattr(sample, wanted) is not None else None
    return next((m for m in EMBED_PREFERENCE if m in supported and getattr(sample, m) is not None), None)


def _value(sample: Any, modality: str) -> Any:
    return (sample.audio, sample.sample_rate) if modality == "audio" else getattr(sample, modality)


def _samples(data: str, split: str | None) -> tuple[Iterator[tuple[Any, str | None]], int | None]:
    """(sample, split name) over one split, or every split of a generated data set one after another; and the
    item count when the data set knows it (for the progress bar)."""
    ds = _open_dataset(data, split)
    try:
        total: int | None = len(ds)
    except TypeError:
        total = None
    splits = list(getattr(ds, "splits", []) or [])

    def items() -> Iterator[tuple[Any, str | None]]:
        if split is None and splits:
            for name in splits:
                yield from ((s, name) for s in _open_dataset(data, name))
        else:
            yield from ((s, split) for s in ds)

    return items(), total


class _Builder:
    """Buffers samples per modality, embeds a batch at a time, adds to the collection (created on the first
    batch, when the embedding size is known)."""

    def __init__(self, args: argparse.Namespace, model: Any):
        self.args, self.model = args, model
        self.coll: Collection | None = Collection.open(args.collection) if args.append else None
        self.next_id = int(self.coll.ids().max()) + 1 if self.coll is not None and len(self.coll) else 0
        self.buffers: dict[str, list[tuple[Any, dict[str, Any], Any]]] = {}
        self.added = 0
        # what the collection records about the model: its fingerprint (if it has one) and the run it came from
        fp = getattr(model, "fingerprint", None)
        self.identity = None if fp is None else {"fingerprint": fp, "name": getattr(model, "name", None) or args.model}
        if self.coll is not None and self.identity is not None:
            try:   # another model than the one that filled it: refused before anything is embedded
                merged_record(self.coll.model, self.identity, [])
            except BaseException:
                self.coll.close(save=False)
                raise

    def push(self, sample: Any, modality: str, split: str | None) -> None:
        buf = self.buffers.setdefault(modality, [])
        buf.append((_value(sample, modality), item_metadata(sample, modality, split), sample))
        if len(buf) >= self.args.batch_size:
            self.flush(modality)

    def flush(self, modality: str) -> None:
        buf = self.buffers.pop(modality, [])
        if not buf:
            return
        emb = np.asarray(self.model.embed(**{modality: [v for v, _, _ in buf]}), dtype=np.float32)
        if self.coll is None:
            a = self.args
            self.coll = Collection.create(a.collection, dim=emb.shape[1], metric=a.metric, index=a.index,
                                          memory_budget=a.memory_budget)
        ids = np.arange(self.next_id, self.next_id + len(buf), dtype=np.int64)
        media = None
        if self.args.media:  # thumbnails/audio for `polymodal serve`'s media endpoint and page, saved with the items
            media = [media_files(s.image, (s.audio, s.sample_rate) if s.audio is not None else None, s.video, 256)
                     for _, _, s in buf]
        self.coll.add(ids, emb, [m for _, m, _ in buf], media=media, model=self.identity, modalities=[modality])
        self.next_id += len(buf)
        self.added += len(buf)


def _build(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if not args.append and Path(args.collection).exists() and any(Path(args.collection).iterdir()):
        raise InvalidInput("exists; pass --append to add to it, or choose a new folder", field="--collection",
                           source=args.collection)
    model = load(args.model, runtime=args.runtime)
    supported = tuple(model.modalities)
    if args.modality is not None and args.modality not in supported:
        raise InvalidInput(f"the model embeds {', '.join(supported)}, not {args.modality}", field="--modality")
    from tqdm import tqdm

    builder, skipped = _Builder(args, model), 0
    try:
        items, total = _samples(args.data, args.split)
        for sample, split in tqdm(items, total=total, desc="embedding", unit="item", file=sys.stderr, disable=None):
            modality = _pick_modality(sample, args.modality, supported)
            if modality is None:
                skipped += 1
                continue
            builder.push(sample, modality, split)
        for modality in list(builder.buffers):
            builder.flush(modality)
        if builder.coll is None:
            raise InvalidInput("no sample had a modality to embed" + (f" ({args.modality})" if args.modality else ""),
                               field="--data", source=args.data)
        if args.tune:
            builder.coll.tune(target_recall=args.tune)
        builder.coll.save()
        info = builder.coll.info()
        builder.coll.close()
    except BaseException:
        # a failed build leaves nothing half-done: a new collection is removed (under its writer lock), an
        # appended one keeps its last saved state (and no media of the failed batches)
        if builder.coll is not None:
            if args.append:
                builder.coll.close(save=False)
            else:
                builder.coll.drop()
        raise
    summary = {"collection": args.collection, "added": builder.added, "skipped": skipped, "count": info["count"],
               "kind": info["kind"], "faiss": info["faiss"], "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary) if args.json else
          f"added {summary['added']} items ({skipped} skipped) to {args.collection}: {info['count']} items, "
          f"index {info['faiss'] or info['kind']}")
    return 0


def _build_from_embeddings(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..index.bulk import build_from_vectors
    from ..jobs import EmbeddingShards

    t0 = time.perf_counter()
    shards = EmbeddingShards(args.from_embeddings)
    with tqdm(total=len(shards), desc="adding", unit="vec", file=sys.stderr, disable=None) as bar:
        coll, report = build_from_vectors(
            args.collection, shards, metric=args.metric, index=args.index, memory_budget=args.memory_budget,
            train_sample=args.train_sample, model=shards.model, modalities=shards.modalities, progress=bar.update)
    try:
        if args.tune is not None:
            coll.tune(target_recall=args.tune)
            coll.save()
        info = coll.info()
    except BaseException:
        coll.drop()   # like the --model path: a failed build leaves no half-built collection
        raise
    coll.close()   # saved already: nothing left to write
    summary = {"collection": args.collection, "added": report["added"], "skipped": 0, "count": info["count"],
               "kind": info["kind"], "faiss": info["faiss"], "trained_on": report["trained_on"],
               "train_s": report["train_s"], "add_s": report["add_s"], "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary) if args.json else
          f"added {summary['added']} vectors from {args.from_embeddings} to {args.collection}: {info['count']} items, "
          f"index {info['faiss'] or info['kind']}")
    return 0


# ---------------------------------------------------------------------------------------------- index main

def _index_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal index", description=(
        "Build, inspect and tune persistent FAISS collections (stable ids, SQLite metadata, crash-safe saves)."))
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{build,info,tune}")
    b = sub.add_parser("build", help="embed a data set with a model and store it in a collection", description=(
        "Embed every sample of a data set with a trained model (in batches, with a progress bar) and store "
        "the vectors, their metadata and thumbnails/audio in a collection. The collection records the model "
        "(fingerprint, run, modalities), so that searches with another model are refused."))
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="MODEL", help="a trained run, a pretrained checkpoint or an ONNX export "
                     "(anything polymodal.load accepts, see docs/pretrained.md); needs --data")
    b.add_argument("--runtime", choices=["torch", "onnx"],
                   help="with --model: run the model's towers with torch (default) or onnxruntime (extra [onnx]; an "
                        "export dir needs onnx)")
    src.add_argument("--from-embeddings", metavar="EMB",
                     help="build from the shards `polymodal embed` wrote (no model needed: the manifest gives the "
                          "fingerprint); the index is trained once on a sample, then the shards are added")
    b.add_argument("--data", metavar="DIR", help="data set folder / .jsonl / shards (with --model)")
    b.add_argument("--split", help="one split of a generated data set (default: all, one after another)")
    b.add_argument("--modality", choices=EMBED_PREFERENCE,
                   help="embed this modality (samples without it are skipped); default: per sample the first "
                        "of image, video, audio, text that it has")
    b.add_argument("--collection", required=True, metavar="DIR",
                   help="output collection folder (must not exist or be empty, unless --append)")
    b.add_argument("--index", default="auto", metavar="SPEC",
                   help=f"auto (default), {', '.join(NAMED_KINDS)} or a FAISS factory string such as IVF256,PQ16")
    b.add_argument("--metric", default="cosine", choices=("cosine", "ip", "l2"),
                   help="similarity: cosine (default; vectors are normalized), ip (inner product) or l2")
    b.add_argument("--memory-budget", default="4GiB", metavar="SIZE",
                   help="memory the index may use, e.g. 4GiB (default) or 512MB; guides --index auto")
    b.add_argument("--batch-size", type=int, metavar="N",
                   help="with --model: samples per model.embed call (default 64)")
    b.add_argument("--train-sample", type=int, metavar="N",
                   help="with --from-embeddings: vectors to train an IVF/PQ index on (default max(64 nlist, 9984))")
    b.add_argument("--append", action="store_true",
                   help="add to an existing collection (ids continue after the largest; same model only)")
    b.add_argument("--tune", type=float, metavar="RECALL",
                   help="after building, tune search parameters to reach this recall@10 (e.g. 0.95)")
    b.add_argument("--no-media", dest="media", action="store_false", default=None,
                   help="with --model: do not store thumbnails/audio beside the collection (default: store them, "
                        "for the search page of `polymodal serve`)")
    b.add_argument("--json", action="store_true", help="print a JSON summary instead of one line")
    i = sub.add_parser("info", help="print a collection's info as JSON", description=(
        "Print what a collection holds as JSON: count, dimension, metric, index kind and FAISS string, search "
        "parameters and tuning, sizes, and the model that filled it (fingerprint, run, modalities)."))
    i.add_argument("collection", metavar="DIR", help="collection folder")
    t = sub.add_parser("tune", help="tune nprobe/efSearch/k_factor to a target recall and save them", description=(
        "Measure recall@k against exact search on held-out vectors of the collection and keep the fastest "
        "search parameters that reach the target; they are saved with the collection."))
    t.add_argument("collection", metavar="DIR", help="collection folder (opened for writing)")
    t.add_argument("--target-recall", type=float, default=0.95, metavar="R",
                   help="recall@k to reach, in (0, 1] (default 0.95)")
    t.add_argument("-k", type=int, default=10, help="the k of recall@k (default 10)")
    t.add_argument("--sample", type=int, default=1000, metavar="N",
                   help="held-out vectors used as queries (default 1000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _index_parser().parse_args(argv)
    if args.cmd == "build":
        # every cheap check before any work (a bulk build of 100M vectors takes hours)
        if args.tune is not None and not 0 < args.tune <= 1:   # also refuses nan
            raise InvalidInput(f"expected a recall in (0, 1], got {args.tune!r}", field="--tune")
        if args.from_embeddings is not None:
            # what only --model uses: the shards were embedded already (and hold no media)
            for flag, given in (("--data", args.data), ("--split", args.split), ("--modality", args.modality),
                                ("--append", args.append or None), ("--runtime", args.runtime),
                                ("--batch-size", args.batch_size), ("--no-media", args.media)):
                if given is not None:
                    raise InvalidInput("not with --from-embeddings (the shards were embedded already)", field=flag)
            if args.train_sample is not None and args.train_sample < 1:
                raise InvalidInput("must be >= 1", field="--train-sample")
            if Path(args.collection).exists() and any(Path(args.collection).iterdir()):
                raise InvalidInput("exists; choose a new folder", field="--collection", source=args.collection)
            return _build_from_embeddings(args)
        args.runtime = args.runtime or "torch"
        args.batch_size = 64 if args.batch_size is None else args.batch_size
        args.media = True if args.media is None else args.media
        if args.batch_size < 1:
            raise InvalidInput("must be >= 1", field="--batch-size")
        if args.data is None:
            raise InvalidInput("--model needs --data", field="--data")
        if args.train_sample is not None:
            raise InvalidInput("only with --from-embeddings", field="--train-sample")
        return _build(args)
    if args.cmd == "info":
        coll = Collection.open(args.collection, readonly=True)
        print(json.dumps(coll.info(), indent=1))
        coll.close()
        return 0
    with Collection.open(args.collection) as coll:
        report = coll.tune(target_recall=args.target_recall, k=args.k, sample=args.sample)
    print(json.dumps({k: v for k, v in report.items() if k != "tried"}))
    return 0
