"""`polymodal search`: query a collection from any modality; several inputs form one fused query.

    polymodal search --collection DIR [--model RUN] (--text T | --image F | --audio F | --video F | --vector-file F)
                     [--weights text=0.5,audio=0.5] [-k 10] [--filter field=value ...] [--json]

A collection filled by another model (its recorded fingerprint differs) is refused unless
--allow-model-mismatch (then a warning); --vector-file alone needs no model and is never checked."""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..api import load_embedding as load
from ..api import search
from ..data import codec
from ..errors import InvalidInput, NotFound

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
        arr: np.ndarray = np.load(path, allow_pickle=False)
        return arr
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"not a .npy array ({exc})", field=field, source=path) from None


def _load_video(path: str, frames: int | None) -> np.ndarray:
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
    p.add_argument("--collection", required=True, metavar="DIR", help="collection folder to search (read-only)")
    p.add_argument("--model", metavar="MODEL", help="model to embed text/image/audio/video queries with: a run, a "
                   "pretrained checkpoint or an ONNX export (anything polymodal.load accepts)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="run the model's towers with torch or onnxruntime (extra [onnx]; an export dir of "
                        "`polymodal export` needs onnx) (default torch)")
    p.add_argument("--text", help="text query")
    p.add_argument("--image", metavar="FILE", help="image file")
    p.add_argument("--audio", metavar="FILE", help="audio file (flac, wav, ogg)")
    p.add_argument("--video", metavar="FILE", help="video as .npy (T x H x W x 3 uint8) or a film-strip PNG")
    p.add_argument("--video-frames", type=int, metavar="T", help="frames in a film-strip PNG (default: square frames)")
    p.add_argument("--vector-file", metavar="FILE", help=".npy query vector (D,) or (1, D); needs no model")
    p.add_argument("--weights", help="fusion weights, e.g. text=0.5,audio=0.5 (default 1 each)")
    p.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="field=value (JSON list = IN), field>=v, field<v, ... ; repeatable, ANDed")
    p.add_argument("--exact", action="store_true", help="exact search (ignore the ANN index)")
    p.add_argument("--allow-model-mismatch", action="store_true",
                   help="search even if the collection was filled by another model (a warning instead of an error)")
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _search_parser().parse_args(argv)
    inputs = load_inputs(args)
    if not inputs:
        raise InvalidInput("give at least one of --text, --image, --audio, --video, --vector-file", field="query")
    media = [m for m in inputs if m != "vector"]
    if media and not args.model:
        raise InvalidInput(f"--model is needed to embed {', '.join(media)}", field="--model")
    model = load(args.model, runtime=args.runtime) if media else None
    filters = parse_filters(args.filter)
    with warnings.catch_warnings(record=True) as caught:   # shown as one plain line each, not a Python warning
        warnings.simplefilter("always")
        res = search(args.collection, model, **inputs, weights=parse_weights(args.weights), k=args.k,
                     filter=filters, params={"exact": True} if args.exact else None,
                     allow_model_mismatch=args.allow_model_mismatch)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    hits = res.hits(0)
    if args.json:
        print(json.dumps({"inputs": sorted(inputs), "k": args.k, "filter": filters, "hits": hits}))
    else:
        print(f"{'rank':>4}  {'id':>8}  {'score':>8}  item")
        for r, h in enumerate(hits, 1):
            meta = h["metadata"]
            label = meta.get("caption") or meta.get("sample_id") or json.dumps(meta)[:60]
            print(f"{r:>4}  {h['id']:>8}  {h['score']:>8.4f}  {str(label)[:70]}")
    return 0
