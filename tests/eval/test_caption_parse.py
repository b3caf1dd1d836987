"""Every caption the `shapes` generator writes parses back to its scene; wrong captions score lower."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.data.synth import captions, shapes
from polymodal.errors import InvalidInput
from polymodal.eval.caption_parse import attribute_accuracy, attribute_report, parse_shapes_caption

PUBLIC = ("color", "shape", "size", "position")


def scenes(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        objects, relation = shapes.sample_scene(rng, ("train", "test")[i % 2])
        yield rng, objects, relation


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_generated_caption_parses_back_to_its_scene(lang):
    write = captions.caption_en if lang == "en" else captions.caption_zh
    texts = set()
    for rng, objects, relation in scenes(300):
        for _ in range(4):  # several template/synonym draws per scene
            text = write(rng, objects, relation)
            parsed = parse_shapes_caption(text, lang)
            assert [{k: p[k] for k in PUBLIC} for p in parsed] == [{k: o[k] for k in PUBLIC} for o in objects], text
            if relation is not None:
                assert parsed[0]["relation"] == relation, text
            assert attribute_accuracy(text, objects, relation, lang)["all"] == 1.0
            texts.add(text)
    assert len(texts) > 600  # templates and synonyms vary


def test_object_order_follows_the_relation_not_the_text():
    en = parse_shapes_caption("A big purple triangle, with a little cyan diamond above it.", "en")
    assert [o["shape"] for o in en] == ["diamond", "triangle"] and en[0]["relation"] == "above"
    zh = parse_shapes_caption("蓝色的大正方形的左侧有一个小的红色圆形。", "zh")
    assert [o["shape"] for o in zh] == ["circle", "square"] and zh[0]["relation"] == "left of"
    assert [o["position"] for o in zh] == ["left", "right"]


def test_missing_words_are_none():
    parsed = parse_shapes_caption("a star somewhere", "en")
    assert parsed == [{"color": None, "shape": "star", "size": None, "position": None}]
    assert parse_shapes_caption("nothing here", "en") == []
    with pytest.raises(InvalidInput):
        parse_shapes_caption("x", "fr")


SCENE = [{"color": "red", "shape": "circle", "size": "small", "position": "left"},
         {"color": "blue", "shape": "square", "size": "large", "position": "right"}]


def test_corrupted_captions_score_lower():
    right = "A small red circle to the left of a large blue square."
    assert attribute_accuracy(right, SCENE, "left of")["all"] == 1.0
    wrong_color = attribute_accuracy(right.replace("red", "green"), SCENE, "left of")
    assert wrong_color["color"] == 0.5 and wrong_color["all"] == 0.0 and wrong_color["shape"] == 1.0
    wrong_size = attribute_accuracy(right.replace("large", "small"), SCENE, "left of")
    assert wrong_size["size"] == 0.5 and wrong_size["all"] == 0.0
    wrong_relation = attribute_accuracy(right.replace("left", "right"), SCENE, "left of")
    assert wrong_relation["relation"] == 0.0 and wrong_relation["all"] == 0.0
    one_object = attribute_accuracy("A small red circle on the left.", SCENE, "left of")
    assert one_object["color"] == 0.5 and one_object["all"] == 0.0
    zh = attribute_accuracy("红色的小圆形在蓝色的大正方形的右边。", SCENE, "left of", "zh")
    assert zh["relation"] == 0.0 and zh["color"] == 1.0
    single = [{"color": "pink", "shape": "star", "size": "large", "position": "top left"}]
    assert attribute_accuracy("A big pink star in the top left corner.", single, None)["all"] == 1.0
    moved = attribute_accuracy("A big pink star in the middle.", single, None)
    assert moved["position"] == 0.0 and moved["relation"] is None and moved["all"] == 0.0


def test_the_same_scene_told_from_the_other_object_is_right():
    mirrored = "A large blue square to the right of a small red circle."
    assert attribute_accuracy(mirrored, SCENE, "left of")["all"] == 1.0
    assert attribute_accuracy("小的红色圆形的右边有一个蓝色的大正方形。", SCENE, "left of", "zh")["all"] == 1.0


def test_report_splits_seen_and_heldout_scenes():
    heldout = [{"color": "red", "shape": "star", "size": "small", "position": "center"}]  # a held-out pair
    seen = [{"color": "pink", "shape": "star", "size": "small", "position": "center"}]
    report = attribute_report([("A small red star in the center.", heldout, None, "en"),
                               ("A small pink circle in the center.", seen, None, "en"),
                               ("A small red circle to the left of a large blue square.", SCENE, "left of", "en")])
    assert report["heldout"]["n"] == 1 and report["heldout"]["all"] == 1.0
    assert report["seen"]["n"] == 2 and report["seen"]["shape"] == 0.5 and report["seen"]["relation"] == 1.0
    assert report["seen"]["position"] == 1.0 and report["seen"]["all"] == 0.5 and report["overall"]["n"] == 3
    assert report["heldout"]["relation"] is None
