"""Caption templates for the `shapes` scenes, in English and Chinese.

Every caption names every object's size, color and shape, plus the position (one object) or the
relation (two objects), so two captions in a gallery are the same only when the scenes are the same
*and* the same templates were drawn. Word choices (synonyms, template) come from the sample's RNG."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..targets import Caption

COLOR_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
            "purple": "紫色", "orange": "橙色", "cyan": "青色", "pink": "粉色"}
SHAPE_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形", "star": "星形", "cross": "十字形"}
SIZE_EN = {"small": ("small", "little"), "large": ("large", "big")}
SIZE_ZH = {"small": "小", "large": "大"}
POSITION_EN = {
    "center": ("in the center", "in the middle"), "left": ("on the left",), "right": ("on the right",),
    "top": ("at the top",), "bottom": ("at the bottom",),
    "top left": ("in the top left corner",), "top right": ("in the top right corner",),
    "bottom left": ("in the bottom left corner",), "bottom right": ("in the bottom right corner",),
}
POSITION_ZH = {"center": "中间", "left": "左边", "right": "右边", "top": "上方", "bottom": "下方",
               "top left": "左上角", "top right": "右上角", "bottom left": "左下角", "bottom right": "右下角"}
RELATION_EN = {"left of": ("to the left of", "left of"), "right of": ("to the right of", "right of"),
               "above": ("above", "over"), "below": ("below", "under", "beneath")}
RELATION_ZH = {"left of": ("左边", "左侧"), "right of": ("右边", "右侧"), "above": ("上方", "上面"),
               "below": ("下方", "下面")}
DIRECTION_EN = {"left": ("left", "to the left"), "right": ("right", "to the right"),
                "up": ("up", "upward"), "down": ("down", "downward")}
DIRECTION_ZH = {"left": "左", "right": "右", "up": "上", "down": "下"}

ONE_EN = ("a {o} {p}", "{P}, there is a {o}", "a picture of a {o} {p}", "the image shows a {o} {p}",
          "there is a {o} {p}", "a single {o} {p}")
TWO_EN = ("a {o1} {r} a {o2}", "the {o1} is {r} the {o2}", "there is a {o1} {r} a {o2}",
          "a picture of a {o1} {r} a {o2}", "a {o2}, with a {o1} {r} it", "two shapes: a {o1} {r} a {o2}")
MOVE_EN = ("the {o} moves {d}", "a {o} slides {d}", "the {o} is moving {d}", "a {o} travels {d}")
ONE_ZH = ("{p}有一个{o}。", "图片{p}是一个{o}。", "一个{o}位于画面{p}。", "画面{p}有一个{o}。")
TWO_ZH = ("{o1}在{o2}的{r}。", "图中有一个{o1}，位于{o2}的{r}。", "{o2}的{r}有一个{o1}。", "一个{o1}在一个{o2}的{r}。")
MOVE_ZH = ("{o}向{d}移动。", "{o}往{d}移动。", "{o}正在向{d}滑动。")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _obj_en(rng: np.random.Generator, obj: dict[str, Any]) -> str:
    return f"{_pick(rng, SIZE_EN[obj['size']])} {obj['color']} {obj['shape']}"


def _obj_zh(rng: np.random.Generator, obj: dict[str, Any]) -> str:
    size, color, shape = SIZE_ZH[obj["size"]], COLOR_ZH[obj["color"]], SHAPE_ZH[obj["shape"]]
    # two natural orders: "红色的小圆形" / "小的红色圆形"
    return f"{color}的{size}{shape}" if rng.integers(2) == 0 else f"{size}的{color}{shape}"


def caption_en(rng: np.random.Generator, objects: list[dict[str, Any]], relation: str | None) -> str:
    if relation is None:
        p = _pick(rng, POSITION_EN[objects[0]["position"]])
        template = _pick(rng, ONE_EN)
        return _sentence(template.format(o=_obj_en(rng, objects[0]), p=p, P=p[0].upper() + p[1:]))
    template = _pick(rng, TWO_EN)
    r = _pick(rng, RELATION_EN[relation])
    return _sentence(template.format(o1=_obj_en(rng, objects[0]), o2=_obj_en(rng, objects[1]), r=r))


def caption_zh(rng: np.random.Generator, objects: list[dict[str, Any]], relation: str | None) -> str:
    if relation is None:
        template = _pick(rng, ONE_ZH)
        return template.format(o=_obj_zh(rng, objects[0]), p=POSITION_ZH[objects[0]["position"]])
    template = _pick(rng, TWO_ZH)
    r = _pick(rng, RELATION_ZH[relation])
    return template.format(o1=_obj_zh(rng, objects[0]), o2=_obj_zh(rng, objects[1]), r=r)


def motion_captions(rng: np.random.Generator, obj: dict[str, Any], direction: str) -> dict[str, str]:
    """What the video shows: the first object moving in ``direction``, in both languages."""
    en = _pick(rng, MOVE_EN).format(o=_obj_en(rng, obj), d=_pick(rng, DIRECTION_EN[direction]))
    zh = _pick(rng, MOVE_ZH).format(o=_obj_zh(rng, obj), d=DIRECTION_ZH[direction])
    return {"en": _sentence(en), "zh": zh}


def scene_captions(rng: np.random.Generator, objects: list[dict[str, Any]], relation: str | None) -> dict[str, str]:
    """The scene described in both languages (always both, so the RNG stream does not depend on ``langs``)."""
    return {"en": caption_en(rng, objects, relation), "zh": caption_zh(rng, objects, relation)}


def references(rng: np.random.Generator, draw: Callable[[np.random.Generator], dict[str, str]],
               first: dict[str, str], langs: Sequence[str], media: str, k: int = 5,
               tries: int = 60) -> list[Caption]:
    """Up to ``k`` different captions per language (grouped by language), ``first[lang]`` first (the sample's
    own caption), the rest from ``draw(rng)`` (both languages per call) until ``k`` or ``tries`` calls."""
    found = {lang: [first[lang]] for lang in langs}
    for _ in range(tries):
        if all(len(v) >= k for v in found.values()):
            break
        drawn = draw(rng)
        for lang, texts in found.items():
            if len(texts) < k and drawn[lang] not in texts:
                texts.append(drawn[lang])
    return [Caption(text, lang, media) for lang in langs for text in found[lang]]
