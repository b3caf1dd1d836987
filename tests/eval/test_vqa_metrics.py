"""VQA normalisation (the official VQAv2 steps) and accuracy (exact match; the VQAv2 leave-one-out formula
against the definition written out over the 'k choose k-1' subsets)."""

from __future__ import annotations

import itertools
import random

import pytest

from polymodal.errors import InvalidInput
from polymodal.eval.vqa_metrics import normalize_answer, vqa_accuracy, vqa_report


@pytest.mark.parametrize(("raw", "expected"), [
    ("Two", "2"), ("two", "2"), ("none", "0"), ("ten", "10"), ("a dog", "dog"), ("The Dog.", "dog"),
    ("an apple", "apple"), ("it's", "it's"), ("dont", "don't"), ("oclock", "o'clock"), ("Yes!", "yes"),
    ("yes.", "yes"), ("3.5", "3.5"), ("2,000", "2000"), ("red, white", "red white"), ("black/white", "black white"),
    ("(tennis)", "tennis"), ("t-shirt", "t shirt"), ("5:00", "5:00"), ("  left\tside \n", "left side"),
    ("what ?", "what"), ("a.m.", "am"), ("somebody'd", "somebodyd"), ("Im", "im"), ("$5", "$5"),
])
def test_official_normalisation_examples(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [("红色。", "红色"), ("两 个", "两个"), ("（圆形）", "圆形"),
                                               ("左边, 上方!", "左边上方"), ("ＡＢ红", "ab红")])
def test_chinese_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_one_reference_is_exact_match_after_normalisation():
    assert vqa_accuracy("Two", ["2"]) == 1.0
    assert vqa_accuracy("the red one", ["red 1"]) == 1.0
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    assert vqa_accuracy("红色。", ["红色"]) == 1.0
    assert vqa_accuracy("红色", ["蓝色"]) == 0.0


def definition(pred: str, refs: list[str]) -> float:
    """VQAv2: min(1, #annotators who said it / 3) over each subset of k-1 of the k answers, averaged."""
    pred = normalize_answer(pred)
    refs = [normalize_answer(r) for r in refs]
    subsets = list(itertools.combinations(refs, len(refs) - 1))
    return sum(min(1.0, sum(r == pred for r in s) / 3) for s in subsets) / len(subsets)


def test_several_references_follow_the_vqav2_formula():
    r = random.Random(0)
    vocab = ["2", "two", "Two.", "3", "red", "a red", "blue", "yes", "no", "dog"]
    for _ in range(500):
        refs = [r.choice(vocab) for _ in range(r.randint(2, 10))]
        pred = r.choice(vocab)
        assert vqa_accuracy(pred, refs) == pytest.approx(definition(pred, refs), abs=1e-12)


def test_known_vqav2_values():
    # 10 answers: 3 agree -> 1.0 ... but leave-one-out: (3 * 2/3 + 7 * 1) / 10
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0
    assert vqa_accuracy("4", ["2"] * 10) == 0.0


def test_vqav2_script_mode_compares_raw_answers_when_references_agree():
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("two", ["2"] * 10, vqav2_script=True) == 0.0  # the script does not normalise here
    assert vqa_accuracy("Two", ["2"] * 9 + ["3"], vqav2_script=True) == 1.0  # ... but does here


def test_report_per_question_type():
    items = [("Two", ["2"], "count"), ("3", ["2"], "count"), ("red", ["red"], "color"),
             ("2", ["2"] * 2 + ["3"] * 8, "count")]
    report = vqa_report(items)
    count = (1 + 0 + (2 / 3 * 8 + 1 / 3 * 2) / 10) / 3
    assert report["per_type"]["count"] == {"accuracy": pytest.approx(count), "n": 3}
    assert report["per_type"]["color"] == {"accuracy": 1.0, "n": 1}
    assert report["overall"] == pytest.approx((count * 3 + 1) / 4)
    assert report["n"] == 4


def test_bad_input():
    with pytest.raises(InvalidInput):
        vqa_accuracy("x", "x")  # a string, not a list of answers
    with pytest.raises(InvalidInput):
        vqa_accuracy("x", [])
    with pytest.raises(InvalidInput):
        vqa_report([])
