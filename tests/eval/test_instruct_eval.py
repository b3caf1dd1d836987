"""The instruction-following evaluation: an oracle that replies with the reference (short answer or full
sentence) scores 1.0 in every group; an always-"yes" model hallucinates on every absent object; POPE's numbers
match scikit-learn's; tricky replies in both languages are read right; items are teacher-forced turns."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from polymodal.data.sample import Sample
from polymodal.data.synth import instruct, shapes
from polymodal.errors import InvalidInput
from polymodal.eval.instruct import (
    InstructItem,
    format_instruct_table,
    instruct_eval,
    instruct_items,
    pope_metrics,
    score_reply,
)

LANGS = ("en", "zh")


def _spoken_first(s: Sample) -> Sample:
    """Mark the sample's first conversation spoken (the evaluation reads the flag; no audio needed here)."""
    convs = list(s.targets.conversations)
    convs[0] = dataclasses.replace(convs[0], spoken=True)
    return s.replace(targets=dataclasses.replace(s.targets, conversations=tuple(convs)))


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    out = []
    for i in range(60):
        split = ("train", "val", "test", "test")[i % 4]
        s = shapes.make_sample(i, split, seed=9, langs=LANGS, modalities=("text",))
        s = instruct.add_conversations(s, seed=9, langs=LANGS)
        out.append(_spoken_first(s) if i % 5 == 0 else s)
    return out


def _oracle(field: str):
    def respond(items: Sequence[InstructItem]) -> list[str]:
        return [getattr(it, field) for it in items]
    return respond


@pytest.mark.parametrize("field", ["answer", "reference"])
def test_an_oracle_scores_one_everywhere(samples: list[Sample], field: str) -> None:
    items = instruct_items(samples)
    m = instruct_eval(items, _oracle(field), batch_size=7, progress=False)
    json.dumps(m)
    assert m["n"] == len(items) and m["accuracy"] == 1.0 and m["instruct"]["accuracy"] == 1.0
    for key in ("by_skill", "by_lang", "pairs", "templates", "input"):
        assert all(g["accuracy"] == 1.0 and g["n"] > 0 for g in m[key].values()), key
    assert set(m["by_skill"]) == {*instruct.SKILLS, "pope"} and set(m["by_lang"]) == set(LANGS)
    pope = m["pope"]
    assert (pope["accuracy"], pope["precision"], pope["recall"], pope["f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert pope["yes_rate"] == 0.5 and pope["false_yes_rate"] == 0.0
    assert set(pope["by_setting"]) == set(instruct.POPE_SETTINGS)
    table = format_instruct_table(m)
    assert "POPE" in table and "heldout" in table and "spoken" in table and "adversarial" in table


def test_always_yes_hallucinates_and_always_no_never_does(samples: list[Sample]) -> None:
    items = instruct_items(samples, kinds=("pope",))
    yes = instruct_eval(items, lambda b: ["Yes, there is." if it.lang == "en" else "是的。" for it in b])
    assert yes["pope"]["false_yes_rate"] == 1.0 and yes["pope"]["yes_rate"] == 1.0 and yes["pope"]["recall"] == 1.0
    assert yes["pope"]["accuracy"] == 0.5 and all(g["false_yes_rate"] == 1.0 for g in yes["pope"]["by_setting"].values())
    no = instruct_eval(items, lambda b: ["No." if it.lang == "en" else "没有。" for it in b])
    assert no["pope"]["false_yes_rate"] == 0.0 and no["pope"]["recall"] == 0.0 and no["pope"]["precision"] is None
    assert no["instruct"]["n"] == 0 and no["instruct"]["accuracy"] is None


def test_groups_split_by_language_and_multi_turn_matters(samples: list[Sample]) -> None:
    items = instruct_items(samples, kinds=("instruct",))
    m = instruct_eval(items, lambda b: [it.answer if it.lang == "en" else "不知道" for it in b])
    assert m["by_lang"]["en"]["accuracy"] == 1.0 and m["by_lang"]["zh"]["accuracy"] == 0.0
    assert m["pope"] is None and m["accuracy"] == pytest.approx(0.5)
    follow = [it for it in items if it.skill == "followup"]
    assert follow and all(it.turn >= 3 and it.history[-2].role == "assistant" for it in follow)


def test_pope_metrics_match_scikit_learn() -> None:
    said = [True, True, False, False, True, False, True, True, False, True]
    truth = [True, False, False, True, True, False, False, True, True, True]
    m = pope_metrics(said, truth)
    assert m["accuracy"] == pytest.approx(accuracy_score(truth, said))
    assert m["precision"] == pytest.approx(precision_score(truth, said))
    assert m["recall"] == pytest.approx(recall_score(truth, said))
    assert m["f1"] == pytest.approx(f1_score(truth, said))
    assert m["yes_rate"] == pytest.approx(sum(said) / len(said))
    absent = [s for s, t in zip(said, truth, strict=True) if not t]
    assert m["false_yes_rate"] == pytest.approx(sum(absent) / len(absent))


def test_items_are_teacher_forced_turns(samples: list[Sample]) -> None:
    items = instruct_items(samples)
    for it in items:
        conv = it.conv
        assert it.history == conv.turns[:it.turn] and it.history[-1].role == "user" and it.question
        assert it.reference == conv.turns[it.turn].content and it.answer == conv.turns[it.turn].answer
        assert it.heldout_pair == it.sample.metadata["heldout"]
        assert it.heldout_template == (it.template in instruct.HELDOUT_TEMPLATES)
        assert it.spoken == (conv.spoken and it.turn == 1)
        assert (it.pope_setting is not None) == (it.kind == "pope")
    assert any(it.heldout_pair for it in items) and any(it.heldout_template for it in items)
    assert sum(it.spoken for it in items) == 12  # 12 spoken conversations, one spoken question each
    zh = instruct_items(samples, langs=["zh"], kinds=["instruct"], limit=10)
    assert len(zh) == 10 and all(it.lang == "zh" and it.kind == "instruct" for it in zh)
    with pytest.raises(InvalidInput):
        instruct_items(samples, kinds=["chat"])
    with pytest.raises(InvalidInput):
        instruct_eval(items[:3], lambda b: ["yes"])
    with pytest.raises(InvalidInput):
        instruct_eval([], _oracle("answer"))


JSON_EN = '{"color": "red", "shape": "star"}'
JSON_ZH = '{"color": "红色", "shape": "星形"}'
CASES = [
    # (skill, lang, answer, reply, right)
    ("pope", "en", "yes", "Yes, there is.", True), ("pope", "en", "yes", "YES!", True),
    ("pope", "en", "no", "No, there isn't.", True), ("pope", "en", "no", "There is no red star in the image.", True),
    ("pope", "en", "yes", "There is no red star.", False), ("compare", "en", "no", "Nope", True),
    ("pope", "en", "yes", "there is a red star", True), ("pope", "en", "yes", "maybe", False),
    ("pope", "zh", "是", "是的，图中有红色的星形。", True), ("pope", "zh", "是", "有", True),
    ("pope", "zh", "否", "不是", True), ("pope", "zh", "否", "没有。", True), ("pope", "zh", "否", "否", True),
    ("pope", "zh", "是", "没有", False), ("relation", "zh", "是", "没错", True),
    ("pope", "zh", "否", "图中没有蓝色的正方形", True), ("pope", "zh", "是", "yes", False),
    ("pope", "zh", "否", "不知道", False), ("pope", "en", "no", "I don't know", False),
    ("count", "en", "2", "two", True), ("count", "en", "2", "There are 2 stars.", True),
    ("count", "zh", "2", "两", True), ("count", "zh", "2", "二", True), ("count", "zh", "2", "图中有两个星形。", True),
    ("count", "en", "0", "There are no stars.", True), ("count", "en", "0", "none", True),
    ("count", "zh", "0", "没有", True), ("count", "en", "1", "There is one.", True), ("count", "en", "2", "3", False),
    ("count", "en", "1", "No, there are 2.", False),
    ("describe", "en", "blue square, red star", "A small red star to the left of a big blue square.", True),
    ("describe", "en", "blue square, red star", "A red star.", False),
    ("describe", "en", "blue square, red star", "A red star above a green square.", False),
    ("relation", "en", "red star", "The Red Star.", True), ("relation", "en", "red star", "It is a small red star.", True),
    ("describe", "zh", "蓝色正方形、红色星形", "红色的小星形在蓝色的大正方形的左边。", True),
    ("relation", "zh", "红色星形", "蓝色星形", False),
    ("followup", "en", "top left", "It is in the top left corner.", True),
    ("followup", "en", "left", "It is in the top left corner.", False),
    ("followup", "en", "large", "It's big.", True), ("followup", "en", "red", "It is not red but blue.", False),
    ("followup", "en", "star", "It is a star.", True),
    ("followup", "zh", "左上角", "它在左上角。", True), ("followup", "zh", "大", "它是大的", True),
    ("followup", "zh", "红色", "红的", True),
    ("format", "en", JSON_EN, '```json\n{"color": "Red", "shape": "star"}\n```', True),
    ("format", "en", JSON_EN, '{"color": "red"}', False),
    ("format", "en", JSON_EN, '{"color": "red", "shape": "star", "size": "small"}', False),
    ("format", "en", JSON_EN, "{'color': 'red', 'shape': 'star'}", False),
    ("format", "en", JSON_EN, "color: red, shape: star", False),
    ("format", "zh", JSON_ZH, '{"color": "红色", "shape": "星形"}', True),
    ("format", "zh", JSON_ZH, JSON_EN, False),
    ("format", "en", "STAR", "STAR.", True), ("format", "en", "STAR", "Star", False),
    ("format", "en", "STAR", "A STAR", True), ("format", "zh", "RED", "BLUE", False),
    ("format", "en", "red", "Red.", True), ("format", "en", "red", "It is red.", False),
    ("format", "zh", "红色", "红色。", True), ("format", "zh", "红色", "它是红色的", False),
    ("format", "en", "circle, star", "star, circle", True),
    ("format", "en", "circle, star", "Red star, blue circle.", True),
    ("format", "en", "circle, star", "star and circle", False), ("format", "en", "circle, star", "star", False),
    ("format", "zh", "圆形，星形", "星形、圆形", True), ("format", "en", "star, star", "star, star", True),
    ("format", "en", "star, star", "star", False),
]


@pytest.mark.parametrize(("skill", "lang", "answer", "reply", "right"), CASES)
def test_tricky_replies(skill: str, lang: str, answer: str, reply: str, right: bool) -> None:
    assert score_reply((skill, lang, answer, None), reply) is right
