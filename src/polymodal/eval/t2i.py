"""Evaluate a text->image generator on `shapes` test samples: each sample's caption (one prompt per language) is
drawn ``n_per_prompt`` times, then judged by models trained on real pictures (`t2i_judges`):

- the scene parser (`scene_parser`) reads each picture back into objects, scored against the scene the caption
  describes (``metadata["objects"]``): the attribute accuracy is the headline;
- an embedding model (optional): CLIP score and R-precision of picture vs prompt (candidates: prompts of the same
  language), and the Frechet distance between its features of the real test pictures and of the generated ones.

``generator=None`` scores the samples' own pictures instead: the ceiling of every judge, and the check that the
judges work (a parser that misreads real pictures cannot judge generated ones).

Every number is broken down by group: ``all``, ``seen``/``heldout`` (a held-out color+shape pair in the scene),
``one_object``/``two_objects`` (two: relation scenes) and ``lang:<lang>``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, json_bytes
from .._version import __version__
from ..data.sample import Sample
from ..data.synth import shapes
from ..errors import InvalidInput, ModelOutputError
from ..models.embedding import EmbeddingModel
from ..models.t2i_front import MAX_IMAGES, ImageGenerator, ImageOptions
from ..rundir import CONFIG
from .scene_parser import FitProgress, SceneParser, fit_parser, load_parser, save_parser
from .t2i_judges import clip_scores, frechet_distance, image_scores, r_precision_hits, summarize

R_CANDIDATES = 100  # R-precision's candidates (fewer when a language has fewer prompts; the report says how many)
Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class T2IImage:
    """One judged picture, for a gallery: its prompt, the picture, what the parser read and its marks."""

    sample_id: str
    prompt: str
    lang: str
    image: np.ndarray
    parsed: list[dict[str, Any]]
    marks: dict[str, Any]


@dataclass(frozen=True)
class _Item:
    sample: int  # index into samples
    lang: str
    prompt: str


def prompt_items(samples: Sequence[Sample], langs: Sequence[str]) -> list[_Item]:
    """One prompt per (sample, lang): the sample's caption in that language, sample-major."""
    if not samples or not langs:
        raise InvalidInput("need at least one sample and one language", field="samples" if not samples else "langs")
    items = []
    for i, s in enumerate(samples):
        caps, objects = s.metadata.get("captions"), s.metadata.get("objects")
        if not isinstance(objects, list) or not objects:
            raise InvalidInput(f"sample {s.id} has no scene objects (a shapes sample?)", field="metadata.objects")
        for lang in langs:
            if not isinstance(caps, dict) or not isinstance(caps.get(lang), str):
                raise InvalidInput(f"sample {s.id} has no {lang} caption", field="metadata.captions")
            items.append(_Item(i, lang, caps[lang]))
    return items


# ----------------------------------------------------------------------------------------------- the parser

# The standard parser's training data and budget (read at call time, so a test can shrink them): test-split
# scenes (every color+shape pair, held-out ones included) of seed 1, so no picture it learns from is one of the
# seed-0 test data it judges; ~2 minutes on one core, and > 0.97 per attribute on real pictures
# (tests/eval/test_scene_parser.py).
STANDARD_SCENES = 2000
STANDARD_SEED = 1
STANDARD_STEPS = 1500
FITTED_ON = "fitted_on.json"  # beside the parser: what it was fitted on


def standard_parser(folder: str | Path, progress: FitProgress | None = None) -> SceneParser:
    """The parser saved in ``folder``, or (none there: no ``config.json``) the standard one fitted now on
    `STANDARD_SCENES` real `shapes` pictures, saved there with a ``fitted_on.json`` saying what it saw."""
    path = Path(folder)
    if (path / CONFIG).is_file():
        return load_parser(path)
    if path.exists() and not path.is_dir():
        raise InvalidInput("not a folder (a scene parser is a folder)", field="parser", source=str(path))
    n, seed, steps = STANDARD_SCENES, STANDARD_SEED, STANDARD_STEPS
    scenes = [shapes.make_sample(i, "test", seed=seed, modalities=("image",)) for i in range(n)]
    images = np.stack([s.image for s in scenes if s.image is not None])
    parser = fit_parser(images, [s.metadata["objects"] for s in scenes], steps=steps, seed=0, progress=progress)
    path.mkdir(parents=True, exist_ok=True)
    # the record first: the parser's config.json, written last by save_parser, is what marks the folder done
    atomic_write_bytes(path / FITTED_ON, json_bytes({
        "data": "shapes", "split": "test", "data_seed": seed, "indices": f"0-{n - 1}", "scenes": n,
        "steps": steps, "fit_seed": 0, "width": parser.width, "polymodal_version": __version__,
        "why": "real pictures of every color+shape pair; seed 1, so the seed-0 test data it judges is unseen"}))
    save_parser(parser, path)
    return parser


# ----------------------------------------------------------------------------------------------- generation

def _check_images(images: Sequence[Any], want: int) -> list[np.ndarray]:
    if len(images) != want:
        raise ModelOutputError(f"the generator returned {len(images)} images for {want}", field="images")
    for im in images:
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ModelOutputError("the generator returned something other than uint8 (H, W, 3) images",
                                   field="images")
    return list(images)


def generate(generator: ImageGenerator, prompts: Sequence[str], n: int, options: ImageOptions | None,
             progress: Progress | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """``n`` pictures per prompt (prompt-major), in calls of at most `MAX_IMAGES` pictures, each timed. Image
    ``k`` gets seed ``seed + k`` (seed 0 when none is given) whatever call it is made in, as in one call."""
    opts = options or ImageOptions()
    base = 0 if opts.seed is None else int(opts.seed)
    per_call = max(1, MAX_IMAGES // n)
    images: list[np.ndarray] = []
    calls: list[tuple[float, int]] = []  # (seconds, pictures) of each call
    for lo in range(0, len(prompts), per_call):
        chunk = list(prompts[lo:lo + per_call])
        t0 = time.perf_counter()
        out = generator.generate_images(chunk, n=n, options=dataclasses.replace(opts, seed=base + lo * n))
        calls.append((time.perf_counter() - t0, len(chunk) * n))
        images.extend(_check_images(out, len(chunk) * n))
        if progress is not None:
            progress(len(images), len(prompts) * n)
    seconds = sum(t for t, _ in calls)
    per_image = [t / k for t, k in calls]
    return images, {"calls": len(calls), "images": len(images), "seconds": seconds,
                    "seconds_per_image": seconds / len(images),
                    "first_call_seconds_per_image": per_image[0],  # includes any warm-up
                    "median_call_seconds_per_image": float(np.median(per_image))}


# ----------------------------------------------------------------------------------------------- groups

def _group_rows(samples: Sequence[Sample], items: Sequence[_Item], n: int) -> dict[str, np.ndarray]:
    """Image rows (item-major, n per item) of each group."""
    def tags(it: _Item) -> list[str]:
        meta = samples[it.sample].metadata
        return ["all", "heldout" if meta.get("heldout") else "seen",
                "two_objects" if len(meta["objects"]) == 2 else "one_object", f"lang:{it.lang}"]
    order = ["all", "seen", "heldout", "one_object", "two_objects", *(f"lang:{it.lang}" for it in items)]
    groups: dict[str, list[int]] = {k: [] for k in order}  # a fixed order; empty groups are left out below
    for r in range(len(items) * n):
        for tag in tags(items[r // n]):
            groups[tag].append(r)
    return {k: np.asarray(v) for k, v in groups.items() if v}


def _r_precision_rows(img: np.ndarray, txt: np.ndarray, items: Sequence[_Item], n: int,
                      seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """Per image row: hit or not (NaN where a language has fewer than 2 prompts). Candidates are the prompts of
    the same language, each prompt scored with its j-th picture for each j (so a prompt's other pictures are
    never its rivals)."""
    hits = np.full(img.shape[0], np.nan)
    used: dict[str, int] = {}
    for lang in dict.fromkeys(it.lang for it in items):
        rows = np.asarray([i for i, it in enumerate(items) if it.lang == lang])
        if rows.size < 2:
            continue
        used[lang] = min(R_CANDIDATES, int(rows.size))
        for j in range(n):
            hits[rows * n + j] = r_precision_hits(img[rows * n + j], txt[rows], used[lang], seed)
    return hits, used


def _embedding_rows(embedder: EmbeddingModel, items: Sequence[_Item], images: Sequence[np.ndarray],
                    n: int) -> dict[str, Any]:
    if not {"text", "image"} <= set(embedder.modalities):
        raise InvalidInput(f"the embedder needs text and image towers, has {embedder.modalities}", field="embedder")
    img = np.asarray(embedder.embed(image=list(images)), dtype=np.float32)
    txt = np.asarray(embedder.embed(text=[it.prompt for it in items]), dtype=np.float32)
    clip = clip_scores(img, np.repeat(txt, n, axis=0))
    hits, used = _r_precision_rows(img, txt, items, n, seed=0)
    return {"features": img, "clip": clip, "hits": hits, "candidates": used}


def _frechet(real: np.ndarray, gen: np.ndarray) -> float | None:
    return frechet_distance(real, gen) if real.shape[0] >= 2 and gen.shape[0] >= 2 else None


def _group_report(rows: np.ndarray, marks: Sequence[dict[str, Any]], emb: dict[str, Any] | None,
                  real: np.ndarray | None, n_samples: int, items: Sequence[_Item], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"images": int(rows.size), "parser": summarize([marks[r] for r in rows])}
    if emb is not None:
        out["clip_score"] = float(emb["clip"][rows].mean())
        hits = emb["hits"][rows]
        out["r_precision"] = float(np.nanmean(hits)) if np.isfinite(hits).any() else None
    if emb is not None and real is not None:
        if real.shape[0] == n_samples:  # aligned with the samples: compare with the same group's real pictures
            real = real[sorted({items[r // n].sample for r in rows})]
        out["frechet"] = _frechet(real, emb["features"][rows])
    return out


# ----------------------------------------------------------------------------------------------- evaluate

def _real_images(samples: Sequence[Sample], indices: Sequence[int]) -> list[np.ndarray]:
    out = []
    for i in indices:
        image = samples[i].image
        if image is None:
            raise InvalidInput(f"sample {samples[i].id} has no picture", field="image")
        out.append(image)
    return out


def evaluate_t2i(generator: ImageGenerator | None, samples: Sequence[Sample], *, parser: SceneParser,
                 embedder: EmbeddingModel | None, real_features: np.ndarray | None = None, n_per_prompt: int = 1,
                 options: ImageOptions | None = None, langs: Sequence[str] = ("en", "zh"),
                 progress: Progress | None = None) -> tuple[dict[str, Any], list[T2IImage]]:
    """Generate (or, with ``generator=None``, take the real pictures), judge, and break down by group (see the
    module doc). ``real_features``: the embedder's features of the real test pictures (rows aligned with
    ``samples`` compare each group with its own real pictures; any other count is the reference for every
    group); None: the embedder embeds the samples' pictures. Returns (report, judged pictures)."""
    if isinstance(n_per_prompt, bool) or not isinstance(n_per_prompt, int) or n_per_prompt < 1:
        raise InvalidInput(f"must be an integer >= 1, got {n_per_prompt!r}", field="n_per_prompt")
    if generator is not None and (bad := [x for x in langs if x not in generator.langs]):
        raise InvalidInput(f"the generator reads {', '.join(generator.langs)}, not {bad[0]}", field="langs")
    items = prompt_items(samples, langs)
    n = n_per_prompt
    speed: dict[str, Any] | None = None
    if generator is None:
        images = _real_images(samples, [it.sample for it in items for _ in range(n)])
    else:
        images, speed = generate(generator, [it.prompt for it in items], n, options, progress)
    parsed = parser.parse(images)
    intended = [samples[items[r // n].sample].metadata["objects"] for r in range(len(images))]
    marks = [image_scores(i, p) for i, p in zip(intended, parsed, strict=True)]
    emb = _embedding_rows(embedder, items, images, n) if embedder is not None else None
    real = None
    if embedder is not None:
        real = (np.asarray(real_features, dtype=np.float64) if real_features is not None
                else embedder.embed(image=_real_images(samples, range(len(samples)))))
    groups = {k: _group_report(rows, marks, emb, real, len(samples), items, n)
              for k, rows in _group_rows(samples, items, n).items()}
    report = {"source": "real" if generator is None else generator.name, "samples": len(samples),
              "prompts": len(items), "images": len(images), "n_per_prompt": n, "langs": list(langs),
              "r_precision_candidates": None if emb is None else emb["candidates"], "speed": speed, "groups": groups}
    gallery = [T2IImage(samples[items[r // n].sample].id, items[r // n].prompt, items[r // n].lang, images[r],
                        parsed[r], marks[r]) for r in range(len(images))]
    return report, gallery


__all__ = ["FITTED_ON", "R_CANDIDATES", "STANDARD_SCENES", "STANDARD_SEED", "STANDARD_STEPS", "T2IImage",
           "evaluate_t2i", "generate", "prompt_items", "standard_parser"]
