"""`shapes`: compositional scenes of one or two colored shapes, with captions (English/Chinese), the
caption spoken by eSpeak NG, and a short video of the first object moving.

Every sample is a pure function of ``(seed, index, split, langs, modalities)``: its RNG is seeded from
``(seed, index)`` and every random draw happens whether or not a modality is produced, so the captions
and pictures do not change when audio or video is switched off.

Targets (``sample.targets``): 5 reference captions per language of the picture (the sample's own caption
first) and, with video, of the clip; questions with answers from the scene graph (`questions`); with audio,
the spoken caption as transcript. They draw from a second RNG, so adding them changed no other field.

Held-out pairs: the color+shape pairs in `HELDOUT_PAIRS` never appear in train or val. In test, the
first object is one of them half of the time, so compositional generalization can be measured on the
samples with ``metadata["heldout"] == True``.

Caption noise (``caption_noise``, web alt-text; train only, chosen by `make_dataset`): a noisy sample's text and
image captions are replaced by a "wrong" caption (of another random scene: plausible, mismatched) or an
"unrelated" one (alt-text junk: file names, "click here", random words), drawn from a third RNG stream, so the
picture, audio, video, QA and every other sample stay as they were; ``metadata["caption_noise"]`` names the kind.

Conversations (instruction tuning, POPE probes, spoken questions) are added on top of a sample by
`instruct.add_conversations` (which `make_dataset` calls with ``conversations=True``), from their own RNG streams
(`stream_rng`), so every other field of the sample stays as it was."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ...errors import InvalidInput
from ..sample import Sample
from ..targets import Caption, Targets, Transcript
from . import captions, questions, speech

NAME = "shapes"
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45), "green": (50, 180, 70), "blue": (50, 100, 235), "yellow": (240, 215, 40),
    "purple": (150, 70, 205), "orange": (245, 135, 30), "cyan": (45, 205, 215), "pink": (245, 125, 185),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES: dict[str, float] = {"small": 0.11, "large": 0.2}  # radius as a fraction of the image side
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5), "left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
    "top left": (0.25, 0.25), "top right": (0.75, 0.25), "bottom left": (0.25, 0.75), "bottom right": (0.75, 0.75),
}
# relation of object 1 to object 2 -> (position of object 1, position of object 2)
RELATIONS: dict[str, tuple[str, str]] = {
    "left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom"), "below": ("bottom", "top"),
}
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (("red", "star"), ("blue", "triangle"), ("green", "circle"),
                                              ("yellow", "square"))
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
IMAGE_SIZE = 64
VIDEO_SIZE, VIDEO_FRAMES = 32, 8
MOTION = 0.3  # total displacement over the video, as a fraction of the side
P_SINGLE = 0.25  # share of one-object scenes (two-object captions are far more specific)
P_HELDOUT_TEST = 0.5  # share of test scenes whose first object is a held-out pair
SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges
_RNG_TAG = 1  # mixed into the seed so shapes and digits with the same seed differ
_TARGETS_TAG = 0xCA  # the targets' own RNG stream, apart from the sample's
N_REFERENCES = 5  # reference captions per language and medium
_NOISE_TAG = 0xA17  # the caption noise's own RNG stream, apart from the sample's and the targets'
NOISE_KINDS: tuple[str, ...] = ("wrong", "unrelated")


def all_pairs(heldout: bool | None = None) -> list[tuple[str, str]]:
    """Color+shape pairs; ``heldout=False`` -> only those allowed in train/val, True -> only held-out."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    if heldout is None:
        return pairs
    return [p for p in pairs if (p in HELDOUT_PAIRS) == heldout]


def split_pairs(split: str) -> list[tuple[str, str]]:
    """The color+shape pairs a split may show (and a question may name): held-out ones only in test."""
    return all_pairs() if split == "test" else all_pairs(heldout=False)


def labels() -> dict[str, Any]:
    """Label vocabularies for the manifest (evaluation reads class names from here)."""
    return {"colors": list(COLORS), "shapes": list(SHAPES), "sizes": list(SIZES), "positions": list(POSITIONS),
            "relations": list(RELATIONS), "directions": list(DIRECTIONS),
            "heldout_pairs": [list(p) for p in HELDOUT_PAIRS],
            "zh": {"colors": captions.COLOR_ZH, "shapes": captions.SHAPE_ZH}}


def target_kinds(modalities: Sequence[str]) -> dict[str, Any]:
    """What targets samples carry with these modalities (for the manifest)."""
    media = [m for m in ("image", "video") if m in modalities]
    out: dict[str, Any] = {}
    if media:
        types = [t for t in questions.TYPES if ("video" if t == "motion" else "image") in media]
        out["captions"] = {"media": media, "per_lang": N_REFERENCES}
        out["qa"] = {"media": media, "types": types,
                     "max_per_lang": questions.MAX_IMAGE_QUESTIONS * ("image" in media) + ("video" in media)}
    if "audio" in modalities:
        out["transcript"] = {"media": "audio", "text": "the spoken caption"}
    return out


# ----------------------------------------------------------------------------------------------- scene

def _draw_object(rng: np.random.Generator, pairs: list[tuple[str, str]], position: str) -> dict[str, Any]:
    color, shape = pairs[int(rng.integers(len(pairs)))]
    size = ("small", "large")[int(rng.integers(2))]
    cx, cy = POSITIONS[position]
    jitter = rng.uniform(-0.035, 0.035, size=2)
    rgb = np.clip(np.array(COLORS[color]) + rng.integers(-12, 13, size=3), 0, 255)
    return {"shape": shape, "color": color, "size": size, "position": position,
            "_xy": (cx + float(jitter[0]), cy + float(jitter[1])),
            "_r": SIZES[size] * float(rng.uniform(0.92, 1.08)),
            "_angle": float(rng.uniform(-12.0, 12.0)), "_rgb": tuple(int(v) for v in rgb)}


def sample_scene(rng: np.random.Generator, split: str) -> tuple[list[dict[str, Any]], str | None]:
    """Objects (with private ``_`` render fields) and the relation (None for one object)."""
    allowed = split_pairs(split)
    first = all_pairs(heldout=True) if split == "test" and rng.random() < P_HELDOUT_TEST else allowed
    if rng.random() < P_SINGLE:
        position = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
        return [_draw_object(rng, first, position)], None
    relation = list(RELATIONS)[int(rng.integers(len(RELATIONS)))]
    p1, p2 = RELATIONS[relation]
    return [_draw_object(rng, first, p1), _draw_object(rng, allowed, p2)], relation


def _background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """A dark, slightly colored gradient: start color, end color, axis (0 = vertical)."""
    c0 = rng.integers(20, 60) + rng.integers(-6, 7, size=3)
    c1 = np.clip(c0 + rng.integers(-15, 16, size=3), 0, 255)
    return c0.astype(np.float32), c1.astype(np.float32), int(rng.integers(2))


# ----------------------------------------------------------------------------------------------- render

def _polygon(shape: str, cx: float, cy: float, r: float, angle_deg: float) -> list[tuple[float, float]]:
    """Outline of a shape of "radius" r (roughly equal visual weight across shapes)."""
    pts: list[tuple[float, float]]  # (distance from the center, angle in degrees)
    if shape == "square":
        pts = [(1.15 * r, float(a)) for a in (45, 135, 225, 315)]
    elif shape == "diamond":  # taller than wide, so it never looks like a rotated square
        return [(cx + dx, cy + dy) for dx, dy in ((0, -1.25 * r), (0.8 * r, 0), (0, 1.25 * r), (-0.8 * r, 0))]
    elif shape == "triangle":
        pts = [(1.25 * r, float(a)) for a in (-90, 30, 150)]
    elif shape == "star":
        pts = [((1.3 if k % 2 == 0 else 0.55) * r, -90.0 + 36 * k) for k in range(10)]
    elif shape == "cross":
        w = 0.38
        xy = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
        pts = [(1.05 * r * math.hypot(x, y), math.degrees(math.atan2(y, x))) for x, y in xy]
    else:
        raise InvalidInput(f"unknown shape {shape!r} (known: {list(SHAPES)})", field="shape")
    return [(cx + d * math.cos(math.radians(a + angle_deg)), cy + d * math.sin(math.radians(a + angle_deg)))
            for d, a in pts]


def object_box(obj: dict[str, Any]) -> list[float]:
    """The object's bounding box in the picture (first video frame), ``[x0, y0, x1, y1]`` as fractions of the
    side: the region a detector would propose (region-based models crop it; the pointing game scores it)."""
    cx, cy = obj["_xy"]
    r = obj["_r"]
    if obj["shape"] == "circle":
        pts = [(cx - r, cy - r), (cx + r, cy + r)]
    else:
        pts = _polygon(obj["shape"], cx, cy, r, obj["_angle"])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [round(max(0.0, min(xs)), 4), round(max(0.0, min(ys)), 4), round(min(1.0, max(xs)), 4),
            round(min(1.0, max(ys)), 4)]


def render(objects: Sequence[dict[str, Any]], background: tuple[np.ndarray, np.ndarray, int], size: int,
           offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Draw the scene at ``size`` x ``size``; ``offset`` (fraction of the side) moves the first object."""
    c0, c1, axis = background
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
    line = c0[None, :] * (1 - t) + c1[None, :] * t  # (size, 3)
    bg = np.broadcast_to(line[:, None, :] if axis == 0 else line[None, :, :], (size, size, 3))
    big = size * SUPERSAMPLE
    canvas = Image.fromarray(np.round(bg).astype(np.uint8), "RGB").resize((big, big), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    # the moving object is drawn last, so it passes in front of the other one
    order = list(range(1, len(objects))) + [0]
    for i in order:
        o = objects[i]
        dx, dy = offset if i == 0 else (0.0, 0.0)
        cx, cy, r = (o["_xy"][0] + dx) * big, (o["_xy"][1] + dy) * big, o["_r"] * big
        if o["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=o["_rgb"])
        else:
            draw.polygon(_polygon(o["shape"], cx, cy, r, o["_angle"]), fill=o["_rgb"])
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.uint8).copy()


def feasible_directions(obj: dict[str, Any]) -> list[str]:
    """Directions in which the object's center stays inside [0.12, 0.88] for the whole video."""
    x, y = obj["_xy"]
    return [d for d, (dx, dy) in DIRECTIONS.items()
            if 0.12 <= x + dx * MOTION <= 0.88 and 0.12 <= y + dy * MOTION <= 0.88]


def render_video(objects: Sequence[dict[str, Any]], background: tuple[np.ndarray, np.ndarray, int],
                 direction: str) -> np.ndarray:
    dx, dy = DIRECTIONS[direction]
    frames = [render(objects, background, VIDEO_SIZE, (dx * MOTION * k / (VIDEO_FRAMES - 1),
                                                       dy * MOTION * k / (VIDEO_FRAMES - 1)))
              for k in range(VIDEO_FRAMES)]
    return np.stack(frames)


# ----------------------------------------------------------------------------------------------- sample

def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_RNG_TAG, seed, index]))


def stream_rng(seed: int, index: int, tag: int) -> np.random.Generator:
    """Sample ``index``'s RNG stream number ``tag``, independent of the sample's own and of the other streams
    (the targets use tag ``0xCA``, the caption noise ``0xA17``)."""
    return np.random.default_rng(np.random.SeedSequence([_RNG_TAG, seed, index, tag]))


def make_sample(index: int, split: str, *, seed: int = 0, langs: Sequence[str] = ("en",),
                modalities: Sequence[str] = ("text", "image", "audio", "video"),
                caption_noise: str | None = None) -> Sample:
    """Sample ``index`` of the data set with this ``seed`` (``split`` decides which pairs are allowed).
    ``caption_noise`` ("wrong" | "unrelated", train only) makes its text and image captions noisy alt-text."""
    if caption_noise is not None and (caption_noise not in NOISE_KINDS or split != "train"):
        raise InvalidInput(f"must be None or one of {list(NOISE_KINDS)} on a train sample, got {caption_noise!r} "
                           f"on {split}", field="caption_noise")
    rng = sample_rng(seed, index)
    objects, relation = sample_scene(rng, split)
    background = _background(rng)
    caps = captions.scene_captions(rng, objects, relation)
    lang = langs[int(rng.integers(len(langs)))]
    directions = feasible_directions(objects[0])
    direction = directions[int(rng.integers(len(directions)))]
    motion = captions.motion_captions(rng, objects[0], direction)
    voice = speech.random_voice(rng, lang)

    public = [{**{k: v for k, v in o.items() if not k.startswith("_")}, "box": object_box(o)} for o in objects]
    meta: dict[str, Any] = {
        "split": split, "index": index, "objects": public, "relation": relation,
        "labels": {"color": public[0]["color"], "shape": public[0]["shape"]},
        "captions": {k: caps[k] for k in langs}, "lang": lang,
        "heldout": any((o["color"], o["shape"]) in HELDOUT_PAIRS for o in public),
    }
    kw: dict[str, Any] = {}
    if "text" in modalities:
        kw["text"] = caps[lang]
    if "image" in modalities:
        kw["image"] = render(objects, background, IMAGE_SIZE)
    if "audio" in modalities:
        kw["audio"], kw["sample_rate"] = speech.synthesize(caps[lang], voice)
        meta["voice"] = voice.as_dict()
    if "video" in modalities:
        kw["video"] = render_video(objects, background, direction)
        meta.update(motion=direction, video_caption=motion[lang], video_captions={k: motion[k] for k in langs})
    targets = scene_targets(np.random.default_rng(np.random.SeedSequence([_RNG_TAG, seed, index, _TARGETS_TAG])),
                            public, relation, direction, caps, motion, split, langs, lang, modalities)
    if caption_noise is not None:
        noisy = noisy_captions(np.random.default_rng(np.random.SeedSequence([_RNG_TAG, seed, index, _NOISE_TAG])),
                               caption_noise, public, relation, split)
        meta["caption_noise"] = caption_noise
        if "text" in modalities:
            kw["text"] = noisy[lang]
        targets = replace_image_captions(targets, noisy, langs)
    return Sample(id=f"{NAME}-{index:06d}", metadata=meta, targets=targets, **kw)


def scene_targets(rng: np.random.Generator, objects: list[dict[str, Any]], relation: str | None, direction: str,
                  caps: dict[str, str], motion: dict[str, str], split: str, langs: Sequence[str], lang: str,
                  modalities: Sequence[str]) -> Targets:
    """Captions and questions about each generated medium, and the transcript of the spoken caption.
    Everything is drawn whatever the modalities (then filtered), so one medium's targets do not depend on
    whether another is generated."""
    image_caps = captions.references(rng, lambda r: captions.scene_captions(r, objects, relation), caps, langs,
                                     "image", N_REFERENCES)
    video_caps = captions.references(rng, lambda r: captions.motion_captions(r, objects[0], direction), motion,
                                     langs, "video", N_REFERENCES)
    qa = questions.scene_questions(objects, relation, direction, rng, langs, split_pairs(split))
    media = {m for m in ("image", "video") if m in modalities}
    return Targets(captions=tuple(c for c in (*image_caps, *video_caps) if c.media in media),
                   qa=tuple(q for q in qa if q.media in media),
                   transcript=Transcript(caps[lang], lang) if "audio" in modalities else None)


# ----------------------------------------------------------------------------------------------- caption noise

# Alt-text junk: what web images carry when the text says nothing about the picture. No word names a color,
# shape, size or position of the scenes, so a junk caption never describes one by accident.
_JUNK_FILES = {"en": ("IMG_{n}.jpg", "DSC{n}.JPG", "image_{n}.png", "photo-{n}.jpeg", "Screenshot_{n}.png",
                      "untitled-{n}.webp", "banner_{n}.gif", "thumb_{n}.jpg"),
               "zh": ("微信图片_{n}.jpg", "截图_{n}.png", "图片{n}.jpg", "未命名-{n}.png", "下载_{n}.jpeg")}
_JUNK_PHRASES = {"en": ("click here", "image", "photo", "logo", "thumbnail", "click to enlarge", "download now",
                        "no description available", "placeholder", "untitled", "see more", "buy now", "sponsored",
                        "product image", "header image"),
                 "zh": ("点击这里", "图片", "查看大图", "立即下载", "暂无描述", "无标题", "广告", "点击查看更多",
                        "商品图片", "封面")}
_JUNK_WORDS = {"en": ("banana", "keyboard", "sunset", "holiday", "sale", "wedding", "recipe", "cheap", "flights",
                      "garden", "coffee", "mountain", "vintage", "free", "shipping", "team", "office", "party",
                      "beach", "music", "news", "best", "price", "2019", "summer", "new", "official"),
               "zh": ("香蕉", "键盘", "日落", "假期", "促销", "婚礼", "食谱", "咖啡", "花园", "山", "免费", "包邮",
                      "办公室", "音乐", "新闻", "最新", "特价", "夏天", "官方", "旅游")}


def junk_caption(rng: np.random.Generator, lang: str) -> str:
    """One piece of alt-text junk in ``lang`` ("en" | "zh"): a file name, a stock phrase or random words."""
    kind = int(rng.integers(3))
    if kind == 0:
        files = _JUNK_FILES[lang]
        return files[int(rng.integers(len(files)))].format(n=int(rng.integers(100, 100_000_000)))
    if kind == 1:
        phrases = _JUNK_PHRASES[lang]
        return phrases[int(rng.integers(len(phrases)))]
    words = _JUNK_WORDS[lang]
    picked = [words[int(i)] for i in rng.choice(len(words), size=int(rng.integers(2, 6)), replace=False)]
    return (" " if lang == "en" else "").join(picked)


def _scene_key(objects: Sequence[dict[str, Any]], relation: str | None) -> tuple[Any, ...]:
    return (relation, *((o["color"], o["shape"], o["size"], o["position"]) for o in objects))


def noisy_captions(rng: np.random.Generator, kind: str, objects: Sequence[dict[str, Any]], relation: str | None,
                   split: str) -> dict[str, str]:
    """Noisy text in both languages (always both: the stream does not depend on ``langs``). "wrong": the
    captions of another random scene of the split (a different scene key); "unrelated": `junk_caption`."""
    if kind == "unrelated":
        return {lang: junk_caption(rng, lang) for lang in ("en", "zh")}
    own = _scene_key(objects, relation)
    while True:  # a different scene is drawn almost always at the first try
        other, rel = sample_scene(rng, split)
        public = [{k: v for k, v in o.items() if not k.startswith("_")} for o in other]
        if _scene_key(public, rel) != own:
            return captions.scene_captions(rng, public, rel)


def replace_image_captions(targets: Targets, noisy: dict[str, str], langs: Sequence[str]) -> Targets:
    """``targets`` whose image captions (if any) become the noisy text, one per language; video captions, QA and
    the transcript (of the clean spoken caption) are kept."""
    if not any(c.media == "image" for c in targets.captions):
        return targets
    image = tuple(Caption(noisy[lang], lang, "image") for lang in langs)
    return dataclasses.replace(targets, captions=image + tuple(c for c in targets.captions if c.media != "image"))
