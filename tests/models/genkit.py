"""Helpers for the generative-model tests (lm, captioner, vqa): shapes samples with targets, tiny configs, a
split data dir, batches collated with a model's own transform, and a recording streamer.

`scene_targets` derives captions and question/answer pairs from a shapes sample's metadata (what the shapes
generator itself will write into ``Sample.targets``; until then, `attach_targets` adds them where the trainer
reads the data, so the trainer tests run either way)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from polymodal.config import Recipe
from polymodal.data.collate import collate
from polymodal.data.formats.webdataset import ShardWriter
from polymodal.data.sample import Batch, Sample
from polymodal.data.synth import captions as zh_words
from polymodal.data.synth import shapes
from polymodal.data.targets import QA, Caption, Targets
from polymodal.data.transforms.compose import SampleTransform
from polymodal.data.transforms.resolve import transform_config

TOKENIZER = {"vocab_size": 320, "min_frequency": 2}
ENCODER = {"image_size": 64, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}
VIDEO_ENCODER = {"image_size": 32, "patch_size": 16, "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64,
                 "frames": 8, "tubelet": 4}
DECODER = {"hidden": 32, "layers": 1, "heads": 2, "max_len": 48}


def scene_targets(meta: dict[str, Any], langs: Sequence[str]) -> Targets:
    """Captions (image and, when the sample has a clip, video) and QA about the first object, per language."""
    o = meta["objects"][0]
    caps = [Caption(meta["captions"][lang], lang, "image") for lang in langs if lang in meta["captions"]]
    caps += [Caption(t, lang, "video") for lang, t in meta.get("video_captions", {}).items() if lang in langs]
    qa: list[QA] = []
    if "en" in langs:
        qa += [QA(f"What color is the {o['shape']}?", o["color"], "color", "en", "image"),
               QA(f"What shape is the {o['color']} object?", o["shape"], "shape", "en", "image"),
               QA(f"How big is the {o['color']} {o['shape']}?", o["size"], "size", "en", "image")]
        if "motion" in meta:
            qa.append(QA(f"Which way does the {o['color']} {o['shape']} move?", meta["motion"], "motion", "en",
                         "video"))
    if "zh" in langs:
        color, shape = zh_words.COLOR_ZH[o["color"]], zh_words.SHAPE_ZH[o["shape"]]
        qa += [QA(f"{shape}是什么颜色？", color, "color", "zh", "image"),
               QA(f"{color}的物体是什么形状？", shape, "shape", "zh", "image")]
    return Targets(captions=tuple(caps), qa=tuple(qa))


def with_targets(s: Sample, langs: Sequence[str] | None = None) -> Sample:
    if s.targets:
        return s
    return s.replace(targets=scene_targets(s.metadata, langs or list(s.metadata["captions"])))


def shape_samples(n: int, split: str = "train", langs: Sequence[str] = ("en",),
                  modalities: Sequence[str] = ("image",), start: int = 0) -> list[Sample]:
    return [with_targets(shapes.make_sample(start + i, split, langs=langs, modalities=modalities), langs)
            for i in range(n)]


def write_data(root: Path, splits: dict[str, list[Sample]], modalities: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, samples in splits.items():
        with ShardWriter(root / name, shard_size=64) as w:
            for s in samples:
                w.write(s)
    manifest = {"name": "tiny-shapes", "splits": {k: {"path": k, "count": len(v)} for k, v in splits.items()},
                "modalities": modalities}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@contextmanager
def attach_targets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The trainer's loaded samples get `scene_targets` when the data format did not carry any."""
    import polymodal.train.trainer as trainer

    original = trainer.load_samples

    def load(ds: Any, limit: int | None = None) -> list[Sample]:
        return [with_targets(s) for s in original(ds, limit)]

    monkeypatch.setattr(trainer, "load_samples", load)
    yield


def recipe(arch: str, model: dict[str, Any], steps: int = 3, batch_size: int = 8, lr: float = 3e-3) -> Recipe:
    return Recipe.from_dict({
        "arch": arch, "model": {"tokenizer": dict(TOKENIZER), **model},
        "data": {"split": "train", "val_split": "val"},
        "train": {"batch_size": batch_size, "lr": lr, "weight_decay": 0.0, "warmup_steps": 0, "steps": steps,
                  "log_every": 1, "seed": 0}})


def batch_for(model: Any, samples: Sequence[Sample]) -> Batch:
    """``samples`` collated with the model's evaluation transform (what the trainer and load_model use)."""
    tf = SampleTransform.from_dict(transform_config(model.preprocess(), {})).eval()
    mods = set(model.modalities)
    return collate(list(samples), lambda s: {k: v for k, v in tf(s).items() if k in mods})


def fitted(model: Any, samples: Sequence[Sample]) -> Any:
    model.fit_data(samples)
    return model


def train_steps(model: Any, batch: Batch, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


class Recorder:
    """A streamer that keeps every put() (as lists) and counts end()."""

    def __init__(self) -> None:
        self.puts: list[list[Any]] = []
        self.ended = 0

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.tolist())

    def end(self) -> None:
        self.ended += 1

    def new_tokens(self) -> list[list[int]]:
        """Per row, the tokens put after the prompt."""
        steps = self.puts[1:]
        return [[int(s[i]) for s in steps] for i in range(len(steps[0]))] if steps else []
