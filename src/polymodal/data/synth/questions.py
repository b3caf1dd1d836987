"""Question/answer pairs about a `shapes` scene, derived from its scene graph, in English and Chinese.

`scene_questions` is a pure function of the scene (public object dicts: ``color``, ``shape``, ``size``,
``position``), its relation, the motion direction, an RNG, the languages and the color+shape pairs the split
allows. It builds every candidate question the scene answers unambiguously, then picks a few, round-robin over
the question types in a random order, so each sample asks about different things. Each picked question is
asked in every language of ``langs`` (the same questions, so the languages are parallel).

Answers have one canonical, lowercase form (the answer vocabulary; the table is in docs/data.md):

- color: "what color is the star?" -> "red" (星形是什么颜色？ -> 红色)
- shape: "what shape is the red object?" -> "star" (红色的图形是什么形状？ -> 星形)
- size: "what size is the star?" -> "small" | "large" (星形是大还是小？ -> 小 | 大)
- count: "how many shapes / red shapes / stars are there?" -> "0" | "1" | "2" (图中有几个图形？ -> 2)
- position: "where is the star?" -> "top left", "center", ... (星形在哪里？ -> 左上角, 中间, ...)
- existence: "is there a blue square?" -> "yes" | "no" (图中有蓝色的正方形吗？ -> 是 | 否)
- relation: "is the red star to the left of the square?" -> "yes" | "no" (...吗？ -> 是 | 否);
  "what is above the circle?" -> color + shape of the other object, "green cross" (圆形的上方是什么？ -> 绿色十字形)
- motion (the video): "which way does the green cross move?" -> "left" | "right" | "up" | "down" (左 | 右 | 上 | 下)

An object is named by the fewest attributes that single it out in the scene, never the attribute asked
about ("what color is the star?" only when one star is there; else "the small star", or no color question).
Positions are asked in two-object scenes too (the objects sit at left/right or top/bottom).
The motion question is about the video (``media="video"``), every other one about the picture. Yes/no
answers are drawn by a fair coin, so about half are "yes". Existence questions about absent objects name
only pairs in ``pairs`` (in train/val: never a held-out pair)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..targets import QA
from .captions import COLOR_ZH, DIRECTION_ZH, POSITION_ZH, SHAPE_ZH, SIZE_ZH

TYPES: tuple[str, ...] = ("color", "shape", "size", "count", "position", "existence", "relation", "motion")
MAX_IMAGE_QUESTIONS = 7  # per language; plus one motion question with video
YES_NO = {"en": ("yes", "no"), "zh": ("是", "否")}
# one canonical phrase per relation (captions vary theirs; questions do not)
RELATION_EN = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
RELATION_ZH = {"left of": "左边", "right of": "右边", "above": "上方", "below": "下方"}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# attribute sets that may name an object, in order of preference (the first that singles it out wins)
_REFS: tuple[tuple[str, ...], ...] = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"),
                                      ("color",), ("size",), ("size", "color"), ())

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Candidate:
    """One question in every language: ``text[lang] = (question, answer)``."""

    type: str
    media: str
    text: dict[str, tuple[str, str]]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def grid(position: str) -> tuple[int, int]:
    """(column, row) of a position name on the 3x3 grid: ``"top left" -> (0, 0)``, ``"right" -> (2, 1)``."""
    words = position.split()
    return (0 if "left" in words else 2 if "right" in words else 1,
            0 if "top" in words else 2 if "bottom" in words else 1)


def holds(a: Obj, relation: str, b: Obj) -> bool:
    """Whether ``a`` is ``relation`` ``b`` (``"left of"``, ``"right of"``, ``"above"``, ``"below"``)."""
    (ax, ay), (bx, by) = grid(a["position"]), grid(b["position"])
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def reference(objects: Sequence[Obj], i: int, exclude: str | None = None) -> tuple[str, ...] | None:
    """The fewest attributes that single out object ``i`` (never ``exclude``); None if none do."""
    for attrs in _REFS:
        if exclude in attrs:
            continue
        if all(any(o[a] != objects[i][a] for a in attrs) for j, o in enumerate(objects) if j != i):
            return attrs
    return None


def name_en(obj: Obj, attrs: Sequence[str]) -> str:
    words = [obj[a] for a in ("size", "color") if a in attrs]
    return " ".join([*words, obj["shape"] if "shape" in attrs else "object"])


def name_zh(obj: Obj, attrs: Sequence[str]) -> str:
    noun = SHAPE_ZH[obj["shape"]] if "shape" in attrs else "图形"
    size, color = SIZE_ZH[obj["size"]], COLOR_ZH[obj["color"]]
    if "size" in attrs and "color" in attrs:
        return f"{size}的{color}{noun}"
    if "color" in attrs:
        return f"{color}的{noun}"
    return f"{size}{noun}" if "size" in attrs else noun


def _names(obj: Obj, attrs: Sequence[str]) -> tuple[str, str]:
    return name_en(obj, attrs), name_zh(obj, attrs)


# asked attribute -> (English question, Chinese question, Chinese answer words); {} is the object's name
_ATTRIBUTE: dict[str, tuple[str, str, Mapping[str, str]]] = {
    "color": ("what color is the {}?", "{}是什么颜色？", COLOR_ZH),
    "shape": ("what shape is the {}?", "{}是什么形状？", SHAPE_ZH),
    "size": ("what size is the {}?", "{}是大还是小？", SIZE_ZH),
    "position": ("where is the {}?", "{}在哪里？", POSITION_ZH),
}


def _attribute(objects: Sequence[Obj]) -> list[Candidate]:
    """color, shape, size and position of every object that can be named without the asked attribute."""
    out = []
    for i, o in enumerate(objects):
        for kind, (q_en, q_zh, words_zh) in _ATTRIBUTE.items():
            attrs = reference(objects, i, kind)
            if attrs is not None:
                en, zh = _names(o, attrs)
                out.append(Candidate(kind, "image", {"en": (q_en.format(en), o[kind]),
                                                     "zh": (q_zh.format(zh), words_zh[o[kind]])}))
    return out


def _count(objects: Sequence[Obj], rng: np.random.Generator, colors: list[str], shapes: list[str]) -> list[Candidate]:
    def pick(key: str, vocab: list[str]) -> str:  # half the time a value in the scene, else any (often 0)
        pool = [o[key] for o in objects] if rng.random() < 0.5 else vocab
        return pool[int(rng.integers(len(pool)))]

    color, shape = pick("color", colors), pick("shape", shapes)
    n_color, n_shape = (str(sum(o[k] == v for o in objects)) for k, v in (("color", color), ("shape", shape)))
    return [Candidate("count", "image", {"en": ("how many shapes are there?", str(len(objects))),
                                         "zh": ("图中有几个图形？", str(len(objects)))}),
            Candidate("count", "image", {"en": (f"how many {color} shapes are there?", n_color),
                                         "zh": (f"图中有几个{COLOR_ZH[color]}的图形？", n_color)}),
            Candidate("count", "image", {"en": (f"how many {_plural(shape)} are there?", n_shape),
                                         "zh": (f"图中有几个{SHAPE_ZH[shape]}？", n_shape)})]


def _existence(objects: Sequence[Obj], rng: np.random.Generator, pairs: Sequence[tuple[str, str]],
               k: int = 2) -> list[Candidate]:
    present = sorted({(o["color"], o["shape"]) for o in objects})
    absent = [p for p in pairs if p not in present]
    out = []
    for _ in range(k):
        yes = bool(rng.random() < 0.5) or not absent
        pool = present if yes else absent
        color, shape = pool[int(rng.integers(len(pool)))]
        i = 0 if yes else 1
        out.append(Candidate("existence", "image", {
            "en": (f"is there {_a(f'{color} {shape}')}?", YES_NO["en"][i]),
            "zh": (f"图中有{COLOR_ZH[color]}的{SHAPE_ZH[shape]}吗？", YES_NO["zh"][i])}))
    return out


def _relation(objects: Sequence[Obj], rng: np.random.Generator) -> list[Candidate]:
    """Two yes/no questions (a fair coin each) and the two "what is <relation> the X?" questions."""
    refs = [reference(objects, i) for i in range(len(objects))]
    if len(objects) < 2 or any(r is None for r in refs):
        return []
    names = [_names(o, r or ()) for o, r in zip(objects, refs, strict=True)]
    triples = [(a, rel, b) for a in range(len(objects)) for b in range(len(objects)) if a != b for rel in INVERSE]
    out = []
    for _ in range(2):
        yes = bool(rng.random() < 0.5)
        pool = [t for t in triples if holds(objects[t[0]], t[1], objects[t[2]]) == yes]
        a, rel, b = pool[int(rng.integers(len(pool)))]
        i = 0 if yes else 1
        out.append(Candidate("relation", "image", {
            "en": (f"is the {names[a][0]} {RELATION_EN[rel]} the {names[b][0]}?", YES_NO["en"][i]),
            "zh": (f"{names[a][1]}在{names[b][1]}的{RELATION_ZH[rel]}吗？", YES_NO["zh"][i])}))
    for a, rel, b in triples:
        if holds(objects[a], rel, objects[b]):
            o = objects[a]
            out.append(Candidate("relation", "image", {
                "en": (f"what is {RELATION_EN[rel]} the {names[b][0]}?", f"{o['color']} {o['shape']}"),
                "zh": (f"{names[b][1]}的{RELATION_ZH[rel]}是什么？", COLOR_ZH[o["color"]] + SHAPE_ZH[o["shape"]])}))
    return out


def _motion(objects: Sequence[Obj], direction: str) -> Candidate:
    attrs = reference(objects, 0)
    en, zh = _names(objects[0], attrs) if attrs is not None else ("moving object", "移动的图形")
    return Candidate("motion", "video", {"en": (f"which way does the {en} move?", direction),
                                         "zh": (f"{zh}往哪个方向移动？", DIRECTION_ZH[direction])})


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    """The same question drawn twice (e.g. two "is there a red cross?") is asked once."""
    seen: dict[str, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.text["en"][0], c)
    return list(seen.values())


def _round_robin(groups: dict[str, list[Candidate]], rng: np.random.Generator, k: int) -> list[Candidate]:
    """Up to ``k`` candidates: types in a random order, one of each per round, each type's list shuffled."""
    order = [t for t in (list(groups)[int(j)] for j in rng.permutation(len(groups))) if groups[t]]
    queues = {t: [groups[t][int(j)] for j in rng.permutation(len(groups[t]))] for t in order}
    out: list[Candidate] = []
    while len(out) < k and any(queues.values()):
        for t in order:
            if queues[t] and len(out) < k:
                out.append(queues[t].pop(0))
    return out


def scene_questions(objects: Sequence[Obj], relation: str | None, direction: str | None, rng: np.random.Generator,
                    langs: Sequence[str], pairs: Sequence[tuple[str, str]],
                    max_image: int = MAX_IMAGE_QUESTIONS) -> tuple[QA, ...]:
    """Up to ``max_image`` picture questions, plus one motion question when ``direction`` is given (the video),
    each in every language of ``langs``, grouped by language. ``relation``: of object 0 to object 1 (None for
    one object). ``pairs``: the color+shape pairs this split allows, the only ones an existence question about
    an absent object may name (pass the train pairs for train/val, so no held-out pair is mentioned)."""
    colors = list(dict.fromkeys(c for c, _ in pairs))
    shapes = list(dict.fromkeys(s for _, s in pairs))
    groups: dict[str, list[Candidate]] = {t: [] for t in TYPES if t != "motion"}
    for c in _attribute(objects):
        groups[c.type].append(c)
    groups["count"] = _count(objects, rng, colors, shapes)
    groups["existence"] = _existence(objects, rng, pairs)
    groups["relation"] = _relation(objects, rng) if relation is not None else []
    groups = {t: _unique(cs) for t, cs in groups.items()}
    picked = _round_robin(groups, rng, max_image)
    if direction is not None:
        picked.append(_motion(objects, direction))
    return tuple(QA(c.text[lang][0], c.text[lang][1], c.type, lang, c.media) for lang in langs for c in picked)
