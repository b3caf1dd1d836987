"""Instruction-tuning conversations of `shapes`: the targets' JSON round trip and validation, a deterministic
generator whose en/zh conversations are parallel, held-out phrasings only in test, no held-out pair named in
train/val, balanced POPE probes drawn by their settings, answers that agree with the scene graph (checked with
vocabularies written here, not the generator's), and `data make shapes --conversations` on disk."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from polymodal.commands.data import main as data_main
from polymodal.data.formats import open_dataset
from polymodal.data.sample import Sample
from polymodal.data.synth import instruct, make, make_dataset, shapes
from polymodal.data.synth.instruct_phrases import TEMPLATES
from polymodal.data.targets import Conversation, Targets, Turn
from polymodal.errors import InvalidInput

HAS_SPEECH = True
try:
    import espeakng_loader  # noqa: F401
except ImportError:  # pragma: no cover
    HAS_SPEECH = False

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
ZH_COLORS = dict(zip(COLORS, ("红色", "绿色", "蓝色", "黄色", "紫色", "橙色", "青色", "粉色"), strict=True))
ZH_SHAPES = dict(zip(SHAPES, ("圆形", "正方形", "三角形", "菱形", "星形", "十字形"), strict=True))
ZH_WORDS = {**ZH_COLORS, **ZH_SHAPES, "small": "小", "large": "大", "yes": "是", "no": "否", "center": "中间",
            "left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "top left": "左上角",
            "top right": "右上角", "bottom left": "左下角", "bottom right": "右下角"}
HELDOUT = {("red", "star"), ("blue", "triangle"), ("green", "circle"), ("yellow", "square")}
LANGS = ("en", "zh")
N, SEED = 240, 4


def _sample(index: int, split: str, langs: tuple[str, ...] = LANGS, seed: int = SEED) -> Sample:
    s = shapes.make_sample(index, split, seed=seed, langs=langs, modalities=("text",))
    return instruct.add_conversations(s, seed=seed, langs=langs)


@pytest.fixture(scope="module")
def by_split() -> dict[str, list[Sample]]:
    return {split: [_sample(i, split) for i in range(k, N, 3)] for k, split in enumerate(make.SPLITS)}


def _convs(samples: list[Sample], kind: str | None = None, lang: str | None = None) -> list[Conversation]:
    return [c for s in samples for c in s.targets.conversations
            if (kind is None or c.kind == kind) and (lang is None or c.lang == lang)]


def _scored(conv: Conversation) -> list[Turn]:
    return [t for t in conv.turns if t.role == "assistant"]


# ----------------------------------------------------------------------------------------------- targets

def test_conversation_json_round_trip_and_validation() -> None:
    conv = Conversation("en", (Turn("system", "Be brief."), Turn("user", "How many stars are there?"),
                               Turn("assistant", "There are 2 stars.", skill="count", answer="2",
                                    template="count/1")), spoken=True)
    t = Targets(conversations=(conv,))
    d = t.to_dict()
    assert d["conversations"][0]["turns"][1] == {"role": "user", "content": "How many stars are there?"}
    assert Targets.from_dict(json.loads(json.dumps(d))) == t and t.counts()["conversations"] == 1 and bool(t)
    bad = json.loads(json.dumps(d))
    bad["conversations"][0]["turns"] = bad["conversations"][0]["turns"][1:2]  # ends with the user
    with pytest.raises(InvalidInput) as err:
        Targets.from_dict(bad, source="x.json")
    assert err.value.field == "targets.conversations[0].turns"
    bad["conversations"][0]["turns"] = [d["conversations"][0]["turns"][2], d["conversations"][0]["turns"][1]]
    with pytest.raises(InvalidInput) as err:
        Targets.from_dict(bad)
    assert err.value.field == "targets.conversations[0].turns[0].role"
    for key, value in (("kind", "chat"), ("spoken", "yes")):
        other = json.loads(json.dumps(d))
        other["conversations"][0][key] = value
        with pytest.raises(InvalidInput) as err:
            Targets.from_dict(other)
        assert err.value.field == f"targets.conversations[0].{key}"
    other = json.loads(json.dumps(d))
    other["conversations"][0]["turns"][2]["answer"] = ""
    with pytest.raises(InvalidInput) as err:
        Targets.from_dict(other)
    assert err.value.field == "targets.conversations[0].turns[2].answer"
    with pytest.raises(InvalidInput):
        Conversation("en", (Turn("assistant", "hi"),))


# ----------------------------------------------------------------------------------------------- generator

def test_deterministic_and_independent_of_the_languages_asked(by_split: dict[str, list[Sample]]) -> None:
    for split in make.SPLITS:
        for s in by_split[split][:15]:
            i = s.metadata["index"]
            assert _sample(i, split).targets.conversations == s.targets.conversations
            for lang in LANGS:
                only = _sample(i, split, (lang,)).targets.conversations
                assert only == tuple(c for c in s.targets.conversations if c.lang == lang)
    other = _sample(0, "train", seed=SEED + 1).targets.conversations
    assert other != by_split["train"][0].targets.conversations


def _zh(answer: str) -> str:
    """The Chinese form of an English canonical answer, from this file's vocabulary."""
    if answer.startswith("{"):
        return json.dumps({k: ZH_WORDS[v] for k, v in json.loads(answer).items()}, ensure_ascii=False)
    if answer.isdigit() or answer.isupper():
        return answer
    if ", " in answer and all(x in SHAPES for x in answer.split(", ")):
        return "，".join(ZH_SHAPES[x] for x in answer.split(", "))
    if answer in ZH_WORDS:
        return ZH_WORDS[answer]
    return "、".join(ZH_COLORS[p.split()[0]] + ZH_SHAPES[p.split()[1]] for p in answer.split(", "))


def test_english_and_chinese_conversations_are_parallel(by_split: dict[str, list[Sample]]) -> None:
    for s in (s for ss in by_split.values() for s in ss):
        en, zh = _convs([s], lang="en"), _convs([s], lang="zh")
        assert len(en) == len(zh) == instruct.N_INSTRUCT + instruct.N_POPE
        for a, b in zip(en, zh, strict=True):
            assert (a.kind, a.media, len(a.turns)) == (b.kind, b.media, len(b.turns))
            for x, y in zip(_scored(a), _scored(b), strict=True):
                assert (x.skill, x.template) == (y.skill, y.template)
                assert y.answer == _zh(x.answer or ""), (x.answer, y.answer)
            assert 2 <= len(_scored(a)) <= 3 if a.kind == "instruct" else len(_scored(a)) == 1
            assert re.search("[\u4e00-\u9fff]", b.turns[0].content) and not re.search("[\u4e00-\u9fff]", a.turns[0].content)


def test_every_skill_has_four_phrasings_per_language_and_the_last_is_held_out(by_split: dict[str, list[Sample]]
                                                                              ) -> None:
    for skill, kinds in TEMPLATES.items():
        for lang_table in kinds.values():
            for lang in LANGS:
                assert len(set(lang_table[lang])) == len(lang_table[lang]) >= 5
        assert f"{skill}/{len(next(iter(kinds.values()))['en']) - 1}" in instruct.HELDOUT_TEMPLATES
    for split in ("train", "val"):
        used = {t.template for c in _convs(by_split[split], "instruct") for t in _scored(c)}
        assert not used & instruct.HELDOUT_TEMPLATES
    train = Counter(t.template for c in _convs(by_split["train"], "instruct") for t in _scored(c))
    for skill in instruct.SKILLS:  # every seen phrasing is used in train
        assert {f"{skill}/{k}" for k in range(4)} <= set(train), skill
    test = _convs(by_split["test"], "instruct")
    held = [c for c in test if any(t.template in instruct.HELDOUT_TEMPLATES for t in _scored(c))]
    assert all(all(t.template in instruct.HELDOUT_TEMPLATES for t in _scored(c)) for c in held)
    assert 0.3 <= len(held) / len(test) <= 0.7


def _pairs_named(text: str) -> set[tuple[str, str]]:
    if text.startswith("{"):
        d = json.loads(text)
        inv = {v: k for k, v in ZH_WORDS.items()}
        return {(inv.get(d["color"], d["color"]), inv.get(d["shape"], d["shape"]))}
    en = re.findall(rf"\b({'|'.join(COLORS)})\s+(?:(?:small|large|little|big)\s+)?({'|'.join(SHAPES)})", text.lower())
    zc = {v: k for k, v in ZH_COLORS.items()}
    zs = {v: k for k, v in ZH_SHAPES.items()}
    zh = re.findall(rf"({'|'.join(zc)})的?(?:[大小]的?)?({'|'.join(sorted(zs, key=len, reverse=True))})", text)
    return set(en) | {(zc[c], zs[s]) for c, s in zh}


def test_no_heldout_pair_is_named_in_train_or_val(by_split: dict[str, list[Sample]]) -> None:
    for split in ("train", "val"):
        named = {p for c in _convs(by_split[split]) for t in c.turns for p in _pairs_named(t.content)}
        assert named and not named & HELDOUT, split
    test = {p for c in _convs(by_split["test"]) for t in c.turns for p in _pairs_named(t.content)}
    assert len(test & HELDOUT) >= 3  # the detector finds them where they may be


def test_pope_probes_are_balanced_and_follow_their_settings(by_split: dict[str, list[Sample]]) -> None:
    counts = Counter(c for c in COLORS for s in SHAPES if (c, s) not in HELDOUT)
    shape_counts = Counter(s for c in COLORS for s in SHAPES if (c, s) not in HELDOUT)
    popular = {(c, s) for c in COLORS for s in SHAPES
               if counts[c] == max(counts.values()) and shape_counts[s] == max(shape_counts.values())}
    settings: Counter[str] = Counter()
    for samples in by_split.values():
        for lang in LANGS:
            answers = Counter(t.answer for c in _convs(samples, "pope", lang) for t in _scored(c))
            assert answers[instruct.YES_NO[lang][0]] == answers[instruct.YES_NO[lang][1]] == len(samples)
        for s in samples:
            present = {(o["color"], o["shape"]) for o in s.metadata["objects"]}
            for c in _convs([s], "pope", "en"):
                turn = _scored(c)[0]
                (pair,) = _pairs_named(c.turns[0].content)
                setting = (turn.template or "").split("/")[1]
                settings[setting] += 1
                assert (pair in present) == (turn.answer == "yes") and turn.skill == "pope"
                if turn.answer == "no" and setting == "adversarial":
                    assert any(pair[0] == p[0] or pair[1] == p[1] for p in present)
                if turn.answer == "no" and setting == "popular":
                    assert pair in popular
    assert set(settings) == {"random", "popular", "adversarial"}
    assert set(map(tuple, instruct.popular_pairs())) == popular


def _count_oracle(question: str, objects: list[dict]) -> int:
    words = question.lower()
    color = next((c for c in COLORS if re.search(rf"\b{c}\b", words)), None)
    shape = next((s for s in SHAPES if re.search(rf"\b{s}(e?s)?\b", words)), None)
    return sum((color is None or o["color"] == color) and (shape is None or o["shape"] == shape) for o in objects)


def test_answers_agree_with_the_scene(by_split: dict[str, list[Sample]]) -> None:
    kinds: Counter[str] = Counter()
    for s in (s for ss in by_split.values() for s in ss):
        objects = s.metadata["objects"]
        pairs = {(o["color"], o["shape"]) for o in objects}
        for c in _convs([s], "instruct", "en"):
            for q, a in zip(c.turns[0::2], c.turns[1::2], strict=True):
                kinds[a.skill or ""] += 1
                if a.skill == "describe":
                    assert a.answer == ", ".join(f"{x} {y}" for x, y in sorted(pairs))
                    assert _pairs_named(a.content) == pairs
                elif a.skill == "count":
                    assert a.answer == str(_count_oracle(q.content, objects)), q.content
                elif a.skill == "format" and (a.answer or "").startswith("{"):
                    pos = next(p for p in ("top left", "top right", "bottom left", "bottom right", "center", "left",
                                           "right", "top", "bottom") if p in q.content)
                    (o,) = [o for o in objects if o["position"] == pos]
                    assert json.loads(a.answer or "") == {"color": o["color"], "shape": o["shape"]}
                elif a.skill == "format" and "," in (a.answer or ""):
                    assert sorted((a.answer or "").split(", ")) == sorted(o["shape"] for o in objects)
                elif a.skill == "relation" and a.answer not in ("yes", "no"):
                    assert _pairs_named(a.answer or "") <= pairs
    assert set(kinds) == set(instruct.SKILLS) and min(kinds.values()) >= 20


# ----------------------------------------------------------------------------------------------- data make

def _read(root: Path) -> dict[str, Sample]:
    return {s.id: s for s in open_dataset(root)}


def test_data_make_conversations_round_trip_from_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["make", "shapes", "--n", "12", "--seed", "3", "--lang", "en,zh", "--modalities", "text,image",
            "--shard-size", "5", "--json", "--no-progress"]
    assert data_main([*args, "--out", str(tmp_path / "c"), "--conversations"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert data_main([*args, "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    manifest = out["manifest"]
    assert manifest["args"]["conversations"] is True
    assert set(manifest["conversations"]["heldout_templates"]) == instruct.HELDOUT_TEMPLATES
    plain_manifest = json.loads((tmp_path / "p" / "manifest.json").read_text("utf-8"))
    assert "conversations" not in plain_manifest and "conversations" not in plain_manifest["args"]
    got, plain = _read(tmp_path / "c"), _read(tmp_path / "p")
    assert out["inspect"]["targets"]["total"]["conversations"] == sum(
        len(s.targets.conversations) for s in got.values()) == 12 * 2 * (instruct.N_INSTRUCT + instruct.N_POPE)
    for index, (split, _) in enumerate(make.assign_splits(12, 3)):
        s = got[f"shapes-{index:06d}"]
        ref = instruct.add_conversations(shapes.make_sample(index, split, seed=3, langs=LANGS,
                                                            modalities=("text", "image")), seed=3, langs=LANGS)
        assert s.targets.conversations == ref.targets.conversations and s.targets.conversations
        assert Targets.from_dict(json.loads(json.dumps(s.targets.to_dict()))) == s.targets
        p = plain[s.id]  # everything else is what the data set without conversations holds
        assert (p.text, p.metadata, (p.image == s.image).all()) == (s.text, s.metadata, True)
        assert p.targets == Targets(s.targets.captions, s.targets.qa, s.targets.transcript, s.targets.dialog)


def test_conversation_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        make_dataset("shapes", tmp_path, n=3, modalities=("text",), spoken_questions=0.5, progress=False)
    assert err.value.field == "spoken_questions"
    with pytest.raises(InvalidInput) as err:
        make_dataset("digits", tmp_path, n=3, modalities=("text",), conversations=True, progress=False)
    assert err.value.field == "conversations"


@pytest.mark.skipif(not HAS_SPEECH, reason="needs the [speech] extra")
def test_spoken_questions_become_the_audio(tmp_path: Path) -> None:
    m = make_dataset("shapes", tmp_path, n=10, seed=2, langs=LANGS, modalities=("text", "image"), workers=1,
                     progress=False, conversations=True, spoken_questions=0.5)
    samples = list(_read(tmp_path).values())
    spoken = [s for s in samples if s.audio is not None]
    counts = make.split_counts(10)
    assert len(spoken) == m["conversations"]["spoken"] == sum(round(0.5 * c) for c in counts.values())
    for s in samples:
        flagged = [c for c in s.targets.conversations if c.spoken]
        if s.audio is None:
            assert not flagged and s.targets.transcript is None
            continue
        (conv,) = flagged
        assert conv is s.targets.conversations[s.metadata["spoken_question"]]
        assert conv.lang == s.metadata["lang"] and conv.kind == "instruct"
        assert s.targets.transcript is not None and s.targets.transcript.text == conv.turns[0].content
        assert s.duration > 0.4 and s.metadata["voice"]["name"].split("+")[0].split("-")[0] == (
            "cmn" if conv.lang == "zh" else "en")
