"""Helpers for the batch-job tests: a tiny text+image data set (WebDataset shards with sizes.json) and a tiny
trained alignment run (one training step: real weights, a real fingerprint, loadable by a Ray worker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.config import Recipe
from polymodal.data.formats import ShardWriter, write_folder, write_jsonl
from polymodal.data.sample import Sample


def make_samples(n: int, seed: int = 0, prefix: str = "s", text_every: int = 1) -> list[Sample]:
    """16x16 images with a bright square; every ``text_every``-th sample has no image (text only)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
        y, x = (int(v) for v in rng.integers(0, 9, 2))
        img[y:y + 7, x:x + 7] = (200, 40 + 10 * (i % 10), 30)
        kw: dict[str, Any] = {"id": f"{prefix}{i:04d}", "text": f"a square at {y},{x} number {i}",
                              "metadata": {"label": i % 3, "nested": {"k": i}}}
        if text_every <= 1 or i % text_every:
            kw["image"] = img
        out.append(Sample(**kw))
    return out


def write_split_dir(root: Path, splits: dict[str, list[Sample]], shard_size: int = 16) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, samples in splits.items():
        with ShardWriter(root / name, shard_size=shard_size) as w:
            for s in samples:
                w.write(s)
    manifest = {"name": "tiny", "splits": {k: {"path": k, "count": len(v)} for k, v in splits.items()},
                "modalities": ["image", "text"]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def tiny_recipe(seed: int = 0) -> Recipe:
    text = {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 40, "dropout": 0.0}
    image = {"name": "image_vit", "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2}
    m: dict[str, Any] = {"dim": 16, "loss": "clip", "encoders": {"text": text, "image": image}}
    t = {"batch_size": 8, "lr": 0.002, "warmup_steps": 1, "steps": 1, "log_every": 1, "seed": seed}
    return Recipe.from_dict({"arch": "alignment", "model": m, "data": {"modalities": ["image", "text"]},
                             "train": t})


def tiny_run(data: Path, run: Path, seed: int = 0) -> Path:
    from polymodal.train.trainer import train

    train(tiny_recipe(seed), data, run, progress=False)
    return run


class Crashing:
    """The real model, but its embed raises KeyboardInterrupt after ``calls`` calls (a job killed mid-way)."""

    def __init__(self, model: Any, calls: int):
        self.model, self.calls, self.seen = model, calls, 0
        self.fingerprint, self.name, self.dim, self.modalities = model.fingerprint, model.name, model.dim, model.modalities

    def embed(self, **kw: Any) -> np.ndarray:
        if self.seen >= self.calls:
            raise KeyboardInterrupt
        self.seen += 1
        out: np.ndarray = self.model.embed(**kw)
        return out


def write_every_format(samples: list[Sample], root: Path, shard_size: int = 4) -> None:
    """The same samples as root/j/data.jsonl, a folder root/f and WebDataset shards root/w."""
    write_jsonl(samples, root / "j" / "data.jsonl")
    write_folder(samples, root / "f")
    with ShardWriter(root / "w", shard_size=shard_size) as w:
        for s in samples:
            w.write(s)
