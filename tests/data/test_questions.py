"""The `shapes` question generator, checked against the scene graph with an independent parser: every answer
is right, every object named is the only one of its description, held-out pairs never show in train/val,
yes/no answers are balanced, English and Chinese are parallel."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import pytest

from polymodal.data.synth import questions, shapes
from polymodal.data.targets import QA, Targets

# Independent vocabularies (not imported from the generator)
ZH_COLOR = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
            "cyan": "青色", "pink": "粉色"}
ZH_SHAPE = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形", "star": "星形",
            "cross": "十字形"}
ZH_POSITION = {"center": "中间", "left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "top left": "左上角",
               "top right": "右上角", "bottom left": "左下角", "bottom right": "右下角"}
ZH_WORD = {**ZH_COLOR, **ZH_SHAPE, **ZH_POSITION, "small": "小", "large": "大", "yes": "是", "no": "否",
           "up": "上", "down": "下"}
ZH_WORD.update({"left": "左", "right": "右"})  # as motion answers (positions are checked separately)
REL_EN = {"to the left of": (-1, 0), "to the right of": (1, 0), "above": (0, -1), "below": (0, 1)}
PLURAL = {("crosses" if s == "cross" else s + "s"): s for s in shapes.SHAPES}
HELDOUT = {tuple(p) for p in shapes.HELDOUT_PAIRS}
Obj = dict[str, Any]


def scenes(split: str, n: int, seed: int = 0) -> list[tuple[list[Obj], str | None, str]]:
    """(public objects, relation, direction) of ``n`` scenes drawn the way the generator draws them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        objects, relation = shapes.sample_scene(rng, split)
        dirs = shapes.feasible_directions(objects[0])
        out.append(([{k: v for k, v in o.items() if not k.startswith("_")} for o in objects], relation,
                    dirs[int(rng.integers(len(dirs)))]))
    return out


def ask(objects: list[Obj], relation: str | None, direction: str | None, split: str, seed: int = 0,
        langs: tuple[str, ...] = ("en", "zh")) -> tuple[QA, ...]:
    return questions.scene_questions(objects, relation, direction, np.random.default_rng(seed), langs,
                                     shapes.split_pairs(split))


def matching(phrase: str, objects: list[Obj]) -> list[int]:
    """Indices of the objects an English name ("small red star", "red object", "object") fits."""
    *mods, noun = phrase.split()
    out = []
    for i, o in enumerate(objects):
        ok = noun == "object" or o["shape"] == noun
        for w in mods:
            ok &= (w in shapes.SIZES and o["size"] == w) or (w in shapes.COLORS and o["color"] == w)
        if ok:
            out.append(i)
    return out


def the_one(phrase: str, objects: list[Obj]) -> Obj:
    found = matching(phrase, objects)
    assert len(found) == 1, f"{phrase!r} names {len(found)} objects in {objects}"
    return objects[found[0]]


def xy(o: Obj) -> tuple[float, float]:
    return shapes.POSITIONS[o["position"]]


def is_rel(a: Obj, rel: str, b: Obj) -> bool:
    dx, dy = REL_EN[rel]
    (ax, ay), (bx, by) = xy(a), xy(b)
    return (ax - bx) * dx + (ay - by) * dy > 0.1


def expected(q: QA, objects: list[Obj], direction: str) -> str:
    """The answer to an English question, worked out from the scene graph."""
    t = q.question
    if m := re.fullmatch(r"what (color|shape|size) is the (.+)\?", t):
        assert m[1] not in ("color", "size") or not any(w in m[2].split() for w in
                                                         (shapes.COLORS if m[1] == "color" else shapes.SIZES))
        assert m[1] != "shape" or m[2].endswith("object")  # the asked attribute is never in the name
        return str(the_one(m[2], objects)[m[1]])
    if m := re.fullmatch(r"where is the (.+)\?", t):
        return str(the_one(m[1], objects)["position"])
    if t == "how many shapes are there?":
        return str(len(objects))
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", t):
        return str(sum(o["color"] == m[1] for o in objects))
    if m := re.fullmatch(r"how many (\w+) are there\?", t):
        return str(sum(o["shape"] == PLURAL[m[1]] for o in objects))
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", t):
        return "yes" if any((o["color"], o["shape"]) == (m[1], m[2]) for o in objects) else "no"
    rels = "|".join(REL_EN)
    if m := re.fullmatch(rf"is the (.+) ({rels}) the (.+)\?", t):
        return "yes" if is_rel(the_one(m[1], objects), m[2], the_one(m[3], objects)) else "no"
    if m := re.fullmatch(rf"what is ({rels}) the (.+)\?", t):
        ref = the_one(m[2], objects)
        found = [o for o in objects if o is not ref and is_rel(o, m[1], ref)]
        assert len(found) == 1, t
        return f"{found[0]['color']} {found[0]['shape']}"
    if m := re.fullmatch(r"which way does the (.+) move\?", t):
        assert m[1] == "moving object" or the_one(m[1], objects) is objects[0]
        return direction
    raise AssertionError(f"unparsed question {t!r}")


def zh_answer(en: str, qtype: str) -> str:
    if qtype == "count":
        return en
    if qtype == "relation" and " " in en:  # "green cross" -> 绿色十字形
        color, shape = en.split()
        return ZH_COLOR[color] + ZH_SHAPE[shape]
    return ZH_POSITION[en] if qtype == "position" else ZH_WORD[en]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_answer_follows_from_the_scene_graph(split: str) -> None:
    types: Counter[str] = Counter()
    for k, (objects, relation, direction) in enumerate(scenes(split, 300, seed=len(split))):
        qa = ask(objects, relation, direction, split, seed=k)
        en, zh = [q for q in qa if q.lang == "en"], [q for q in qa if q.lang == "zh"]
        assert len(en) == len(zh) <= questions.MAX_IMAGE_QUESTIONS + 1 and len(en) >= 4
        assert len({q.question for q in en}) == len(en)  # no question twice
        for e, z in zip(en, zh, strict=True):
            assert (e.type, e.media) == (z.type, z.media) and e.type in questions.TYPES
            assert e.media == ("video" if e.type == "motion" else "image")
            assert e.answer == expected(e, objects, direction), (e, objects)
            assert z.answer == zh_answer(e.answer, e.type), (e, z)
            assert e.answer == e.answer.lower().strip() and re.search("[\u4e00-\u9fff]", z.question)
            types[e.type] += 1
        assert [q.type for q in en].count("motion") == 1
    assert set(types) == set(questions.TYPES) and min(types.values()) >= 50, types


def test_without_direction_no_motion_and_with_one_object_no_relation() -> None:
    for objects, relation, _ in scenes("train", 60, seed=3):
        qa = ask(objects, relation, None, "train")
        assert not any(q.type == "motion" or q.media == "video" for q in qa)
        if relation is None:
            assert not any(q.type == "relation" for q in qa)


EN_PAIR = re.compile(rf"\b({'|'.join(shapes.COLORS)}) ({'|'.join(shapes.SHAPES)})")
ZH_PAIR = re.compile(f"({'|'.join(ZH_COLOR.values())})(?:的)?(?:小|大)?({'|'.join(ZH_SHAPE.values())})")
FROM_ZH = {v: k for k, v in {**ZH_COLOR, **ZH_SHAPE}.items()}


def mentioned_pairs(text: str) -> set[tuple[str, str]]:
    """Color+shape pairs named together in English or Chinese text ("red star", "红色的小星形", "小的红色星形")."""
    found = {(c, s) for c, s in EN_PAIR.findall(text.lower())}
    return found | {(FROM_ZH[c], FROM_ZH[s]) for c, s in ZH_PAIR.findall(text)}


def test_heldout_pairs_are_never_named_in_train_or_val_but_are_in_test() -> None:
    named_in_test: Counter[tuple[str, str]] = Counter()
    for split in ("train", "val", "test"):
        for k, (objects, relation, direction) in enumerate(scenes(split, 400, seed=7)):
            for q in ask(objects, relation, direction, split, seed=k):
                pairs = mentioned_pairs(q.question) | mentioned_pairs(q.answer)
                if q.type == "shape" and (m := re.search(r"the (\w+) object", q.question)) and m[1] in shapes.COLORS:
                    pairs.add((m[1], q.answer))  # "what shape is the red object?" -> "star" names red star
                if q.type == "color" and (m := re.search(r"the (?:\w+ )?(\w+)\?", q.question)):
                    pairs.add((q.answer, m[1]))
                if split == "test":
                    named_in_test.update(pairs & HELDOUT)
                else:
                    assert not pairs & HELDOUT, (split, q)
    assert len(named_in_test) == len(HELDOUT) and min(named_in_test.values()) >= 10


def test_yes_no_answers_are_balanced() -> None:
    answers: dict[str, Counter[str]] = {"existence": Counter(), "relation": Counter()}
    for k, (objects, relation, direction) in enumerate(scenes("test", 600, seed=11)):
        for q in ask(objects, relation, direction, "test", seed=k, langs=("en",)):
            if q.answer in ("yes", "no"):
                answers[q.type][q.answer] += 1
    for qtype, c in answers.items():
        total = c["yes"] + c["no"]
        assert total >= 150 and 0.4 <= c["yes"] / total <= 0.6, (qtype, c)


def test_same_rng_same_questions_and_langs_pick_the_language() -> None:
    objects, relation, direction = scenes("train", 1, seed=5)[0]
    a = ask(objects, relation, direction, "train", seed=9)
    assert a == ask(objects, relation, direction, "train", seed=9)
    assert [q for q in a if q.lang == "zh"] == list(ask(objects, relation, direction, "train", seed=9, langs=("zh",)))
    assert {q.lang for q in ask(objects, relation, direction, "train", seed=9, langs=("en",))} == {"en"}


def test_identical_objects_are_never_asked_about_by_name() -> None:
    twins = [{"shape": "star", "color": "pink", "size": "small", "position": p} for p in ("left", "right")]
    qa = ask(twins, "left of", "up", "train", langs=("en",))
    assert not any(q.type in ("color", "shape", "size", "position", "relation") for q in qa)
    motion = [q for q in qa if q.type == "motion"]
    assert motion[0].question == "which way does the moving object move?" and motion[0].answer == "up"
    # two stars of different colors: "the star" is ambiguous, so colors (or sizes) name them
    pair = [{**twins[0], "color": "red"}, {**twins[1], "color": "blue", "size": "large"}]
    for k in range(20):
        for q in ask(pair, "left of", "up", "train", seed=k, langs=("en",)):
            assert q.answer == expected(q, pair, "up")


# ------------------------------------------------------------------------------ the generators' targets

HAS_SPEECH = True
try:
    import espeakng_loader  # noqa: F401
except ImportError:  # pragma: no cover
    HAS_SPEECH = False
EN_SIZE = {"small": "small", "little": "small", "large": "large", "big": "large"}
EN_OBJECT = re.compile(rf"\b({'|'.join(EN_SIZE)}) ({'|'.join(shapes.COLORS)}) ({'|'.join(shapes.SHAPES)})\b")
ZH_OBJECT = re.compile(f"(?:(小|大)的)?({'|'.join(ZH_COLOR.values())})(?:的)?(小|大)?({'|'.join(ZH_SHAPE.values())})")


def described(text: str, lang: str) -> Counter[tuple[str, str, str]]:
    """(size, color, shape) of every object a caption names."""
    if lang == "en":
        return Counter((EN_SIZE[a], b, c) for a, b, c in EN_OBJECT.findall(text.lower()))
    size = {"小": "small", "大": "large"}
    return Counter((size[a or c], FROM_ZH[b], FROM_ZH[d]) for a, b, c, d in ZH_OBJECT.findall(text))


def test_shapes_sample_targets_follow_its_scene() -> None:
    langs = ("en", "zh")
    for index in range(24):
        split = ("train", "val", "test")[index % 3]
        s = shapes.make_sample(index, split, seed=4, langs=langs, modalities=("text", "image", "video"))
        meta, t = s.metadata, s.targets
        objects = Counter((o["size"], o["color"], o["shape"]) for o in meta["objects"])
        assert s.text in [c.text for c in t.captions_for("image", meta["lang"])]
        for lang in langs:
            image, video = t.captions_for("image", lang), t.captions_for("video", lang)
            assert image[0].text == meta["captions"][lang] and video[0].text == meta["video_captions"][lang]
            for caps in (image, video):
                assert len({c.text for c in caps}) == len(caps) == shapes.N_REFERENCES
            for c in image:
                assert described(c.text, lang) == objects, c
            mover = Counter([tuple(meta["objects"][0][k] for k in ("size", "color", "shape"))])
            assert all(described(c.text, lang) == mover for c in video)
        for q in t.qa_for(lang="en"):
            assert q.answer == expected(q, meta["objects"], meta["motion"]), (s.id, q)
        assert len(t.qa_for(lang="zh")) == len(t.qa_for(lang="en")) and t.transcript is None
        if split != "test":
            texts = [c.text for c in t.captions] + [q.question + " " + q.answer for q in t.qa]
            assert not set().union(*map(mentioned_pairs, texts)) & HELDOUT


def test_targets_only_for_generated_media_and_other_fields_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    full = shapes.make_sample(3, "train", seed=2, langs=("en", "zh"), modalities=("text", "image", "video"))
    image = shapes.make_sample(3, "train", seed=2, langs=("en", "zh"), modalities=("text", "image"))
    video = shapes.make_sample(3, "train", seed=2, langs=("en", "zh"), modalities=("video",))
    assert image.targets.captions == tuple(c for c in full.targets.captions if c.media == "image")
    assert image.targets.qa == tuple(q for q in full.targets.qa if q.media == "image")
    assert {c.media for c in video.targets.captions} == {"video"} and [q.type for q in video.targets.qa] == [
        "motion", "motion"]
    assert not shapes.make_sample(3, "train", seed=2, modalities=("text",)).targets
    # the targets' own RNG: without them every other field is the same (and the scene graph is not mutated)
    monkeypatch.setattr(shapes, "scene_targets", lambda *a, **k: Targets())
    bare = shapes.make_sample(3, "train", seed=2, langs=("en", "zh"), modalities=("text", "image", "video"))
    assert bare.text == full.text and bare.metadata == full.metadata
    assert np.array_equal(bare.image, full.image) and np.array_equal(bare.video, full.video)


@pytest.mark.skipif(not HAS_SPEECH, reason="needs the [speech] extra")
def test_spoken_caption_is_the_transcript() -> None:
    from polymodal.data.synth import digits

    langs = []
    for index in (0, 3):  # seed 1: a Chinese and an English sample
        s = shapes.make_sample(index, "train", seed=1, langs=("en", "zh"), modalities=("text", "audio"))
        langs.append(s.metadata["lang"])
        assert s.targets.transcript is not None and s.audio is not None
        assert (s.targets.transcript.text, s.targets.transcript.lang) == (s.text, s.metadata["lang"])
    assert langs == ["zh", "en"]
    d = digits.make_sample(0, "train", 5, seed=1, langs=("en", "zh"), modalities=("text", "audio"))
    assert d.targets.transcript is not None and d.targets.transcript.text == d.text
    assert [(q.media, q.answer) for q in d.targets.qa] == [("audio", str(d.metadata["label"]))] * 2


def test_digits_targets() -> None:
    from polymodal.data.synth import digits

    for index, image_index in enumerate((3, 10, 77)):
        s = digits.make_sample(index, "train", image_index, seed=0, langs=("en", "zh"), modalities=("text", "image"))
        label, t = s.metadata["label"], s.targets
        assert [(q.lang, q.media, q.type, q.answer) for q in t.qa] == [("en", "image", "digit", str(label)),
                                                                        ("zh", "image", "digit", str(label))]
        assert t.qa[0].question == "which digit is written?" and t.transcript is None
        assert all(s.metadata["label_name"] in c.text for c in t.captions_for("image", "en"))
        assert all(s.metadata["label_zh"] in c.text for c in t.captions_for("image", "zh"))


def test_made_dataset_carries_the_targets(tmp_path: Any) -> None:
    from polymodal.data.formats import open_dataset
    from polymodal.data.synth import make_dataset

    m = make_dataset("shapes", tmp_path, n=10, seed=6, langs=("en", "zh"), modalities=("text", "image", "video"),
                     workers=1, progress=False)
    assert m["version"] == 2 and m["targets"]["captions"] == {"media": ["image", "video"], "per_lang": 5}
    assert m["targets"]["qa"]["types"] == list(questions.TYPES) and "transcript" not in m["targets"]
    for s in open_dataset(tmp_path):
        direct = shapes.make_sample(s.metadata["index"], s.metadata["split"], seed=6, langs=("en", "zh"),
                                    modalities=("text", "image", "video"))
        assert s.targets == direct.targets and len(s.targets.qa) >= 8
