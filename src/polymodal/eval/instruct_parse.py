"""Read a model's reply to a `shapes` instruction and decide whether it is right (`score_answer`).

The kind of answer decides how a reply is read (`answer_kind`, from the turn's skill and canonical answer):

- ``yesno``: English by its first word ("Yes, there is." / "no"), else by a negation anywhere ("There is
  no red star." -> no) or an affirmation ("there is", "it is", "correct"); Chinese by its start (是/是的/对/有/
  没错 -> yes; 不是/不/没有/没/否/无 -> no), else a negation (不, 没, 否) anywhere -> no, 是/有 -> yes; "I don't
  know" (不知道, 不确定, ...) is neither.
- ``number``: the first numeral, as digits or a word (two / 两 / 二), "no"/"none"/没有 meaning 0 when no numeral is
  given.
- ``objects`` (describe, "what is left of the circle?"): the set of objects named with both color and shape
  (`caption_parse.parse_shapes_caption`, so "a big yellow star" and "黄色的大星形" count) equals the answer's.
- ``attribute`` (follow-ups): the values of that attribute the reply names (colors, shapes, sizes with their
  synonyms, positions longest first) are exactly the answer's one.
- ``json`` / ``caps`` / ``word`` / ``list`` (skill ``format``): the format is obeyed AND the content right: a JSON
  object (fences and text around it allowed) with keys color and shape and the right values; only upper-case
  letters, spelling the answer (articles allowed); exactly one word; a list separated by commas (, ， 、 ;)
  whose items name the answer's shapes (any order, colors allowed in an item).
- anything else: the VQA normalised strings are equal.

Case, punctuation, whitespace and articles never matter (except that ``caps`` needs capitals). A Chinese item
is read as Chinese: an English reply to it is wrong unless the instruction asked for English (caps, JSON keys)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping

from ..data.synth import questions
from ..data.synth.captions import COLOR_ZH, POSITION_ZH, SHAPE_ZH, SIZE_ZH
from ..data.synth.shapes import COLORS, POSITIONS, SHAPES
from .caption_parse import parse_shapes_caption
from .vqa_metrics import normalize_answer

_YES_EN, _NO_EN = frozenset({"yes", "yeah", "yep", "true", "correct"}), frozenset({"no", "nope", "false", "incorrect"})
_NEG_EN = frozenset({"no", "not", "none", "nope", "isn't", "aren't", "doesn't", "isnt", "arent", "doesnt", "nothing"})
_AFFIRM_EN = ("there is", "there are", "it is", "they are", "it's", "they're")
_START_ZH = (("没错", True), ("不对", False), ("不是", False), ("没有", False), ("否", False), ("不", False),
             ("没", False), ("无", False), ("错", False), ("是", True), ("对", True), ("有", True), ("正确", True))
_NUM_EN = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
           "nine": 9, "ten": 10, "single": 1, "both": 2}
_NUM_ZH = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9,
           "十": 10}
_ARTICLES = frozenset({"a", "an", "the"})
_SEPARATORS = re.compile(r"[,，、;；]")

# attribute -> surface form -> canonical English value
_EN: dict[str, dict[str, str]] = {
    "color": {c: c for c in COLORS},
    "shape": {**{s: s for s in SHAPES}, **{s + ("es" if s.endswith(("s", "x")) else "s"): s for s in SHAPES}},
    "size": {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"},
    "position": {**{p: p for p in POSITIONS}, "middle": "center", "centre": "center", "above": "top",
                 "below": "bottom", "upper left": "top left", "upper right": "top right",
                 "lower left": "bottom left", "lower right": "bottom right"},
}
_ZH: dict[str, dict[str, str]] = {
    "color": {**{v: k for k, v in COLOR_ZH.items()}, **{v[0]: k for k, v in COLOR_ZH.items()}},
    "shape": {**{v: k for k, v in SHAPE_ZH.items()}, "星星": "star", "五角星": "star", "方形": "square", "圆": "circle"},
    "size": {v: k for k, v in SIZE_ZH.items()},
    "position": {**{v: k for k, v in POSITION_ZH.items()}, "中央": "center", "左侧": "left", "右侧": "right",
                 "上面": "top", "下面": "bottom", "上边": "top", "下边": "bottom"},
}


def _alternation(words: Mapping[str, str], en: bool) -> re.Pattern[str]:
    alt = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alt})\b" if en else f"(?:{alt})")


_PATTERNS = {(attr, lang): _alternation(table, lang == "en")
             for lang, tables in (("en", _EN), ("zh", _ZH)) for attr, table in tables.items()}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def parse_yes_no(reply: str, lang: str) -> bool | None:
    """True for yes, False for no, None when the reply says neither (see the module docstring)."""
    if lang == "zh":
        text = normalize_answer(reply, chinese=True)
        if re.search("不知道|不确定|不清楚|看不出", text):
            return None
        for prefix, value in _START_ZH:
            if text.startswith(prefix):
                return value
        if re.search("[不没否]", text):
            return False
        return True if re.search("[是有]", text) else None
    words = _words(reply)
    if not words:
        return None
    if words[0] in _YES_EN or words[0] in _NO_EN:
        return words[0] in _YES_EN
    if any(w in _NEG_EN for w in words):
        return False
    text = " ".join(words)
    return True if "yes" in words or text.startswith(_AFFIRM_EN) else None


def parse_number(reply: str, lang: str) -> int | None:
    """The first numeral of the reply (digits or a number word); 0 for "no"/"none"/没有 without one."""
    if lang == "zh":
        m = re.search(rf"\d+|[{''.join(_NUM_ZH)}]", reply)
        if m is not None:
            return int(m.group()) if m.group().isdigit() else _NUM_ZH[m.group()]
        return 0 if re.search("没有|无", reply) else None
    words = _words(reply)
    for w in words:
        if w.isdigit():
            return int(w)
        if w in _NUM_EN:
            return _NUM_EN[w]
    return 0 if any(w in ("no", "none") for w in words) else None


def named_pairs(text: str, lang: str) -> set[tuple[str, str]]:
    """The (color, shape) pairs a text names with both a color and a shape."""
    return {(o["color"], o["shape"]) for o in parse_shapes_caption(text, "zh" if lang == "zh" else "en")
            if o["color"] is not None}


def attribute_of(answer: str, lang: str) -> str | None:
    """Which attribute a canonical answer value is a value of (``"color"``, ``"shape"``, ``"size"``,
    ``"position"``), or None."""
    tables = _ZH if lang == "zh" else _EN
    key = answer.strip() if lang == "zh" else answer.strip().lower()
    return next((attr for attr, table in tables.items() if key in table), None)


def named_values(text: str, attr: str, lang: str) -> set[str]:
    """The canonical values of ``attr`` a text names (longest surface forms first: "top left" is not "left")."""
    table = _ZH[attr] if lang == "zh" else _EN[attr]
    found = _PATTERNS[(attr, "zh" if lang == "zh" else "en")].findall(text if lang == "zh" else text.lower())
    return {table[f] for f in found}


def answer_kind(skill: str, answer: str, lang: str) -> str:
    """How a reply to this turn is read: yesno, number, objects, attribute, json, caps, word, list or exact."""
    a = answer.strip()
    if skill == "format":
        if a.startswith("{"):
            return "json"
        if re.fullmatch(r"[A-Z][A-Z ]*", a):
            return "caps"
        return "list" if _SEPARATORS.search(a) else "word"
    if a in questions.YES_NO["en"] or a in questions.YES_NO["zh"]:
        return "yesno"
    if a.isdigit():
        return "number"
    if named_pairs(a, lang):
        return "objects"
    return "attribute" if attribute_of(a, lang) is not None else "exact"


def _json_ok(answer: str, reply: str) -> bool:
    m = re.search(r"\{.*\}", reply, re.S)
    if m is None:
        return False
    try:
        got, want = json.loads(m.group()), json.loads(answer)
    except json.JSONDecodeError:
        return False
    if not isinstance(got, dict) or set(got) != set(want):
        return False
    return all(isinstance(got[k], str) and got[k].strip().lower() == str(v).lower() for k, v in want.items())


def _caps_ok(answer: str, reply: str) -> bool:
    if re.search("[a-z]", reply):
        return False
    words = [w for w in re.findall(r"[A-Z]+", reply) if w.lower() not in _ARTICLES]
    return " ".join(words) == answer.strip()


def _word_ok(answer: str, reply: str, lang: str) -> bool:
    if lang == "zh":
        text = normalize_answer(reply, chinese=True)
        attr = attribute_of(answer, lang)
        return text == answer.strip() or (attr is not None and _ZH[attr].get(text) == _ZH[attr][answer.strip()])
    words = re.findall(r"[A-Za-z0-9]+", reply)
    return len(words) == 1 and words[0].lower() == answer.strip().lower()


def _list_ok(answer: str, reply: str, lang: str) -> bool:
    want = Counter(s for item in _SEPARATORS.split(answer) for s in named_values(item, "shape", lang))
    items = [x for x in _SEPARATORS.split(reply) if x.strip()]
    if len(items) < 2 and sum(want.values()) > 1:
        return False  # not a comma-separated list
    got: Counter[str] = Counter()
    for item in items:
        shapes = [s for s in _PATTERNS[("shape", "zh" if lang == "zh" else "en")].findall(
            item if lang == "zh" else item.lower())]
        if len(shapes) != 1:
            return False
        got[(_ZH if lang == "zh" else _EN)["shape"][shapes[0]]] += 1
    return got == want


def score_answer(skill: str, lang: str, answer: str, reply: str) -> bool:
    """Whether ``reply`` answers a turn of ``skill`` whose canonical answer is ``answer`` (see the module doc)."""
    kind = answer_kind(skill, answer, lang)
    if kind == "yesno":
        return parse_yes_no(reply, lang) == (answer.strip() in ("yes", "是"))
    if kind == "number":
        return parse_number(reply, lang) == int(answer)
    if kind == "objects":
        return named_pairs(reply, lang) == named_pairs(answer, lang)
    if kind == "attribute":
        attr = attribute_of(answer, lang)
        assert attr is not None
        return named_values(reply, attr, lang) == named_values(answer, attr, lang)
    if kind == "json":
        return _json_ok(answer, reply)
    if kind == "caps":
        return _caps_ok(answer, reply)
    if kind == "word":
        return _word_ok(answer, reply, lang)
    if kind == "list":
        return _list_ok(answer, reply, lang)
    chinese = lang == "zh"
    return normalize_answer(reply, chinese) == normalize_answer(answer, chinese)


__all__ = ["answer_kind", "attribute_of", "named_pairs", "named_values", "parse_number", "parse_yes_no",
           "score_answer"]
