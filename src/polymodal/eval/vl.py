"""Evaluation of the vision-language encoders (`vl_encoder` runs): matching, retrieval with ITM re-ranking,
VQA as answer classification, and the pointing game.

- ``itm``: accuracy of the matching head on the test pictures with their own caption (positive) and with the
  caption of another picture (negative; never an identical text), one of each per picture.
- ``retrieval``: text -> image over the test split (each picture's own caption is a query; the gallery is every
  test picture; seen/held-out by whether the query's picture shows a held-out pair). Contrastive R@1 ranks by a
  dual encoder's cosine (the family's own ITC vectors for ``blip``, else a ``candidates`` alignment model such
  as CLIP); ITM R@1 re-ranks that ranking's top ``k`` by P(match) — ALBEF/BLIP's inference recipe.
- ``vqa``: accuracy (`polymodal.eval.vqa_metrics.vqa_accuracy`) overall, seen/held-out, per question type.
- ``pointing``: for two-object scenes, each object whose shape word occurs once in the caption (and differs from
  the other object's shape): the word's text -> visual relevance (mean over its tokens) picks the most relevant
  visual token; a hit when that token's centre lies inside the named object's box (REFERENCES: pointing game,
  tolerance 0). Two relevance maps (`VLEncoder.attention`): the grounding layer's attention (heads averaged) and
  its Grad-CAM (attention x positive gradient of the matching logit, ALBEF's grounding). Region models exclude
  the global region (not a location). ``chance`` is the expected hit rate of a uniformly random candidate token;
  ``accuracy`` is the last method's (Grad-CAM by default, fixed before any result was seen)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..data.collate import collate
from ..data.sample import Batch, Sample
from ..data.synth.shapes import SHAPES
from ..data.transforms.compose import SampleTransform
from ..errors import InvalidInput
from ..models.vl_encoder import VLEncoder
from ..models.vl_inputs import word_spans
from .vqa_metrics import vqa_accuracy

Embedder = Callable[[Sequence[Sample]], np.ndarray]


def _batches(model: VLEncoder, transform: SampleTransform, samples: Sequence[Sample], size: int
             ) -> list[tuple[list[Sample], Batch]]:
    device = model.itm_head.weight.device
    out = []
    for i in range(0, len(samples), size):
        part = list(samples[i:i + size])
        batch = collate(part, lambda s: {k: v for k, v in transform(s).items() if k == "image"})
        out.append((part, batch.to(device)))
    return out


def _caption(model: VLEncoder, s: Sample) -> str | None:
    caps = model.captions_of(s.targets)
    return caps[0] if caps else None


def usable(model: VLEncoder, samples: Sequence[Sample]) -> list[Sample]:
    """Samples with a picture and a caption the model reads."""
    return [s for s in samples if s.image is not None and _caption(model, s)]


def _rows(batch: Batch, rows: Sequence[int]) -> Batch:
    idx = torch.tensor(list(rows), device=batch.data["image"].device)
    return Batch([batch.ids[i] for i in rows], {k: t[idx] for k, t in batch.data.items()},
                 {k: t[idx] for k, t in batch.mask.items()}, {}, [batch.texts[i] for i in rows],
                 [batch.metadata[i] for i in rows], [batch.targets[i] for i in rows] if batch.targets else [])


def itm_accuracy_eval(model: VLEncoder, transform: SampleTransform, samples: Sequence[Sample], *, seed: int = 0,
                      batch_size: int = 64) -> dict[str, Any]:
    items = usable(model, samples)
    if len(items) < 2:
        raise InvalidInput("need at least 2 test pictures with captions", field="--data")
    caps = [str(_caption(model, s)) for s in items]
    rng = random.Random(seed)
    negs = []
    for i, c in enumerate(caps):
        j = rng.randrange(len(caps) - 1)
        j += j >= i
        tries = 0
        while caps[j] == c and tries < 20:
            j, tries = rng.randrange(len(caps)), tries + 1
        negs.append(caps[j])
    right, n = 0, 0
    for start, (_, batch) in zip(range(0, len(items), batch_size), _batches(model, transform, items, batch_size),
                                 strict=True):
        pos = model.itm_scores(batch, caps[start:start + len(batch)])
        neg = model.itm_scores(batch, negs[start:start + len(batch)])
        right += int((pos > 0.5).sum()) + int((neg <= 0.5).sum())
        n += 2 * len(batch)
    return {"accuracy": right / n, "n": n}


def _recall(ranks: Sequence[int], flags: Sequence[bool | None]) -> dict[str, Any]:
    def r1(idx: list[int]) -> float | None:
        return None if not idx else sum(ranks[i] == 0 for i in idx) / len(idx)
    return {"all": r1(list(range(len(ranks)))), "seen": r1([i for i, f in enumerate(flags) if f is False]),
            "heldout": r1([i for i, f in enumerate(flags) if f])}


def retrieval_eval(model: VLEncoder, transform: SampleTransform, samples: Sequence[Sample], *,
                   candidates: tuple[np.ndarray, np.ndarray] | None = None, k: int = 16, batch_size: int = 64
                   ) -> dict[str, Any]:
    """Text -> image R@1, contrastive and ITM re-ranked. ``candidates``: (query vectors (Q, D), image vectors
    (N, D)) of a dual encoder over the same items, in the order of `usable` (required without ITC)."""
    items = usable(model, samples)
    caps = [str(_caption(model, s)) for s in items]
    batches = _batches(model, transform, items, batch_size)
    if candidates is not None:
        q, g = (torch.as_tensor(x, dtype=torch.float32) for x in candidates)
        source = "candidates"
    elif model.has_itc:
        g = torch.cat([model.image_embeddings(b) for _, b in batches]).cpu()
        q = torch.cat([model.text_embeddings(caps[i:i + batch_size]) for i in range(0, len(caps), batch_size)]).cpu()
        source = "itc"
    else:
        raise InvalidInput(f"the {model.family} family has no contrastive vectors: give candidate embeddings",
                           field="candidates")
    if q.shape[0] != len(items) or g.shape[0] != len(items):
        raise InvalidInput(f"expected {len(items)} query and image vectors", field="candidates")
    sim = q @ g.t()
    order = sim.argsort(dim=1, descending=True)
    contrastive = [int((order[i] == i).nonzero()[0, 0]) for i in range(len(items))]
    kk = min(k, len(items))
    top = order[:, :kk]
    image_rows = [b for _, b in batches]
    all_images = torch.cat([b.data["image"] for b in image_rows])
    metadata = [m for b in image_rows for m in b.metadata]
    reranked = []
    for i in range(len(items)):
        cand = top[i].tolist()
        gb = Batch([items[j].id for j in cand], {"image": all_images[cand]},
                   {"image": torch.ones(kk, dtype=torch.bool, device=all_images.device)}, {}, [None] * kk,
                   [metadata[j] for j in cand], [])
        scores = model.itm_scores(gb, [caps[i]] * kk).cpu()
        best = [cand[j] for j in scores.argsort(descending=True).tolist()]
        reranked.append(best.index(i) if i in best else kk)
    flags = [s.metadata.get("heldout") for s in items]
    return {"n_queries": len(items), "gallery": len(items), "k": kk, "source": source,
            "contrastive_r1": _recall(contrastive, flags), "itm_r1": _recall(reranked, flags),
            "recall_at_k": sum(r < kk for r in contrastive) / len(items)}


def vqa_eval(model: VLEncoder, transform: SampleTransform, samples: Sequence[Sample], *, batch_size: int = 64
             ) -> dict[str, Any]:
    qa = [(s, q) for s in samples if s.image is not None for q in s.targets.qa
          if q.media == "image" and q.lang in model.c.langs]
    if not qa:
        raise InvalidInput("the data has no questions about images", field="--data")
    scores: list[float] = []
    for i in range(0, len(qa), batch_size):
        part = qa[i:i + batch_size]
        batch = collate([s for s, _ in part], lambda s: {k: v for k, v in transform(s).items() if k == "image"})
        preds = model.generate(batch.to(model.itm_head.weight.device), [q.question for _, q in part])
        scores += [vqa_accuracy(p, list(q.answers) or [q.answer]) for p, (_, q) in zip(preds, part, strict=True)]
    def mean(idx: list[int]) -> float | None:
        return None if not idx else float(np.mean([scores[i] for i in idx]))
    types = sorted({q.type or "other" for _, q in qa})
    return {"n": len(qa), "overall": mean(list(range(len(qa)))),
            "seen": mean([i for i, (s, _) in enumerate(qa) if s.metadata.get("heldout") is False]),
            "heldout": mean([i for i, (s, _) in enumerate(qa) if s.metadata.get("heldout")]),
            "per_type": {t: mean([i for i, (_, q) in enumerate(qa) if (q.type or "other") == t]) for t in types}}


def _inside(box: Sequence[float], x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def pointing_eval(model: VLEncoder, transform: SampleTransform, samples: Sequence[Sample], *, batch_size: int = 64,
                  methods: Sequence[str] = ("attention", "gradcam")) -> dict[str, Any]:
    """The pointing game with each relevance ``method`` of `VLEncoder.attention` (attention; Grad-CAM)."""
    tok = model._tok()
    items = [s for s in usable(model, samples) if len(s.metadata.get("objects") or []) == 2]
    hits, flat = dict.fromkeys(methods, 0), dict.fromkeys(methods, 0)
    chance, n = 0.0, 0
    for part, batch in _batches(model, transform, items, batch_size):
        caps = [str(_caption(model, s)) for s in part]
        maps = {m: model.attention(batch, caps, method=m) for m in methods}
        v = next(iter(maps.values()))[1]
        centres = ((v.boxes[..., :2] + v.boxes[..., 2:4]) / 2).cpu()
        valid = v.valid.clone().cpu()
        if model.c.visual == "regions":
            valid[:, 0] = False  # the global region is not a location
        for i, s in enumerate(part):
            objects = s.metadata["objects"]
            spans = word_spans(tok, caps[i], [str(o["shape"]) for o in objects])
            for o_idx, obj in enumerate(objects):
                other = objects[1 - o_idx]
                if obj["shape"] == other["shape"] or obj["shape"] not in spans or obj["shape"] not in SHAPES:
                    continue
                inside = [_inside(obj["box"], float(c[0]), float(c[1])) for c in centres[i]]
                for m, (att, _) in maps.items():
                    pos = [p for p in spans[obj["shape"]] if p < att.shape[1]]
                    row = att[i, pos].mean(0).cpu()
                    if float(row[valid[i]].max() - row[valid[i]].min()) < 1e-9:  # no signal (e.g. no positive
                        flat[m] += 1  # gradient anywhere): a miss, not the first token by a tie
                        continue
                    hits[m] += inside[int(row.masked_fill(~valid[i], float("-inf")).argmax())]
                cand = [j for j in range(len(inside)) if valid[i, j]]
                chance += sum(inside[j] for j in cand) / max(len(cand), 1)
                n += 1
    return {"n": n, "chance": chance / n if n else None, "flat": flat,
            **{m: (hits[m] / n if n else None) for m in methods},
            "accuracy": hits[methods[-1]] / n if n else None}


__all__ = ["itm_accuracy_eval", "pointing_eval", "retrieval_eval", "usable", "vqa_eval"]
