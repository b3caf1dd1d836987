"""Benchmark: batch embedding of `shapes` images with `polymodal embed`'s engines, in one run.

    local-1t     the local engine, this process, 1 torch thread (the reference: 1.0x)
    local-2t     the local engine, 2 torch threads
    ray-1        the Ray engine, 1 actor x 1 CPU
    ray-2        the Ray engine, 2 actors x 1 CPU
Each run embeds the same data set into a fresh folder (same shard size and batch size); the Ray runs share
one local Ray instance (its start-up is reported apart, not in their times; actor start-up, i.e. importing
torch and loading the model in each actor, is in them). Every engine's shards are checked against the
reference: same ids in the same order, largest absolute difference of the vectors. Reported: items/s and the
ratio to local-1t. The model is a `clip_tiny` run trained for one step (embedding cost does not depend on the
weights), or ``--model RUN``. Data: ``polymodal data make shapes --n N --modalities image,text`` (reused).

    python bench/ray_embed.py [--n 20000] [--shard-size 2000] [--batch-size 128] [--model RUN] [--no-docs]

Prints one JSON line; writes docs/results/embed.md (not with --no-docs)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from polymodal import load  # noqa: E402
from polymodal.jobs import EmbeddingShards, EmbedOptions, embed_dataset  # noqa: E402

ENGINES = {  # name -> (EmbedOptions changes, torch threads in this process)
    "local-1t": ({"engine": "local"}, 1),
    "local-2t": ({"engine": "local"}, 2),
    "ray-1": ({"engine": "ray", "workers": 1}, 1),
    "ray-2": ({"engine": "ray", "workers": 2}, 1),
}


def make_data(root: Path, n: int) -> Path:
    from polymodal.data.synth import make_dataset

    if (root / "manifest.json").is_file() and json.loads((root / "manifest.json").read_text()).get("n") == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    make_dataset("shapes", root, n=n, modalities=("image", "text"), shard_size=1000, progress=False)
    return root


def make_model(data: Path, out: Path) -> Path:
    from polymodal.config import Recipe
    from polymodal.recipes import recipe_json
    from polymodal.train.trainer import train

    if (out / "config.json").is_file():
        return out
    obj = recipe_json("clip_tiny")
    obj["train"].update(steps=1, batch_size=16, warmup_steps=0, log_every=1, ckpt_every=1)
    train(Recipe.from_dict(obj), data, out, progress=False)
    return out


def _rows(out: Path) -> tuple[list[str], np.ndarray]:
    shards = EmbeddingShards(out)
    ids, vecs = [], []
    for v, m in shards.chunks():
        vecs.append(v)
        ids += [x["sample_id"] for x in m]
    return ids, np.concatenate(vecs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = make_data(Path(args.data_root) / f"shapes_{args.n}", args.n)
    model_dir = Path(args.model) if args.model else make_model(data, Path(args.data_root) / "clip_tiny_1step")
    work = Path(tempfile.mkdtemp(prefix="ray_embed_"))
    base = {"shard_size": args.shard_size, "batch_size": args.batch_size, "modality": "image", "progress": False}
    results: dict[str, dict[str, Any]] = {}
    ray_init_s = None
    try:
        ref: tuple[list[str], np.ndarray] | None = None
        for name in args.engines.split(","):
            change, threads = ENGINES[name]
            if change["engine"] == "ray" and ray_init_s is None:
                import ray

                t = time.perf_counter()
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
                ray_init_s = round(time.perf_counter() - t, 2)
            torch.set_num_threads(threads)
            model = load(model_dir)
            t = time.perf_counter()
            summary = embed_dataset(str(model_dir), data, work / name, EmbedOptions(**base, **change), model=model)
            seconds = time.perf_counter() - t
            ids, vecs = _rows(work / name)
            if ref is None:
                ref = (ids, vecs)
            results[name] = {"seconds": round(seconds, 2), "items": summary["count"],
                             "items_per_s": round(summary["count"] / seconds, 1),
                             "same_ids": ids == ref[0],
                             "max_abs_diff": float(np.abs(vecs - ref[1]).max()) if ids == ref[0] else None}
            print(f"{name}: {results[name]}", file=sys.stderr)
    finally:
        if ray_init_s is not None:
            import ray

            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    first = next(iter(results.values()))["items_per_s"]
    for r in results.values():
        r["x_ref"] = round(r["items_per_s"] / first, 2)
    return {"bench": "ray_embed", "n": args.n, "shard_size": args.shard_size, "batch_size": args.batch_size,
            "model": "clip_tiny (1 step)" if not args.model else args.model, "ray_init_s": ray_init_s,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_at_start": round(os.getloadavg()[0], 2), "torch": torch.__version__},
            "results": results}


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Batch embedding: local vs Ray", "",
             "Generated by `bench/ray_embed.py` — do not edit by hand.", "",
             f"Data: `shapes` images, {res['n']:,} items, shards of {res['shard_size']} items, batches of "
             f"{res['batch_size']}; model {res['model']}. Machine: {m['cpus']} CPUs ({m['platform']}), load "
             f"average at start {m['load_at_start']}, torch {m['torch']}. Ray start-up ({res['ray_init_s']} s) "
             "is not in the Ray rows; each actor's start-up (importing torch, loading the model) is.", "",
             "| engine | items | seconds | items/s | x local-1t | same ids | max abs diff vs local-1t |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["results"].items():
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        lines.append(f"| {name} | {r['items']} | {r['seconds']} | {r['items_per_s']} | {r['x_ref']} | "
                     f"{r['same_ids']} | {diff} |")
    lines += ["", "```json", json.dumps(res), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="items to embed (default 20000)")
    p.add_argument("--shard-size", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {', '.join(ENGINES)}")
    p.add_argument("--model", help="a run to embed with (default: clip_tiny trained for one step)")
    p.add_argument("--data-root", default=str(ROOT / "data_cache" / "ray_embed"))
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    res = run(args)
    print(json.dumps(res))
    if not args.no_docs:
        (ROOT / "docs" / "results" / "embed.md").write_text(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
