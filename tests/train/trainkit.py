"""Helpers for the trainer tests: tiny text+image samples written with ShardWriter, a tiny recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.config import Recipe
from polymodal.data.formats.webdataset import ShardWriter
from polymodal.data.sample import Sample

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def make_samples(n: int, seed: int, modalities: tuple[str, ...] = ("image", "text")) -> list[Sample]:
    """16x16 images with a colored square at a random place; the caption names color and corner."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        name = list(COLORS)[i % len(COLORS)]
        img = rng.integers(0, 40, (16, 16, 3), dtype=np.uint8)
        y, x = (int(v) for v in rng.integers(0, 9, 2))
        img[y:y + 7, x:x + 7] = COLORS[name]
        kw: dict[str, Any] = {"id": f"s{seed}_{i:04d}", "metadata": {"label": name}}
        if "image" in modalities:
            kw["image"] = img
        if "text" in modalities:
            kw["text"] = f"a {name} square at {y},{x}"
        out.append(Sample(**kw))
    return out


def write_split_dir(root: Path, splits: dict[str, list[Sample]], modalities: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, samples in splits.items():
        with ShardWriter(root / name, shard_size=32) as w:
            for s in samples:
                w.write(s)
    manifest = {"name": "tiny", "splits": {k: {"path": k, "count": len(v)} for k, v in splits.items()},
                "modalities": modalities}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def tiny_recipe(model: dict[str, Any] | None = None, **train: Any) -> Recipe:
    text = {"name": "text_transformer", "width": 32, "layers": 1, "heads": 2, "max_len": 40, "dropout": 0.0}
    image = {"name": "image_vit", "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2}
    m: dict[str, Any] = {"dim": 16, "loss": "clip", "encoders": {"text": text, "image": image}}
    m.update(model or {})
    t = {"batch_size": 8, "lr": 0.002, "weight_decay": 0.1, "warmup_steps": 2, "steps": 4, "log_every": 1,
         "seed": 0}
    t.update(train)
    return Recipe.from_dict({"arch": "alignment", "model": m, "data": {"modalities": ["image", "text"]},
                             "train": t})
