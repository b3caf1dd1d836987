"""WER / CER against a hand-written Levenshtein distance (the definition) and against jiwer called directly."""

from __future__ import annotations

import random
import string
import unicodedata

import pytest

from polymodal.errors import InvalidInput
from polymodal.eval.asr_metrics import asr_report, cer, wer

jiwer = pytest.importorskip("jiwer")


def levenshtein(a: list[str], b: list[str]) -> int:
    """Minimum number of substitutions, deletions and insertions turning ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def clean(text: str) -> str:
    """The normalisation the module documents: lower case, punctuation (P*) out, spaces collapsed."""
    text = "".join(c for c in text.lower() if not unicodedata.category(c).startswith("P"))
    return " ".join(text.split())


def random_sentence(r: random.Random, words: list[str]) -> str:
    out = []
    for _ in range(r.randint(0, 9)):
        w = r.choice(words)
        out.append(w.upper() if r.random() < 0.1 else w + r.choice(["", "", "", ",", ".", "!"]))
    return " ".join(out)


def test_wer_is_the_edit_distance_over_reference_words():
    r = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "red"]
    for _ in range(200):
        n = r.randint(1, 5)
        refs = [random_sentence(r, words) for _ in range(n)]
        refs[0] = refs[0] or "the cat"  # at least one reference word
        hyps = [random_sentence(r, words) for _ in range(n)]
        errors = sum(levenshtein(clean(a).split(), clean(b).split()) for a, b in zip(refs, hyps, strict=True))
        total = sum(len(clean(a).split()) for a in refs)
        assert wer(refs, hyps) == pytest.approx(errors / total, abs=1e-12)


def test_chinese_cer_is_the_edit_distance_over_characters_without_spaces():
    r = random.Random(1)
    chars = list("今天天气很好我们去公园") + [" ", "，", "。", "！"]
    for _ in range(200):
        n = r.randint(1, 4)
        refs = ["".join(r.choice(chars) for _ in range(r.randint(1, 12))) for _ in range(n)]
        refs[0] = refs[0] + "好"
        hyps = ["".join(r.choice(chars) for _ in range(r.randint(0, 12))) for _ in range(n)]

        def keep(s):
            return [c for c in s if not (c.isspace() or unicodedata.category(c).startswith("P"))]
        errors = sum(levenshtein(keep(a), keep(b)) for a, b in zip(refs, hyps, strict=True))
        assert cer(refs, hyps) == pytest.approx(errors / sum(len(keep(a)) for a in refs), abs=1e-12)


def test_same_as_jiwer_on_normalised_text():
    r = random.Random(2)
    words = list(string.ascii_lowercase[:6])
    refs = [random_sentence(r, words) or "a" for _ in range(50)]
    hyps = [random_sentence(r, words) for _ in range(50)]
    assert wer(refs, hyps) == pytest.approx(jiwer.wer([clean(x) for x in refs], [clean(x) for x in hyps]))
    assert cer(refs, hyps, lang="en") == pytest.approx(jiwer.cer([clean(x) for x in refs], [clean(x) for x in hyps]))


def test_hand_checked_values():
    assert wer(["The cat sat."], ["the cat, sat"]) == 0.0
    assert wer("the cat sat on the mat", "the cat sit on mat") == pytest.approx(2 / 6)
    assert cer(["今天天气很好。"], ["今天 天汽很好"]) == pytest.approx(1 / 6)
    assert cer(["ab cd"], ["abcd"], lang="en") == pytest.approx(1 / 5)  # the space counts in English


def test_report_per_language():
    report = asr_report([("the cat", "a cat", "en"), ("the dog", "the dog", "en"), ("你好", "你们", "zh"),
                         ("猫", "猫", "zh-CN")])
    assert report["en"] == {"wer": pytest.approx(1 / 4), "n": 2}
    assert report["zh"] == {"cer": pytest.approx(1 / 2), "n": 1}
    assert report["zh-CN"] == {"cer": 0.0, "n": 1}


def test_bad_input():
    with pytest.raises(InvalidInput):
        wer(["a", "b"], ["a"])
    with pytest.raises(InvalidInput):
        cer([], [])
    with pytest.raises(InvalidInput):
        asr_report([])
