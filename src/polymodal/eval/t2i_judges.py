"""The numbers a text->image model is judged by, each as its reference implementation defines it:

- `frechet_distance`: FID's formula (pytorch-fid / torch-fidelity) on any features (here the embedding model's
  image features; not Inception, so not comparable with published FIDs);
- `clip_score`: torchmetrics' CLIPScore, ``mean(100 * max(cos(image, text), 0))`` over matched rows;
- `r_precision`: AttnGAN's R-precision: does a picture's own prompt beat ``candidates - 1`` random other prompts;
- `attribute_scores`: the scene the prompt asked for vs the one the scene parser read from the picture (the
  headline: per object, how often its color, shape, size and position came out right).

Why each: Frechet distance says whether the pictures look like the data set at all, CLIP score and R-precision
whether they match their text as a retrieval model sees it, and the parsed attributes whether every word of a
compositional prompt was drawn (which the embedding scores measure only loosely)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import linalg

from ..errors import InvalidInput

FID_EPS = 1e-6  # pytorch-fid's offset added to the covariances when sqrtm of their product is not finite
PARTS = ("color", "shape", "size", "position")  # what "attribute" averages


def _features(x: np.ndarray, field: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or not np.isfinite(a).all():
        raise InvalidInput(f"expected finite (N, D) features with N >= 2, got shape {a.shape}", field=field)
    return a


def frechet_distance(real: np.ndarray, gen: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets: ``|mu1 - mu2|^2 + Tr(S1 + S2 -
    2 sqrt(S1 S2))`` with ddof=1 covariances, as pytorch-fid computes it (scipy's sqrtm; ``FID_EPS * I`` added to
    both covariances when the product's square root is not finite; a negligible imaginary part dropped)."""
    a, b = _features(real, "real"), _features(gen, "gen")
    if a.shape[1] != b.shape[1]:
        raise InvalidInput(f"feature dims differ: real {a.shape[1]}, gen {b.shape[1]}", field="gen")
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # a singular product is handled below, as pytorch-fid does
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * FID_EPS
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise InvalidInput(f"sqrtm has an imaginary part of {np.max(np.abs(covmean.imag)):.3g} (numerically "
                               "unstable features)", field="gen")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _pairs(image_emb: np.ndarray, text_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img, txt = np.asarray(image_emb, dtype=np.float64), np.asarray(text_emb, dtype=np.float64)
    if img.ndim != 2 or img.shape != txt.shape or img.shape[0] == 0:
        raise InvalidInput(f"expected matched non-empty (N, D) rows, got image {img.shape} and text {txt.shape}",
                           field="text_emb")
    # normalised again (cheap), as torchmetrics does, so a caller's rounding cannot push a cosine past 1
    img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
    return img, txt


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Per row ``100 * max(cos, 0)`` (what `clip_score` averages)."""
    img, txt = _pairs(image_emb, text_emb)
    return np.asarray(100.0 * np.maximum((img * txt).sum(axis=1), 0.0))


def clip_score(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """torchmetrics' CLIPScore of matched (image, text) embedding rows: ``mean(100 * max(cos, 0))``."""
    return float(clip_scores(image_emb, text_emb).mean())


def r_precision_candidates(n: int, candidates: int = 100, seed: int = 0) -> np.ndarray:
    """(n, candidates - 1) indices: for row i, other rows drawn without replacement (never i), from one
    generator seeded ``seed``, row after row."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
        raise InvalidInput(f"must be an integer >= 2, got {candidates!r}", field="candidates")
    if n < candidates:
        raise InvalidInput(f"R-precision with {candidates} candidates needs at least {candidates} rows, got {n}",
                           field="candidates")
    rng = np.random.default_rng(seed)
    out = np.empty((n, candidates - 1), dtype=np.int64)
    for i in range(n):
        draw = rng.choice(n - 1, size=candidates - 1, replace=False)
        out[i] = draw + (draw >= i)  # skip row i itself
    return out


def r_precision_hits(image_emb: np.ndarray, text_emb: np.ndarray, candidates: int = 100,
                     seed: int = 0) -> np.ndarray:
    """Per row: True when its own text has the strictly highest cosine among itself and its candidates."""
    img, txt = _pairs(image_emb, text_emb)
    others = r_precision_candidates(img.shape[0], candidates, seed)
    sims = img @ txt.T
    rows = np.arange(img.shape[0])
    return np.asarray(sims[rows, rows] > np.take_along_axis(sims, others, axis=1).max(axis=1))


def r_precision(image_emb: np.ndarray, text_emb: np.ndarray, candidates: int = 100, seed: int = 0) -> float:
    """R-precision (AttnGAN): the share of pictures whose own text beats ``candidates - 1`` other rows' texts
    (drawn without replacement, deterministic given ``seed``); a tie is a miss."""
    return float(r_precision_hits(image_emb, text_emb, candidates, seed).mean())


# ----------------------------------------------------------------------------------------------- attributes

def _object_marks(obj: dict[str, Any], got: dict[str, dict[str, Any]]) -> dict[str, bool]:
    try:
        at = got.get(obj["position"])
        marks = {a: at is not None and at.get(a) == obj[a] for a in ("color", "shape", "size")}
    except KeyError as exc:
        raise InvalidInput(f"an intended object needs color/shape/size/position, missing {exc}",
                           field="intended") from None
    marks["position"] = at is not None
    marks["object"] = all(marks[a] for a in PARTS)
    return marks


def image_scores(intended: Sequence[dict[str, Any]], parsed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One picture's marks: ``objects`` (per intended object: position, color, shape, size, object) and the
    per-image ``count``, ``relation`` (None unless two objects were asked for) and ``scene``."""
    if not intended:
        raise InvalidInput("an intended scene needs at least one object", field="intended")
    got: dict[str, dict[str, Any]] = {}
    for obj in parsed:
        got.setdefault(str(obj.get("position")), obj)  # one object per cell (the first, for another parser)
    objects = [_object_marks(o, got) for o in intended]
    count = len(parsed) == len(intended)
    relation = all(m["position"] for m in objects) if len(intended) == 2 else None
    return {"objects": objects, "count": count, "relation": relation,
            "scene": count and all(m["object"] for m in objects)}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(marks: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """`attribute_scores` from per-image marks (`image_scores`), so a caller can average any subset."""
    keys = (*PARTS, "object")
    per_image = {k: [float(np.mean([o[k] for o in m["objects"]])) for m in marks] for k in keys}
    objects = [o for m in marks for o in m["objects"]]
    relations = [float(m["relation"]) for m in marks if m["relation"] is not None]
    out: dict[str, float | None] = {
        "attribute": _mean([float(np.mean([o[p] for o in m["objects"] for p in PARTS])) for m in marks]),
        **{k: _mean(v) for k, v in per_image.items()},
        "count": _mean([float(m["count"]) for m in marks]), "relation": _mean(relations),
        "scene": _mean([float(m["scene"]) for m in marks]),
        **{f"object_{k}": _mean([float(o[k]) for o in objects]) for k in keys},
        "n_images": len(marks), "n_objects": len(objects), "n_relation": len(relations),
    }
    return out


def attribute_scores(intended: Sequence[Sequence[dict[str, Any]]],
                     parsed: Sequence[Sequence[dict[str, Any]]]) -> dict[str, float | None]:
    """How well pictures drew their scenes, from the objects asked for (``intended``, each with color, shape,
    size, position) and those the scene parser read (``parsed``), one list per picture.

    Means over pictures: ``attribute`` (the headline: the mean over a picture's objects of its color, shape,
    size and position marks), ``position`` (the object's cell occupied), ``color``/``shape``/``size`` (right at
    its cell), ``object`` (all four right), ``count`` (as many objects read as asked), ``relation`` (two-object
    scenes only: both cells occupied; None when there are none), ``scene`` (every object right and the count
    right). ``object_*``: the same per-object marks averaged over all objects. ``n_images``, ``n_objects``,
    ``n_relation``: the counts behind them."""
    if len(intended) != len(parsed):
        raise InvalidInput(f"{len(intended)} intended scenes but {len(parsed)} parsed ones", field="parsed")
    if not intended:
        raise InvalidInput("no scenes to score", field="intended")
    return summarize([image_scores(i, p) for i, p in zip(intended, parsed, strict=True)])


__all__ = ["attribute_scores", "clip_score", "clip_scores", "frechet_distance", "image_scores", "r_precision",
           "r_precision_candidates", "r_precision_hits", "summarize"]
