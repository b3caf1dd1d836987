"""`polymodal index build|info|tune` and `polymodal search`.

    polymodal index build --model RUN --data DIR [--split S] [--modality image] --collection DIR [--index auto]
    polymodal search --collection DIR [--model RUN] (--text T | --image F | --audio F | --video F | --vector-file F)
                     [--weights text=0.5,audio=0.5] [-k 10] [--filter field=value ...] [--json]

Several query inputs form one fused query (see `polymodal.index.query`)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound
from .collection import Collection
from .faiss_index import NAMED_KINDS

PREFERENCE = ("image", "video", "audio", "text")   # a sample's default modality when --modality is not given
RESERVED = ("sample_id", "caption", "split", "modality", "source")


def _load_model(run: str) -> Any:
    import polymodal

    load = getattr(polymodal, "load", None)
    if load is None:
        raise NotFound("this polymodal has no model loader (polymodal.load)", field="--model")
    return load(run)


def _media_store(collection: str) -> Any:
    """The service's media store for this collection, or None without the [serve] extra."""
    try:
        from ..serve.media import MediaStore
    except ImportError:
        return None
    return MediaStore(Path(collection))


def _open_dataset(path: str, split: str | None) -> Any:
    from ..data.formats import open_dataset

    return open_dataset(path, split)


# ---------------------------------------------------------------------------------------------- build

def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def flatten_metadata(meta: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """JSON-safe scalars (and lists of scalars) of a sample's metadata, nested keys joined with dots."""
    out: dict[str, Any] = {}
    for key, v in meta.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            out.update(flatten_metadata(v, name + "."))
        elif _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v)):
            out[name] = v
    return out


def item_metadata(sample: Any, modality: str, split: str | None) -> dict[str, Any]:
    meta = {"sample_id": sample.id, "caption": sample.text, "split": split, "modality": modality,
            "source": sample.source}
    for key, v in flatten_metadata(sample.metadata or {}).items():
        meta[f"meta.{key}" if key in RESERVED else key] = v
    return {k: v for k, v in meta.items() if v is not None}


def _pick_modality(sample: Any, wanted: str | None, supported: tuple[str, ...]) -> str | None:
    if wanted is not None:
        return wanted if getattr(sample, wanted) is not None else None
    return next((m for m in PREFERENCE if m in supported and getattr(sample, m) is not None), None)


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
        self.media = _media_store(args.collection) if args.media else None

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
        self.coll.add(ids, emb, [m for _, m, _ in buf])
        if self.media is not None:  # thumbnails/audio for `polymodal serve`'s media endpoint and page
            for i, (_, _, s) in zip(ids.tolist(), buf, strict=True):
                audio = (s.audio, s.sample_rate) if s.audio is not None else None
                self.media.put_media(i, image=s.image, audio=audio, video=s.video)
        self.next_id += len(buf)
        self.added += len(buf)


def _build(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if not args.append and Path(args.collection).exists() and any(Path(args.collection).iterdir()):
        raise InvalidInput("exists; pass --append to add to it, or choose a new folder", field="--collection",
                           source=args.collection)
    model = _load_model(args.model)
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
        # a failed build leaves nothing half-done: a new collection is removed, an appended one keeps its
        # last saved state
        if builder.coll is not None:
            builder.coll.close(save=False)
            if not args.append:
                shutil.rmtree(args.collection, ignore_errors=True)
        raise
    summary = {"collection": args.collection, "added": builder.added, "skipped": skipped, "count": info["count"],
               "kind": info["kind"], "faiss": info["faiss"], "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary) if args.json else
          f"added {summary['added']} items ({skipped} skipped) to {args.collection}: {info['count']} items, "
          f"index {info['faiss'] or info['kind']}")
    return 0


# ---------------------------------------------------------------------------------------------- index main

def _index_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal index", description="Build and inspect FAISS collections.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="embed a data set with a model and store it in a collection")
    b.add_argument("--model", required=True, help="trained run folder (anything polymodal.load accepts)")
    b.add_argument("--data", required=True, help="data set folder / .jsonl / shards")
    b.add_argument("--split", help="one split of a generated data set (default: all)")
    b.add_argument("--modality", choices=PREFERENCE,
                   help="embed this modality (samples without it are skipped); default: per sample the first "
                        "of image, video, audio, text that it has")
    b.add_argument("--collection", required=True, help="output collection folder")
    b.add_argument("--index", default="auto", help=f"auto, {', '.join(NAMED_KINDS)} or a FAISS factory string")
    b.add_argument("--metric", default="cosine", choices=("cosine", "ip", "l2"))
    b.add_argument("--memory-budget", default="4GiB", help="for --index auto (default 4GiB)")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--append", action="store_true", help="add to an existing collection (ids continue)")
    b.add_argument("--tune", type=float, metavar="RECALL", help="tune search parameters to this recall@10")
    b.add_argument("--no-media", dest="media", action="store_false",
                   help="do not store thumbnails/audio for `polymodal serve` (needs the [serve] extra; default: "
                        "store them when it is installed)")
    b.add_argument("--json", action="store_true", help="print a JSON summary")
    i = sub.add_parser("info", help="print a collection's info as JSON")
    i.add_argument("collection")
    t = sub.add_parser("tune", help="tune nprobe/efSearch to a target recall and save them")
    t.add_argument("collection")
    t.add_argument("--target-recall", type=float, default=0.95)
    t.add_argument("-k", type=int, default=10)
    t.add_argument("--sample", type=int, default=1000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _index_parser().parse_args(argv)
    if args.cmd == "build":
        if args.batch_size < 1:
            raise InvalidInput("must be >= 1", field="--batch-size")
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


# ---------------------------------------------------------------------------------------------- search

_FILTER = re.compile(r"^\s*([^=!<>\s]+)\s*(>=|<=|!=|=|>|<)\s*(.*?)\s*$")
_OPS = {"=": "eq", "!=": "ne", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


def _json_or_str(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_filters(exprs: Iterable[str]) -> dict[str, Any] | None:
    """``field=value`` (value read as JSON when it parses, else a string; a JSON list means IN), and
    ``field!=v``, ``>``, ``>=``, ``<``, ``<=``. Conditions on one field combine (AND)."""
    conds: dict[str, dict[str, Any]] = {}
    for expr in exprs:
        m = _FILTER.match(expr)
        if not m:
            raise InvalidInput(f"cannot read {expr!r}; use field=value, field>=value, ...", field="--filter")
        key, op, raw = m.groups()
        value = _json_or_str(raw)
        op_name = "in" if op == "=" and isinstance(value, list) else _OPS[op]
        conds.setdefault(key, {})[op_name] = value
    if not conds:
        return None
    return {k: (c["eq"] if list(c) == ["eq"] else c) for k, c in conds.items()}


def parse_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, w = part.partition("=")
        try:
            out[name.strip()] = float(w)
        except ValueError:
            raise InvalidInput(f"cannot read {part!r}; use e.g. text=0.5,audio=0.5", field="--weights") from None
    return out


def _read_file(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read ({exc.strerror})", field=field, source=path) from None


def load_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Query media from files: image (any PIL format), audio (flac/wav/ogg), video (.npy T x H x W x 3 uint8 or a
    film-strip PNG of --video-frames frames, default square frames), vector (.npy of shape (D,) or (1, D))."""
    from ..data import codec

    out: dict[str, Any] = {}
    if args.text is not None:
        out["text"] = args.text
    if args.image:
        out["image"] = codec.decode_image(_read_file(args.image, "--image"), source=args.image)
    if args.audio:
        out["audio"] = codec.decode_audio(_read_file(args.audio, "--audio"), source=args.audio)
    if args.video:
        out["video"] = _load_video(args.video, args.video_frames)
    if args.vector_file:
        out["vector"] = _load_npy(args.vector_file, "--vector-file").astype(np.float32).reshape(-1)
    return out


def _load_npy(path: str, field: str) -> np.ndarray:
    _read_file(path, field)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"not a .npy array ({exc})", field=field, source=path) from None


def _load_video(path: str, frames: int | None) -> np.ndarray:
    from ..data import codec

    if path.endswith(".npy"):
        video = _load_npy(path, "--video")
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise InvalidInput(f"expected uint8 T x H x W x 3, got {video.dtype} {video.shape}", field="--video",
                               source=path)
        return video
    strip = codec.decode_image(_read_file(path, "--video"), source=path, field="video")
    t = frames or max(1, strip.shape[0] // strip.shape[1])
    if t < 1 or strip.shape[0] % t:
        raise InvalidInput(f"film strip of height {strip.shape[0]} cannot hold {t} frames", field="--video",
                           source=path)
    return strip.reshape(t, strip.shape[0] // t, strip.shape[1], 3)


def _search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal search", description=(
        "Query a collection with text, image, audio, video or a vector; several inputs are fused into one "
        "query (weighted sum of normalized embeddings, renormalized)."))
    p.add_argument("--collection", required=True)
    p.add_argument("--model", help="run to embed text/image/audio/video queries with")
    p.add_argument("--text")
    p.add_argument("--image", help="image file")
    p.add_argument("--audio", help="audio file (flac, wav, ogg)")
    p.add_argument("--video", help="video as .npy (T x H x W x 3 uint8) or a film-strip PNG")
    p.add_argument("--video-frames", type=int, help="frames in a film-strip PNG (default: square frames)")
    p.add_argument("--vector-file", help=".npy query vector (D,) or (1, D)")
    p.add_argument("--weights", help="fusion weights, e.g. text=0.5,audio=0.5 (default 1 each)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="field=value (JSON list = IN), field>=v, field<v, ... ; repeatable, ANDed")
    p.add_argument("--exact", action="store_true", help="exact search (ignore the ANN index)")
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    return p


def search_main(argv: list[str] | None = None) -> int:
    from .query import search_with_model

    args = _search_parser().parse_args(argv)
    inputs = load_inputs(args)
    if not inputs:
        raise InvalidInput("give at least one of --text, --image, --audio, --video, --vector-file", field="query")
    media = [m for m in inputs if m != "vector"]
    if media and not args.model:
        raise InvalidInput(f"--model is needed to embed {', '.join(media)}", field="--model")
    model = _load_model(args.model) if media else None
    coll = Collection.open(args.collection, readonly=True)
    try:
        res = search_with_model(coll, model, **inputs, weights=parse_weights(args.weights), k=args.k,
                                filter=parse_filters(args.filter), params={"exact": True} if args.exact else None)
    finally:
        coll.close()
    hits = res.hits(0)
    if args.json:
        print(json.dumps({"inputs": sorted(inputs), "k": args.k, "filter": parse_filters(args.filter), "hits": hits}))
    else:
        print(f"{'rank':>4}  {'id':>8}  {'score':>8}  item")
        for r, h in enumerate(hits, 1):
            meta = h["metadata"]
            label = meta.get("caption") or meta.get("sample_id") or json.dumps(meta)[:60]
            print(f"{r:>4}  {h['id']:>8}  {h['score']:>8.4f}  {str(label)[:70]}")
    return 0
