"""Evaluate a VideoBERT model (`polymodal.models.videobert`) on `shapes` clips.

- Zero-shot motion: ``predict_motion`` ("The <object> moves [MASK].", the direction read from the [MASK]
  logits restricted to the direction words). Two prompts: the object left as three [MASK]s (the model reads
  nothing but the clip: the headline number) and the object named from ``metadata["objects"][0]`` (its size,
  color and shape, never the motion). Accuracy overall and over seen / held-out color+shape pairs
  (``metadata["heldout"]``).
- Majority-class baseline: always answering the most frequent direction *of these samples* (the best any
  constant answer can do here, so an upper bound on the usual train-set majority).
- Video -> text: ``describe`` fills "the <size> <color> <shape> moves <direction>" (template filling); the
  accuracy of its direction, color and shape words against the clip's first object, beside the majority
  answer of each.

Only samples with a clip and ``metadata["motion"]`` are scored. The labels are read here, after the model has
answered; the model's methods never see them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from ..data.collate import collate
from ..data.sample import Sample
from ..data.transforms.compose import SampleTransform
from ..data.transforms.resolve import transform_config
from ..errors import InvalidInput
from ..models.videobert import VideoBert

ATTRIBUTES = ("direction", "color", "shape")


def _accuracy(pred: Sequence[str], gold: Sequence[str], heldout: Sequence[bool]) -> dict[str, Any]:
    def acc(keep: list[int]) -> float | None:
        return sum(pred[i] == gold[i] for i in keep) / len(keep) if keep else None

    seen = [i for i, h in enumerate(heldout) if not h]
    held = [i for i, h in enumerate(heldout) if h]
    return {"accuracy": acc(list(range(len(gold)))), "seen": acc(seen), "heldout": acc(held),
            "n": len(gold), "n_seen": len(seen), "n_heldout": len(held)}


def _majority(gold: Sequence[str], heldout: Sequence[bool]) -> dict[str, Any]:
    answer = Counter(gold).most_common(1)[0][0]
    return {"answer": answer, **_accuracy([answer] * len(gold), gold, heldout)}


def object_phrase(meta: dict[str, Any]) -> str:
    """The first object as the captions name it: "large red star"."""
    o = meta["objects"][0]
    return f"{o['size']} {o['color']} {o['shape']}"


def _parse(description: str) -> dict[str, str]:
    words = description.split()  # "the <size> <color> <shape> moves <direction>"
    return {"color": words[2], "shape": words[3], "direction": words[-1]}


def evaluate_videobert(model: VideoBert, samples: Sequence[Sample], batch_size: int = 64) -> dict[str, Any]:
    """Zero-shot motion accuracy (object masked and named), the majority baseline and video -> text word
    accuracy of ``model`` on ``samples`` (see the module docstring); ``predictions`` has one dict per item."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"must be an integer >= 1, got {batch_size!r}", field="batch_size")
    items = [s for s in samples if s.video is not None and "motion" in s.metadata]
    if not items:
        raise InvalidInput("no sample has a clip and metadata['motion'] (polymodal data make shapes with video)",
                           field="samples")
    transform = SampleTransform.from_dict(transform_config(model.preprocess(), {})).eval()
    device = next(model.parameters()).device
    masked: list[str] = []
    named: list[str] = []
    described: list[str] = []
    for start in range(0, len(items), batch_size):
        part = items[start:start + batch_size]
        batch = collate(part, transform).to(device)
        with torch.no_grad():
            masked += model.predict_motion(batch)
            named += model.predict_motion(batch, [object_phrase(s.metadata) for s in part])
            described += model.describe(batch)
    heldout = [bool(s.metadata.get("heldout", False)) for s in items]
    gold = {"direction": [str(s.metadata["motion"]) for s in items],
            "color": [str(s.metadata["objects"][0]["color"]) for s in items],
            "shape": [str(s.metadata["objects"][0]["shape"]) for s in items]}
    parsed = [_parse(d) for d in described]
    video_text = {a: {**_accuracy([p[a] for p in parsed], gold[a], heldout),
                      "majority": _majority(gold[a], heldout)} for a in ATTRIBUTES}
    predictions = [{"id": s.id, "motion": gold["direction"][i], "zero_shot": masked[i],
                    "zero_shot_named": named[i], "description": described[i], "heldout": heldout[i]}
                   for i, s in enumerate(items)]
    return {"n": len(items),
            "motion_zero_shot": _accuracy(masked, gold["direction"], heldout),
            "motion_zero_shot_named": _accuracy(named, gold["direction"], heldout),
            "majority_baseline": _majority(gold["direction"], heldout),
            "video_to_text": {"method": "template filling", **video_text},
            "predictions": predictions}


__all__ = ["evaluate_videobert", "object_phrase"]
