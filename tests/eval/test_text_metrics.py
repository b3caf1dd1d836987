"""Captioning metrics: our tokenizer against pycocoevalcap's Java PTBTokenizer, our scores against
pycocoevalcap run directly (COCOEvalCap's pipeline), and BLEU / ROUGE-L / CIDEr-D against their
definitions written out here."""

from __future__ import annotations

import math
import random
import sys
from collections import Counter

import numpy as np
import pytest

from polymodal.data.synth import captions, shapes
from polymodal.errors import InvalidInput, MissingExtra
from polymodal.eval.text_metrics import (
    caption_scores,
    java_available,
    ptb_tokenize,
    tokenize_caption,
    zh_tokenize,
)

needs_java = pytest.mark.skipif(not java_available(), reason="pycocoevalcap's PTBTokenizer and METEOR need Java")

TYPICAL = [
    "A man is standing next to a fire hydrant.", "Two giraffes standing in a field next to trees",
    "A kitchen with a stove, a sink, and a refrigerator.", "a bathroom with a toilet , sink and mirror .",
    "A stop sign on the corner of 5th Ave. and Main St.", "A person's hand holding a cell-phone",
    "A pizza with pepperoni & cheese on it.", "The cat is sitting on the laptop's keyboard",
    "A 'no parking' sign", "There are 3 dogs in the picture", "A clock that reads 10:45",
    "Man in a suit and tie...", "A plate of food (broccoli, rice and chicken).", "What is this?",
    "A woman holding an umbrella; it's raining.", "A giraffe!", "a close up of a sandwich w/ fries",
    "A view of the U.S. Capitol at night", "A 1950's-style diner", "Closeup of a cat\u2019s face",
    'A street sign that says "Broadway".', "Kids' toys on the floor", "THIS IS A TEST.",
    "A man doesn't like the rain, so he's inside.", "The players aren't on the field -- it's half time.",
    "A sign reading \u201cWelcome to Hawaii\u201d", "A cat and a dog [sleeping] together",
    "A bowl of fruit {apples and oranges}", "A price tag of $4.99 on 2,000 items", "A 50% off sale",
    "Is that a bird?! Yes!!", "A photo taken at 5 p.m. on Jan. 3", "I'm looking at a man who's 6 ft. tall",
    "Mr. and Mrs. Smith cut the cake", "  A train   pulling into a station.  ", "a woman's dress (red/white)",
    "A dog \u2014 running \u2013 fast", "We've been told they'd go, she'll come.", "Apples, oranges, etc.",
    "A dog*cat thing with a + sign = fun", "one,two and x:y", "A black-and-white photo of a 2.5-year-old",
    "You cannot park here, gonna get a ticket", "the dog's owners' cars", "It is plan b.", "",
]


def shapes_captions(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        objects, relation = shapes.sample_scene(rng, "test")
        out.append(captions.caption_en(rng, objects, relation))
    return out


def fuzz_captions(n: int, seed: int = 0) -> list[str]:
    """Random mixes of words, clitics, numbers and punctuation in the places captions have them."""
    r = random.Random(seed)
    words = ["a", "the", "man", "woman", "dog's", "it's", "don't", "can't", "two", "3", "10:30", "2,000", "3.5",
             "black-and-white", "t-shirt", "U.S.", "etc.", "Mr.", "(big)", "[tag]", '"quote"', "'single'", "kids'",
             "50%", "$5", "&", "+", "@", "#1", "and/or"]
    ends = ["", "", "", ",", ".", "!", "?", ";", ":", "...", "?!", ")", "'", '"']
    fronts = ["", "", "", "(", '"', "'", "-", "--"]
    lines = []
    for _ in range(n):
        first = r.choice(["A", "The", "Two", "An", "This"])  # captions start with a capital
        lines.append(" ".join([first] + [r.choice(fronts) + r.choice(words) + r.choice(ends)
                                         for _ in range(r.randint(1, 12))]))
    return lines


def java_ptb(sentences: list[str]) -> list[str]:
    tokenizer = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer").PTBTokenizer()
    out = tokenizer.tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
    return [out[i][0] for i in range(len(sentences))]


@needs_java
def test_tokenizer_matches_the_java_ptb_tokenizer():
    corpus = TYPICAL + shapes_captions(100) + fuzz_captions(400)
    expected = java_ptb(corpus)
    mismatches = [(s, e, ptb_tokenize(s)) for s, e in zip(corpus, expected, strict=True) if ptb_tokenize(s) != e]
    assert not mismatches, mismatches[:5]


def test_tokenizer_hand_checked():
    assert ptb_tokenize("A man's bike (red), isn't it?") == "a man 's bike -lrb- red -rrb- is n't it"
    assert ptb_tokenize("The U.S. flag costs $5, or 2,000 yen!") == "the u.s. flag costs $ 5 or 2,000 yen"


def test_chinese_tokens_are_characters():
    assert zh_tokenize("一只红色的猫，在睡觉。") == "一 只 红 色 的 猫 在 睡 觉"
    assert zh_tokenize("图中有3只cat和ＡＢ！ 3.5米") == "图 中 有 3 只 cat 和 ab 3.5 米"  # NFKC: full width -> ASCII
    assert tokenize_caption("红色 圆形", "zh") == "红 色 圆 形"
    with pytest.raises(InvalidInput):
        tokenize_caption("x", "fr")


def coco_direct(refs, hyps, meteor: bool):
    """COCOEvalCap's pipeline without its COCO objects: PTBTokenizer on both sides, then the scorers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    tok = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer").PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": hyps[k]}] for k in refs})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{i + 1}": bleu[i] for i in range(4)}
    out["rouge_l"] = Rouge().compute_score(gts, res)[0]
    out["cider_d"] = Cider().compute_score(gts, res)[0]
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor
        scorer = Meteor()
        out["meteor"] = scorer.compute_score(gts, res)[0]
        del scorer
    return out


def random_corpus(n_images: int, seed: int):
    rng = np.random.default_rng(seed)
    refs, hyps = {}, {}
    for i in range(n_images):
        objects, relation = shapes.sample_scene(rng, "train")
        refs[f"img{i}"] = [captions.caption_en(rng, objects, relation) for _ in range(int(rng.integers(1, 5)))]
        other, rel2 = shapes.sample_scene(rng, "train") if rng.random() < 0.3 else (objects, relation)
        hyps[f"img{i}"] = captions.caption_en(rng, other, rel2)
    return refs, hyps


def mixed_corpus():
    refs, hyps = random_corpus(40, seed=1)
    for i, key in enumerate(list(refs)[:10]):  # COCO-style captions and empty hypotheses
        refs[key] = refs[key] + [TYPICAL[i], TYPICAL[i + 10]]
        hyps[key] = TYPICAL[i + 20] if i % 3 else ""
    return refs, hyps


@pytest.mark.parametrize("meteor", [False, pytest.param(True, marks=pytest.mark.slow)])  # METEOR: ~35 s a start
@needs_java
def test_scores_equal_pycocoevalcap_run_directly(meteor):
    pytest.importorskip("pycocoevalcap")
    refs, hyps = mixed_corpus()
    ours = caption_scores(refs, hyps, meteor=meteor)
    theirs = coco_direct(refs, hyps, meteor=meteor)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-12), key


# ---------------------------------------------------------------------------- the definitions, without Java

def ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_definition(gts, res, n_max=4):
    """Corpus BLEU: clipped n-gram matches summed over the corpus, geometric mean of the precisions, brevity
    penalty with the closest reference length (ties: the shorter)."""
    correct, total = [0] * n_max, [0] * n_max
    hyp_len = ref_len = 0
    for key, (hyp,) in res.items():
        h, refs = hyp.split(), [r.split() for r in gts[key]]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in refs)[1]
        for n in range(1, n_max + 1):
            max_ref = Counter()
            for r in refs:
                max_ref |= ngrams(r, n)
            correct[n - 1] += sum(min(c, max_ref[g]) for g, c in ngrams(h, n).items())
            total[n - 1] += max(0, len(h) - n + 1)
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return [bp * math.exp(sum(math.log(correct[i] / total[i]) for i in range(n)) / n) for n in range(1, n_max + 1)]


def rouge_l_definition(gts, res, beta=1.2):
    def lcs(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]
    scores = []
    for key, (hyp,) in res.items():
        h = hyp.split()
        prec = max(lcs(r.split(), h) / len(h) for r in gts[key])
        rec = max(lcs(r.split(), h) / len(r.split()) for r in gts[key])
        scores.append(0.0 if prec == 0 or rec == 0 else (1 + beta**2) * prec * rec / (rec + beta**2 * prec))
    return float(np.mean(scores))


def cider_d_definition(gts, res, sigma=6.0):
    """CIDEr-D (Vedantam et al. 2015): tf-idf n-gram vectors (idf over the images' reference sets), hypothesis
    weights clipped by the reference's, Gaussian length penalty, mean over n = 1..4 and references, x10."""
    n_images = len(gts)
    df = Counter(g for refs in gts.values() for g in {g for r in refs for n in range(1, 5) for g in ngrams(r.split(), n)})

    def vec(tokens, n):
        return {g: c * (math.log(n_images) - math.log(max(1.0, df[g]))) for g, c in ngrams(tokens, n).items()}

    scores = []
    for key, (hyp,) in res.items():
        h = hyp.split()
        total = 0.0
        for ref in gts[key]:
            r = ref.split()
            for n in range(1, 5):
                vh, vr = vec(h, n), vec(r, n)
                nh, nr = math.sqrt(sum(v * v for v in vh.values())), math.sqrt(sum(v * v for v in vr.values()))
                dot = sum(min(w, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, w in vh.items())
                cos = dot / (nh * nr) if nh and nr else 0.0
                total += cos * math.exp(-((len(h) - len(r)) ** 2) / (2 * sigma**2)) / 4
        scores.append(10 * total / len(gts[key]))
    return float(np.mean(scores))


def test_scores_match_the_definitions():
    pytest.importorskip("pycocoevalcap")
    refs, hyps = random_corpus(30, seed=2)
    gts = {k: [ptb_tokenize(c) for c in v] for k, v in refs.items()}
    res = {k: [ptb_tokenize(hyps[k])] for k in refs}
    ours = caption_scores(refs, hyps, meteor=False)
    assert [ours[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(bleu_definition(gts, res), rel=1e-6)
    assert ours["rouge_l"] == pytest.approx(rouge_l_definition(gts, res), rel=1e-12)
    assert ours["cider_d"] == pytest.approx(cider_d_definition(gts, res), rel=1e-9)


def test_hand_checkable_cases():
    pytest.importorskip("pycocoevalcap")
    refs = {"a": ["a red circle on the left side"], "b": ["two small blue squares at the top"],
            "c": ["one big green star in the middle"]}
    same = caption_scores(refs, {k: v[0].upper() + "." for k, v in refs.items()}, meteor=False)
    for n in range(1, 5):
        assert same[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    assert same["rouge_l"] == pytest.approx(1.0)
    assert same["cider_d"] == pytest.approx(10.0)  # every n-gram vector equal to its reference's
    one_image = caption_scores({"a": refs["a"]}, {"a": refs["a"][0]}, meteor=False)
    assert one_image["cider_d"] == 0.0  # idf log(1/1) = 0: CIDEr-D needs several images
    empty = caption_scores(refs, {"a": "", "b": "...", "c": "one big green star in the middle"}, meteor=False)
    assert 0 < empty["cider_d"] < same["cider_d"]
    all_empty = caption_scores(refs, dict.fromkeys(refs, ""), meteor=False)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in all_empty.values())


def test_chinese_scores_use_characters():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    refs = {"1": ["一个红色的圆形在左边。", "左边有一个红色圆形"], "2": ["蓝色的大正方形。"], "3": ["图中有3个星形"]}
    hyps = {"1": "一个红色的圆形位于左边", "2": "一个蓝色的正方形", "3": ""}
    ours = caption_scores(refs, hyps, lang="zh")
    assert "meteor" not in ours  # English-only

    def chars(s):
        return " ".join(c for c in s if c not in "。，")
    gts = {k: [chars(c) for c in v] for k, v in refs.items()}
    res = {k: [chars(hyps[k])] for k in refs}
    assert ours["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], rel=1e-12)
    assert ours["cider_d"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)
    with pytest.raises(InvalidInput, match="English-only"):
        caption_scores(refs, hyps, lang="zh", meteor=True)


def test_bad_input_and_missing_package(monkeypatch):
    with pytest.raises(InvalidInput, match="different ids"):
        caption_scores({"a": ["x"]}, {"b": "x"})
    with pytest.raises(InvalidInput, match="non-empty list"):
        caption_scores({"a": []}, {"a": "x"})
    for name in [m for m in sys.modules if m.startswith("pycocoevalcap")] + ["pycocoevalcap"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtra, match=r"pip install 'polymodal\[gen\]'"):
        caption_scores({"a": ["x"]}, {"a": "x"}, meteor=False)
