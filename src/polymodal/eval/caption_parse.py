"""Read a caption of a `shapes` scene back into its objects, and score it against the scene graph.

    from polymodal.eval.caption_parse import attribute_accuracy, parse_shapes_caption
    parse_shapes_caption("A little green star to the left of a big pink circle.", "en")
    # [{"color": "green", "shape": "star", "size": "small", "position": "left", "relation": "left of"},
    #  {"color": "pink", "shape": "circle", "size": "large", "position": "right"}]

The vocabulary is the generator's own (`polymodal.data.synth.shapes` / `.captions`). An object is a shape
word with the size and color words in front of it ("small red circle"; Chinese "红色的小圆形" or
"小的红色圆形"); whichever of them is missing is None. One object: its position phrase ("in the top left
corner", "左上角"). Two objects: the relation phrase decides the order, as in the scene graph where
object 1 is the subject: in English the object right before the relation ("a {o2}, with a {o1} above
it") is object 1; in Chinese the object right before "的{relation}" is object 2 ("{o2}的左边有一个{o1}").
The first object carries ``relation``; both get the positions the generator derives from the relation
(`shapes.RELATIONS`), so a parse compares field by field with the scene's objects.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..data.synth.captions import (
    COLOR_ZH,
    POSITION_EN,
    POSITION_ZH,
    RELATION_EN,
    RELATION_ZH,
    SHAPE_ZH,
    SIZE_EN,
    SIZE_ZH,
)
from ..data.synth.shapes import COLORS, HELDOUT_PAIRS, RELATIONS, SHAPES
from ..errors import InvalidInput

ATTRIBUTES = ("color", "shape", "size")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))  # longest first


def _lookup(table: Mapping[str, str | Sequence[str]]) -> dict[str, str]:
    """surface form -> canonical name, for tables of one form or of several synonyms."""
    return {form: name for name, forms in table.items() for form in ((forms,) if isinstance(forms, str) else forms)}


_SIZE_EN, _SIZE_ZH = _lookup(SIZE_EN), _lookup(SIZE_ZH)
_POS_EN, _POS_ZH = _lookup(POSITION_EN), _lookup(POSITION_ZH)
_REL_EN, _REL_ZH = _lookup(RELATION_EN), _lookup(RELATION_ZH)
_COLOR_ZH, _SHAPE_ZH = _lookup(COLOR_ZH), _lookup(SHAPE_ZH)

_OBJ_EN = re.compile(rf"\b(?:(?P<size>{_alternation(_SIZE_EN)})\s+)?(?:(?P<color>{_alternation(COLORS)})\s+)?"
                     rf"(?P<shape>{_alternation(SHAPES)})s?\b")
_POSITION_EN = re.compile(rf"\b(?:{_alternation(_POS_EN)})\b")
_RELATION_EN = re.compile(rf"\b(?:{_alternation(_REL_EN)})\b")
_C, _S = _alternation(_COLOR_ZH), _alternation(_SIZE_ZH)
_OBJ_ZH = re.compile(rf"(?:(?P<color>{_C})的?(?P<size>{_S})?|(?P<size2>{_S})的?(?P<color2>{_C})?)?"
                     rf"(?P<shape>{_alternation(_SHAPE_ZH)})")
_RELATION_ZH = re.compile(rf"的(?P<rel>{_alternation(_REL_ZH)})")
_POSITION_ZH = re.compile(_alternation(_POS_ZH))


def _objects_en(text: str) -> list[tuple[int, int, dict[str, Any]]]:
    return [(m.start(), m.end(), {"color": m["color"], "shape": m["shape"],
                                  "size": _SIZE_EN.get(m["size"]) if m["size"] else None})
            for m in _OBJ_EN.finditer(text)]


def _objects_zh(text: str) -> list[tuple[int, int, dict[str, Any]]]:
    out = []
    for m in _OBJ_ZH.finditer(text):
        color = m["color"] or m["color2"]
        size = m["size"] or m["size2"]
        out.append((m.start(), m.end(), {"color": _COLOR_ZH[color] if color else None,
                                         "shape": _SHAPE_ZH[m["shape"]], "size": _SIZE_ZH[size] if size else None}))
    return out


def parse_shapes_caption(text: str, lang: str = "en") -> list[dict[str, Any]]:
    """The objects a `shapes` caption names, object 1 (the subject of the relation) first: dicts with
    ``color``, ``shape``, ``size``, ``position`` (None where the caption does not say) and, on the first of
    two objects, ``relation`` (its relation to the second)."""
    if lang not in ("en", "zh"):
        raise InvalidInput(f"unknown caption language {lang!r} (known: 'en', 'zh')", field="lang")
    text = text.lower() if lang == "en" else text
    found = _objects_en(text) if lang == "en" else _objects_zh(text)
    objects = [obj for _, _, obj in found]
    for obj in objects:
        obj["position"] = None
    if len(found) == 1:
        m = (_POSITION_EN if lang == "en" else _POSITION_ZH).search(text)
        objects[0]["position"] = (_POS_EN if lang == "en" else _POS_ZH)[m.group()] if m else None
    elif len(found) >= 2:
        rel_match = _RELATION_EN.search(text) if lang == "en" else _RELATION_ZH.search(text)
        relation = None
        if rel_match is not None:
            before = [i for i, (_, end, _) in enumerate(found) if end <= rel_match.start()]
            relation = _REL_EN[rel_match.group()] if lang == "en" else _REL_ZH[rel_match["rel"]]
            # English: the object before the relation is its subject; Chinese: it is the landmark
            anchor = before[-1] if before else 0
            first = anchor if lang == "en" else next(i for i in range(len(found)) if i != anchor)
            objects = [objects[first]] + [o for i, o in enumerate(objects) if i != first]
        objects[0]["relation"] = relation
        if relation is not None:
            objects[0]["position"], objects[1]["position"] = RELATIONS[relation]
    return objects


def _score(parsed: list[dict[str, Any]], scene: Sequence[Mapping[str, Any]],
           relation: str | None) -> dict[str, float | None]:
    n = len(scene)
    out: dict[str, float | None] = {
        a: sum(i < len(parsed) and parsed[i].get(a) == scene[i][a] for i in range(n)) / n for a in ATTRIBUTES}
    if relation is None:
        out["position"] = float(bool(parsed) and parsed[0].get("position") == scene[0]["position"])
        out["relation"] = None
    else:
        out["position"] = None
        out["relation"] = float(bool(parsed) and parsed[0].get("relation") == relation)
    right = [v for v in out.values() if v is not None]
    out["all"] = float(len(parsed) == n and all(v == 1.0 for v in right))
    return out


def attribute_accuracy(generated: str, scene_objects: Sequence[Mapping[str, Any]], relation: str | None,
                       lang: str = "en") -> dict[str, float | None]:
    """How much of the scene one caption gets right: for ``color``, ``shape``, ``size`` the share of the
    scene's objects whose attribute the caption states correctly (object i against object i);
    ``position`` (one-object scenes) or ``relation`` (two-object scenes) 1/0, the other None; ``all`` 1 when
    the caption names exactly the scene's objects with every attribute right. A two-object caption told from
    the other side ("the blue square is right of the red circle" for "red circle left of blue square")
    counts as right: of the parse and its mirror image, the better-scoring one is used."""
    if not scene_objects:
        raise InvalidInput("the scene has no objects", field="scene_objects")
    parsed = parse_shapes_caption(generated, lang)
    best = _score(parsed, scene_objects, relation)
    if relation is not None and len(parsed) == 2 and parsed[0].get("relation") is not None:
        mirror = [dict(parsed[1]), dict(parsed[0])]
        mirror[0]["relation"] = INVERSE[parsed[0]["relation"]]
        mirror[1].pop("relation", None)
        other = _score(mirror, scene_objects, relation)
        if sum(v or 0.0 for v in other.values()) > sum(v or 0.0 for v in best.values()):
            best = other
    return best


def attribute_report(items: Iterable[tuple[str, Sequence[Mapping[str, Any]], str | None, str]]
                     ) -> dict[str, dict[str, float | int | None]]:
    """``items``: (generated caption, scene objects, relation, language). The mean of each `attribute_accuracy`
    field, with ``n``, over ``overall``, ``seen`` and ``heldout`` scenes (held out: an object's color+shape
    pair is in `shapes.HELDOUT_PAIRS`, the rule behind the samples' ``metadata["heldout"]``). A field is None
    where no scene has it (``position`` when every scene has two objects)."""
    groups: dict[str, list[dict[str, float | None]]] = {"overall": [], "seen": [], "heldout": []}
    for caption, objects, relation, lang in items:
        scores = attribute_accuracy(caption, objects, relation, lang)
        heldout = any((o["color"], o["shape"]) in HELDOUT_PAIRS for o in objects)
        groups["overall"].append(scores)
        groups["heldout" if heldout else "seen"].append(scores)
    report: dict[str, dict[str, float | int | None]] = {}
    for name, rows in groups.items():
        summary: dict[str, float | int | None] = {"n": len(rows)}
        for key in (*ATTRIBUTES, "position", "relation", "all"):
            values = [v for r in rows if (v := r[key]) is not None]
            summary[key] = sum(values) / len(values) if values else None
        report[name] = summary
    return report


__all__ = ["ATTRIBUTES", "attribute_accuracy", "attribute_report", "parse_shapes_caption"]
