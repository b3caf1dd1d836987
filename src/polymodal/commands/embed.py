"""`polymodal embed MODEL --data DATA --out EMB`: embed a data set into sharded arrays, resumably, in this
process or on Ray.

    polymodal embed runs/clip --data data/shapes --out emb/ [--modality image] [--split S] [--batch-size 64]
        [--shard-size 10000] [--format npy|parquet] [--engine local|ray] [--ray-address ADDR] [--workers 2]
        [--device cpu] [--runtime torch|onnx]

Writes ``EMB/shard-NNNNN.npy`` + ``.ids.npy`` + ``.meta.jsonl`` (or one ``.parquet`` per shard) and
``EMB/manifest.json``; run it again with the same arguments after a crash and it continues from the shards
already finished. ``polymodal index build --from-embeddings EMB --collection DIR`` turns the shards into a
collection."""

from __future__ import annotations

import argparse
import json

from ..api import load_embedding as load
from ..errors import InvalidInput
from ..jobs import ENGINES, FORMATS, RUNTIMES, EmbedOptions, embed_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polymodal embed", description=(
        "Embed every sample of a data set with a model into sharded arrays (embeddings + sample ids + metadata, "
        "a manifest with the model fingerprint), with a progress bar. Resumable: a killed job continues from "
        "its last finished shard. --engine ray spreads the shards over Ray actors, here or on a cluster."))
    p.add_argument("model", metavar="MODEL", help="a trained run, pretrained checkpoint or export (what "
                                                  "polymodal.load accepts)")
    p.add_argument("--data", required=True, metavar="DATA", help="data set folder / .jsonl / WebDataset shards")
    p.add_argument("--out", required=True, metavar="EMB", help="output folder (new or empty, or an unfinished "
                                                                 "job's folder to resume it)")
    p.add_argument("--modality", choices=("image", "video", "audio", "text"),
                   help="embed this modality (samples without it are skipped); default: per sample the first of "
                        "image, video, audio, text that it has and the model embeds")
    p.add_argument("--split", help="one split of a generated data set (default: all, one after another)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="inputs per model call (default 64)")
    p.add_argument("--shard-size", type=int, default=10_000, metavar="N",
                   help="input items per output shard, the unit of resuming and of Ray work (default 10000)")
    p.add_argument("--format", default="npy", choices=FORMATS, help="npy (default) or parquet")
    p.add_argument("--engine", default="local", choices=ENGINES, help="local (default, this process) or ray")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="a running Ray cluster (e.g. auto or ray://head:10001); default: start Ray on this machine")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="Ray actors, one model each (default 2)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                   help="CPUs each Ray actor reserves and its torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="run the model's towers with torch (default) or onnxruntime (extra [onnx]; an ONNX export "
                        "needs onnx); the Ray actors load the model with it too")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of one line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.ray_address and args.engine != "ray":
        raise InvalidInput("--ray-address needs --engine ray", field="--ray-address")
    opts = EmbedOptions(modality=args.modality, split=args.split, batch_size=args.batch_size,
                        shard_size=args.shard_size, format=args.format, engine=args.engine,
                        ray_address=args.ray_address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                        device=args.device, runtime=args.runtime, progress=args.progress)
    opts.check()   # before the model is loaded
    model = load(args.model, args.device, runtime=args.runtime)
    summary = embed_dataset(args.model, args.data, args.out, opts, model=model)
    if args.json:
        print(json.dumps(summary))
    else:
        resumed = f" ({summary['resumed_shards']} shards already done)" if summary["resumed_shards"] else ""
        rate = f", {summary['items_per_s']} items/s" if summary["items_per_s"] else ""
        print(f"embedded {summary['count']} items ({summary['skipped']} skipped) into {summary['shards']} shards "
              f"in {args.out}{resumed}{rate}")
    return 0
