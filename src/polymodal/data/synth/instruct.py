"""Instruction-tuning conversations about a `shapes` scene (LLaVA-style), in English and Chinese, and POPE probes.

`scene_conversations` is a pure function of the scene (public object dicts: ``color``, ``shape``, ``size``,
``position``), its relation, an RNG, the languages and the split. Every draw is made for both languages and the
result filtered to ``langs``, so the conversations are parallel (the same questions in each language) and do not
depend on which languages were asked for.

- **instruct** (`N_INSTRUCT` per language): 2-3 user/assistant turns, skills drawn round-robin in a random order:
  ``describe`` (a caption; answer = the scene's "color shape" names, sorted), ``count``, ``compare`` (bigger?
  same color?), ``relation`` ("what is left of the circle?", yes/no), ``format`` (one word, capital letters,
  JSON with keys color and shape, a comma list: answers a parser can verify) and ``followup`` ("And what size
  is it?" about the object the previous turn was about: multi-turn context matters).
- **pope** (`N_POPE` one-turn conversations per language): "Is there a red star in the image?", one about a
  present object (yes) and one about an absent one (no), so yes and no are balanced. The absent pair is drawn
  by one of POPE's settings, recorded as the template: ``pope/random`` (any absent pair), ``pope/popular``
  (absent pairs of the colors and shapes most frequent in training: the held-out pairs take one pair from
  red, blue, green, yellow and from star, triangle, circle, square, so these are purple, orange, cyan, pink x
  diamond, cross), ``pope/adversarial`` (an absent pair sharing the color or the shape of a present object).
  Absent pairs come from the split's pairs: train/val probes never name a held-out pair.

Instruction templates: every skill has `N_PHRASINGS` phrasings per language (ids ``"skill/k"``); the last
(``"skill/4"``, `HELDOUT_TEMPLATES`) is never used in train/val; in test, about half the conversations
(`P_HELDOUT_TEMPLATES`) use it for every turn. Chinese answers use the Chinese words (红色, 星形, 是/否, digits);
capital-letter and JSON-key answers stay English in both languages (the instruction asks for them).

`add_conversations` puts them on a generated sample (their own RNG stream, so nothing else changes) and, for a
spoken sample, makes the first question of its first conversation in the sample's language the sample's audio
(eSpeak NG, `en` or `cmn` voice) and its transcript."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sample import Sample
from ..targets import Conversation, Transcript, Turn
from . import captions, questions, shapes, speech
from .instruct_phrases import N_PHRASINGS, POPE_PHRASES, TEMPLATES

SKILLS: tuple[str, ...] = tuple(TEMPLATES)
HELDOUT_TEMPLATES: frozenset[str] = frozenset(f"{s}/{N_PHRASINGS - 1}" for s in SKILLS)
POPE_SETTINGS: tuple[str, ...] = ("random", "popular", "adversarial")
N_INSTRUCT, N_POPE = 2, 2  # conversations per language and sample
P_HELDOUT_TEMPLATES = 0.5  # share of test conversations in held-out phrasings
P_FOLLOWUP = 0.5  # after a turn about one object, the next asks about it again
LANGS: tuple[str, ...] = ("en", "zh")
_TAG, _VOICE_TAG = 0x1C, 0x1D  # RNG streams of the conversations and of the spoken question's voice
_ATTRS: tuple[str, ...] = ("color", "shape", "size", "position")
_ZH_WORDS: dict[str, Mapping[str, str]] = {"color": captions.COLOR_ZH, "shape": captions.SHAPE_ZH,
                                           "size": captions.SIZE_ZH, "position": captions.POSITION_ZH}
_ATTR_ZH = {"color": "颜色", "shape": "形状", "size": "大小", "position": "位置"}
YES_NO = questions.YES_NO

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class _Q:
    """One question, in both languages: slot values of its phrasings, canonical answer, the assistant's reply."""

    skill: str
    sub: str
    fill: dict[str, dict[str, str]]
    answer: dict[str, str]
    content: dict[str, str]
    focus: int | None = None  # the object it is about (a follow-up may ask about it again)
    revealed: tuple[str, ...] = ()  # that object's attributes the exchange already told


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def _name(objects: Sequence[Obj], i: int, exclude: str | None = None) -> dict[str, str] | None:
    attrs = questions.reference(objects, i, exclude)
    if attrs is None:
        return None
    return {"en": questions.name_en(objects[i], attrs), "zh": questions.name_zh(objects[i], attrs)}


def _value(obj: Obj, attr: str) -> dict[str, str]:
    return {"en": str(obj[attr]), "zh": _ZH_WORDS[attr][obj[attr]]}


def _pair_names(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Sorted "color shape" names: ``{"en": "blue square, red star", "zh": "蓝色正方形、红色星形"}``."""
    ordered = sorted(set(pairs))
    return {"en": ", ".join(f"{c} {s}" for c, s in ordered),
            "zh": "、".join(captions.COLOR_ZH[c] + captions.SHAPE_ZH[s] for c, s in ordered)}


def _yes_no(yes: bool, en: str, zh: str) -> tuple[dict[str, str], dict[str, str]]:
    i = 0 if yes else 1
    return {"en": YES_NO["en"][i], "zh": YES_NO["zh"][i]}, {"en": en, "zh": zh}


# ----------------------------------------------------------------------------------------------- skills

def _describe(rng: np.random.Generator, objects: Sequence[Obj], relation: str | None) -> _Q:
    content = captions.scene_captions(rng, [dict(o) for o in objects], relation)
    answer = _pair_names([(o["color"], o["shape"]) for o in objects])
    return _Q("describe", "any", {"en": {}, "zh": {}}, answer, content)


def _count(rng: np.random.Generator, objects: Sequence[Obj], pairs: Sequence[tuple[str, str]]) -> _Q:
    kind = _pick(rng, ("all", "color", "shape"))
    vocab = list(dict.fromkeys(p[0 if kind == "color" else 1] for p in pairs))
    scene = [o[kind] for o in objects] if kind != "all" else []
    value = _pick(rng, scene if rng.random() < 0.5 else vocab) if kind != "all" else ""
    hits = [i for i, o in enumerate(objects) if kind == "all" or o[kind] == value]
    n = len(hits)
    if kind == "all":
        en, zh = ("shape", "shapes"), "图形"
    elif kind == "color":
        en, zh = (f"{value} shape", f"{value} shapes"), f"{captions.COLOR_ZH[value]}的图形"
    else:
        en, zh = (value, _plural(value)), captions.SHAPE_ZH[value]
    content = {"en": f"There is 1 {en[0]}." if n == 1 else f"There are {n} {en[1]}.", "zh": f"图中有{n}个{zh}。"}
    revealed = () if kind == "all" else (kind,)
    return _Q("count", "any", {"en": {"things": en[1]}, "zh": {"things": zh}}, {"en": str(n), "zh": str(n)},
              content, hits[0] if n == 1 else None, revealed)


def _compare(rng: np.random.Generator, objects: Sequence[Obj]) -> _Q | None:
    """A fair coin decides whether the answer is yes or no. Asked only where the scene allows both answers (the
    sizes differ, or the colors are the same), so yes and no are balanced; None otherwise."""
    if len(objects) < 2:
        return None
    want_yes = bool(rng.random() < 0.5)
    order = [(0, 1), (1, 0)][int(rng.integers(2))]
    options = []
    for sub in ("size", "color"):
        for a, b in (order, order[::-1]):
            na, nb = _name(objects, a, sub), _name(objects, b, sub)
            if na is None or nb is None:
                continue
            yes = (objects[a]["size"], objects[b]["size"]) == ("large", "small") if sub == "size" \
                else objects[a]["color"] == objects[b]["color"]
            options.append((yes == want_yes, sub, a, b, na, nb, yes))
    matching = [o for o in options if o[0]]
    if not matching or len(matching) == len(options):
        return None
    _, sub, a, b, na, nb, yes = _pick(rng, matching)
    if sub == "size":
        answer, content = _yes_no(yes, f"Yes, the {na['en']} is bigger than the {nb['en']}." if yes else
                                  f"No, the {na['en']} is not bigger than the {nb['en']}.",
                                  f"是的，{na['zh']}比{nb['zh']}大。" if yes else f"不是，{na['zh']}不比{nb['zh']}大。")
    else:
        ca, cb = _value(objects[a], "color"), _value(objects[b], "color")
        answer, content = _yes_no(yes, f"Yes, they are both {ca['en']}." if yes else
                                  f"No, the {na['en']} is {ca['en']} and the {nb['en']} is {cb['en']}.",
                                  f"是的，它们都是{ca['zh']}。" if yes else
                                  f"不是，{na['zh']}是{ca['zh']}，{nb['zh']}是{cb['zh']}。")
    return _Q("compare", sub, {"en": {"a": na["en"], "b": nb["en"]}, "zh": {"a": na["zh"], "b": nb["zh"]}},
              answer, content)


def _relation(rng: np.random.Generator, objects: Sequence[Obj]) -> _Q | None:
    names = [_name(objects, i) for i in range(len(objects))]
    if len(objects) < 2 or any(n is None for n in names):
        return None
    triples = [(a, rel, b) for a in range(len(objects)) for b in range(len(objects)) if a != b
               for rel in questions.INVERSE]
    what = bool(rng.random() < 0.5)
    yes = what or bool(rng.random() < 0.5)
    a, rel, b = _pick(rng, [t for t in triples if questions.holds(objects[t[0]], t[1], objects[t[2]]) == yes])
    na, nb = names[a] or {}, names[b] or {}
    fill = {"en": {"a": na["en"], "b": nb["en"], "rel": questions.RELATION_EN[rel]},
            "zh": {"a": na["zh"], "b": nb["zh"], "rel": questions.RELATION_ZH[rel]}}
    if what:
        o = objects[a]
        answer = _pair_names([(o["color"], o["shape"])])
        size = _value(o, "size")
        content = {"en": f"It is {_a(size['en'] + ' ' + answer['en'])}.",
                   "zh": f"是一个{size['zh']}的{answer['zh']}。"}
        return _Q("relation", "what", fill, answer, content, a, ("color", "shape", "size"))
    en_rel, zh_rel = fill["en"]["rel"], fill["zh"]["rel"]
    answer, content = _yes_no(yes, f"Yes, the {na['en']} is {en_rel} the {nb['en']}." if yes else
                              f"No, the {na['en']} is not {en_rel} the {nb['en']}.",
                              f"是的，{na['zh']}在{nb['zh']}的{zh_rel}。" if yes else
                              f"不是，{na['zh']}不在{nb['zh']}的{zh_rel}。")
    return _Q("relation", "yesno", fill, answer, content)


def _format(rng: np.random.Generator, objects: Sequence[Obj]) -> _Q | None:
    subs = ["word", "caps", "json"] + (["list"] if len(objects) > 1 else [])
    sub = _pick(rng, subs)
    i = int(rng.integers(len(objects)))
    o = objects[i]
    if sub == "list":
        ordered = sorted(objects, key=lambda x: x["shape"])
        answer = {"en": ", ".join(x["shape"] for x in ordered),
                  "zh": "，".join(captions.SHAPE_ZH[x["shape"]] for x in ordered)}
        return _Q("format", sub, {"en": {}, "zh": {}}, answer, answer)
    if sub == "json":
        value = {"en": {"color": o["color"], "shape": o["shape"]},
                 "zh": {"color": captions.COLOR_ZH[o["color"]], "shape": captions.SHAPE_ZH[o["shape"]]}}
        answer = {k: json.dumps(v, ensure_ascii=False) for k, v in value.items()}
        fill = {"en": {"pos": captions.POSITION_EN[o["position"]][0]},
                "zh": {"pos": captions.POSITION_ZH[o["position"]] + "的图形"}}
        return _Q("format", sub, fill, answer, answer, i, ("color", "shape"))
    attr = _pick(rng, ("color", "shape"))
    name = _name(objects, i, attr)
    if name is None:
        attr = "shape" if attr == "color" else "color"
        name = _name(objects, i, attr)
    if name is None:
        return None
    asked = {"en": f"what {attr} is the {name['en']}?",
             "zh": f"{name['zh']}是什么{_ATTR_ZH[attr]}？"}
    fill = {lang: {"q": q, "Q": _cap(q)} for lang, q in asked.items()}
    if sub == "caps":
        answer = {"en": o[attr].upper(), "zh": o[attr].upper()}
    else:
        answer = _value(o, attr)
    return _Q("format", sub, fill, answer, answer, i, (attr,))


def _followup(rng: np.random.Generator, objects: Sequence[Obj], prev: _Q) -> _Q | None:
    left = [a for a in _ATTRS if a not in prev.revealed]
    if prev.focus is None or not left:
        return None
    attr = _pick(rng, left)
    o = objects[prev.focus]
    value = _value(o, attr)
    content = {"color": {"en": f"It is {value['en']}.", "zh": f"它是{value['zh']}的。"},
               "shape": {"en": f"It is {_a(value['en'])}.", "zh": f"它是{value['zh']}。"},
               "size": {"en": f"It is {value['en']}.", "zh": f"它是{value['zh']}的。"},
               "position": {"en": f"It is {captions.POSITION_EN[o['position']][0]}.", "zh": f"它在{value['zh']}。"},
               }[attr]
    fill = {"en": {"attr": attr}, "zh": {"attr": _ATTR_ZH[attr]}}
    return _Q("followup", "any", fill, value, content, prev.focus, (*prev.revealed, attr))


# ----------------------------------------------------------------------------------------------- conversations

def _turns(rng: np.random.Generator, objects: Sequence[Obj], relation: str | None, pairs: Sequence[tuple[str, str]],
           queue: list[str]) -> list[_Q]:
    """2-3 questions: the next skills of ``queue`` (consumed), or a follow-up about the previous turn's object."""
    n = int(rng.integers(2, 4))
    out: list[_Q] = []
    tries = 0
    while len(out) < n and tries < 20:
        tries += 1
        q: _Q | None = None
        if out and rng.random() < P_FOLLOWUP:
            q = _followup(rng, objects, out[-1])
        if q is None:
            skill = queue.pop(0)
            queue.append(skill)
            q = (_describe(rng, objects, relation) if skill == "describe" else
                 _count(rng, objects, pairs) if skill == "count" else
                 _compare(rng, objects) if skill == "compare" else
                 _relation(rng, objects) if skill == "relation" else _format(rng, objects))
        if q is not None:
            out.append(q)
    return out


def _render(qs: Sequence[_Q], ks: Sequence[int], lang: str) -> Conversation:
    turns: list[Turn] = []
    for q, k in zip(qs, ks, strict=True):
        text = TEMPLATES[q.skill][q.sub][lang][k].format(**q.fill[lang])
        turns += [Turn("user", _cap(text)),
                  Turn("assistant", q.content[lang], skill=q.skill, answer=q.answer[lang], template=f"{q.skill}/{k}")]
    return Conversation(lang, tuple(turns))


def popular_pairs() -> list[tuple[str, str]]:
    """The color+shape pairs whose color and shape are the most frequent in training (`shapes.split_pairs`)."""
    train = shapes.split_pairs("train")
    colors = {c: sum(p[0] == c for p in train) for c, _ in train}
    kinds = {s: sum(p[1] == s for p in train) for _, s in train}
    return [(c, s) for c, s in train if colors[c] == max(colors.values()) and kinds[s] == max(kinds.values())]


def _pope(rng: np.random.Generator, objects: Sequence[Obj], pairs: Sequence[tuple[str, str]]) -> list[Conversation]:
    present = sorted({(o["color"], o["shape"]) for o in objects})
    absent = [p for p in pairs if p not in present]
    setting = _pick(rng, POPE_SETTINGS)
    pool = {"random": absent,
            "popular": [p for p in popular_pairs() if p in absent],
            "adversarial": [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]}[setting]
    probes = [(True, _pick(rng, present)), (False, _pick(rng, pool or absent))]
    out = []
    for j in rng.permutation(len(probes)).tolist():
        yes, (color, shape) = probes[j]
        en, zh = f"{color} {shape}", f"{captions.COLOR_ZH[color]}的{captions.SHAPE_ZH[shape]}"
        answer, content = _yes_no(yes, f"Yes, there is {_a(en)} in the image." if yes else
                                  f"No, there is no {en} in the image.",
                                  f"是的，图中有{zh}。" if yes else f"没有，图中没有{zh}。")
        question = {"en": POPE_PHRASES["en"].format(obj=_a(en)), "zh": POPE_PHRASES["zh"].format(obj=zh)}
        out += [Conversation(lang, (Turn("user", question[lang]),
                                    Turn("assistant", content[lang], skill="pope", answer=answer[lang],
                                         template=f"pope/{setting}")), kind="pope") for lang in LANGS]
    return out


def scene_conversations(rng: np.random.Generator, objects: Sequence[Obj], relation: str | None,
                        langs: Sequence[str], split: str, *, pope: bool) -> list[Conversation]:
    """`N_INSTRUCT` instruction conversations per language of ``langs`` (parallel: the same questions in each),
    then, with ``pope``, `N_POPE` one-turn POPE probes per language (see the module docstring)."""
    pairs = shapes.split_pairs(split)
    skills = [s for s in SKILLS if s != "followup"]
    queue = [skills[int(j)] for j in rng.permutation(len(skills))]
    by_lang: dict[str, list[Conversation]] = {lang: [] for lang in LANGS}
    for _ in range(N_INSTRUCT):
        qs = _turns(rng, objects, relation, pairs, queue)
        heldout = split == "test" and bool(rng.random() < P_HELDOUT_TEMPLATES)
        ks = [N_PHRASINGS - 1 if heldout else int(rng.integers(N_PHRASINGS - 1)) for _ in qs]
        for lang in LANGS:
            by_lang[lang].append(_render(qs, ks, lang))
    if pope:
        for c in _pope(rng, objects, pairs):
            by_lang[c.lang].append(c)
    return [c for lang in langs for c in by_lang[lang]]


# ----------------------------------------------------------------------------------------------- on a sample

def _spoken(sample: Sample, convs: list[Conversation], seed: int) -> tuple[Sample, list[Conversation]]:
    """The first question of the first instruct conversation in the sample's language becomes its audio."""
    lang = str(sample.metadata["lang"])
    j = next(i for i, c in enumerate(convs) if c.lang == lang and c.kind == "instruct")
    convs = [dataclasses.replace(c, spoken=True) if i == j else c for i, c in enumerate(convs)]
    question = convs[j].turns[0].content
    rng = shapes.stream_rng(seed, int(sample.metadata["index"]), _VOICE_TAG)
    voice = speech.random_voice(rng, lang)
    audio, rate = speech.synthesize(question, voice)
    meta = {**sample.metadata, "voice": voice.as_dict(), "spoken_question": j}
    targets = dataclasses.replace(sample.targets, transcript=Transcript(question, lang))
    return sample.replace(audio=audio, sample_rate=rate, metadata=meta, targets=targets), convs


def add_conversations(sample: Sample, *, seed: int, langs: Sequence[str], pope: bool = True,
                      spoken: bool = False) -> Sample:
    """``sample`` (from `shapes.make_sample` with this ``seed``) with its conversations in ``langs``. With
    ``spoken``, its audio (added if it had none) and transcript become the spoken first question of one
    conversation, marked ``spoken=True`` (``metadata["spoken_question"]``: its index; ``metadata["voice"]``)."""
    meta = sample.metadata
    rng = shapes.stream_rng(seed, int(meta["index"]), _TAG)
    convs = scene_conversations(rng, meta["objects"], meta["relation"], langs, str(meta["split"]), pope=pope)
    if spoken:
        sample, convs = _spoken(sample, convs, seed)
    return sample.replace(targets=dataclasses.replace(sample.targets, conversations=tuple(convs)))


def manifest_entry(pope: bool, spoken_questions: float, spoken: int) -> dict[str, Any]:
    """What the manifest records of the conversations (``manifest["conversations"]``)."""
    return {"skills": list(SKILLS), "per_lang": {"instruct": N_INSTRUCT, "pope": N_POPE if pope else 0},
            "phrasings": N_PHRASINGS, "heldout_templates": sorted(HELDOUT_TEMPLATES),
            "p_heldout_templates_test": P_HELDOUT_TEMPLATES, "pope": pope,
            "pope_settings": list(POPE_SETTINGS) if pope else [], "popular_pairs": [list(p) for p in popular_pairs()],
            "spoken_questions": spoken_questions, "spoken": spoken}


__all__ = ["HELDOUT_TEMPLATES", "POPE_SETTINGS", "SKILLS", "add_conversations", "manifest_entry", "popular_pairs",
           "scene_conversations"]
