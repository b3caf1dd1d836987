"""`polymodal.eval.generation` on fake generators whose outputs are known (the sample's own targets, or answers
with planted mistakes): every reported number must equal the metric functions run directly on the same strings."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from polymodal.data.sample import Batch, Sample
from polymodal.data.synth.shapes import make_sample
from polymodal.data.targets import Targets, Transcript
from polymodal.data.transforms.compose import SampleTransform
from polymodal.errors import InvalidInput
from polymodal.eval.asr_metrics import asr_report
from polymodal.eval.caption_parse import attribute_report
from polymodal.eval.gen_baselines import PriorAnswers, train_captions
from polymodal.eval.gen_items import task_items
from polymodal.eval.generation import evaluate_asr, evaluate_captioning, evaluate_vqa
from polymodal.eval.text_metrics import caption_scores
from polymodal.eval.vqa_metrics import vqa_accuracy, vqa_report
from polymodal.lm.decoding import DecodingOptions
from polymodal.models.generative import GenerativeModel
from polymodal.models.generator import TextGenerator, TokenStreamer, check_prompts

Answer = Callable[[str, str | None, str | None], str]  # (sample id, prompt, lang) -> text


class FakeGenerator(TextGenerator):
    """Answers with ``answer(id, prompt, lang)``; records every call's prompts and language."""

    def __init__(self, task: str, modalities: tuple[str, ...], answer: Answer, langs: list[str] | None = None):
        super().__init__({"tokenizer": {"vocab_size": 16}})
        self.task, self.modalities, self.answer = task, modalities, answer
        if langs is not None:
            self.langs = langs
        self.calls: list[tuple[list[str | None], str | None, list[str | None]]] = []

    def generate(self, batch: Batch, prompts: Sequence[str | None] | None = None,
                 options: DecodingOptions | None = None, streamer: TokenStreamer | None = None,
                 lang: str | None = None) -> list[str]:
        rows = check_prompts(prompts, len(batch))
        self.calls.append((rows, lang, list(batch.texts)))
        return [self.answer(batch.ids[i], rows[i], lang) for i in range(len(batch))]


def wrap(gen: FakeGenerator) -> GenerativeModel:
    return GenerativeModel(gen, SampleTransform(), {}, torch.device("cpu"), name="fake")


@pytest.fixture(scope="module")
def shapes() -> tuple[list[Sample], list[Sample]]:
    """(test, train) shapes scenes with pictures, English and Chinese targets."""
    kw: dict[str, Any] = {"seed": 5, "langs": ("en", "zh"), "modalities": ("text", "image")}
    return [make_sample(i, "test", **kw) for i in range(24)], [make_sample(100 + i, "train", **kw) for i in range(40)]


def _first_caption(samples: Sequence[Sample]) -> Callable[[str, str], str]:
    by_id = {s.id: s for s in samples}
    return lambda sid, lang: by_id[sid].targets.captions_for("image", lang)[0].text


class FakeEmbedder:
    """Texts: fixed random unit vectors (seeded by the string). Images: the sum of the vectors of the captions
    chosen for them, so each language's nearest caption is the chosen one."""

    modalities = ("image", "text")

    def __init__(self, chosen: dict[bytes, list[str]]):
        self.chosen = chosen

    @staticmethod
    def vec(text: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(512)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed(self, **kw: Any) -> np.ndarray:
        (modality, inputs), = kw.items()
        if modality == "text":
            return np.stack([self.vec(t) for t in inputs])
        rows = [np.sum([self.vec(c) for c in self.chosen[np.asarray(x).tobytes()]], axis=0) for x in inputs]
        return np.stack([r / np.linalg.norm(r) for r in rows]).astype(np.float32)


def test_captioning_matches_caption_scores_and_retrieval_baseline(shapes: tuple[list[Sample], list[Sample]]) -> None:
    test, train = shapes
    own = _first_caption(test)
    heldout = {s.id for s in test if s.metadata["heldout"]}
    assert heldout and len(heldout) < len(test)
    swap = {s.id: test[(i + 1) % len(test)].id for i, s in enumerate(test)}

    def answer(sid: str, prompt: str | None, lang: str | None) -> str:
        assert prompt is None and lang in ("en", "zh")  # the captioner is told each item's language
        return own(swap[sid] if sid in heldout else sid, lang)  # held-out scenes: another scene's caption

    gallery = train_captions(train, "image", ["en", "zh"])
    chosen = {s.image.tobytes(): [gallery["en"][i % len(gallery["en"])], gallery["zh"][(3 * i) % len(gallery["zh"])]]
              for i, s in enumerate(test) if s.image is not None}
    gen = FakeGenerator("captioning", ("image",), answer, langs=["en", "zh"])
    r = evaluate_captioning(wrap(gen), test, train_samples=train, retrieval_model=FakeEmbedder(chosen),
                            batch_size=5, progress=False, meteor=False)
    items = task_items(test, "captioning", "image")
    assert r["n_items"] == len(items) == 2 * len(test) and r["systems"] == ["model", "retrieval"]
    preds = r["predictions"]
    assert [p["id"] for p in preds] == [it.sample.id for it in items]
    expected_model = [answer(it.sample.id, None, it.lang) for it in items]
    expected_retrieval = [chosen[np.asarray(it.sample.image).tobytes()][0 if it.lang == "en" else 1] for it in items]
    assert [p["text"] for p in preds] == expected_model
    assert [p["retrieval"] for p in preds] == expected_retrieval
    for lang in ("en", "zh"):
        idx = [i for i, it in enumerate(items) if it.lang == lang]
        refs = {str(i): list(items[i].references) for i in idx}
        for name, hyps in (("model", expected_model), ("retrieval", expected_retrieval)):
            want = caption_scores(refs, {str(i): hyps[i] for i in idx}, lang=lang, meteor=False)
            assert r["scores"][lang][name] == pytest.approx(want)
        assert r["scores"][lang]["n"] == len(idx)
    for name, hyps in (("model", expected_model), ("retrieval", expected_retrieval)):
        attrs = attribute_report((hyps[i], it.sample.metadata["objects"], it.sample.metadata["relation"], it.lang)
                                 for i, it in enumerate(items))
        assert r["attributes"][name] == attrs
    # the model's own captions of seen scenes read back perfectly; the swapped held-out ones do not
    assert r["attributes"]["model"]["seen"]["all"] == 1.0
    assert r["attributes"]["model"]["heldout"]["all"] < 1.0
    assert {c[1] for c in gen.calls} == {"en", "zh"} and max(len(c[0]) for c in gen.calls) <= 5
    assert r["speed"]["items"] == len(items) and r["speed"]["counted"] == "words"
    assert r["speed"]["tokens"] == sum(len(t.split()) for t in expected_model)


def test_captioning_lang_filter_and_errors(shapes: tuple[list[Sample], list[Sample]]) -> None:
    test, _ = shapes
    own = _first_caption(test)
    gen = FakeGenerator("captioning", ("image",), lambda sid, p, lang: own(sid, "zh"), langs=["zh"])
    r = evaluate_captioning(wrap(gen), test[:6], progress=False)
    assert list(r["scores"]) == ["zh"] and "meteor" not in r["scores"]["zh"]["model"]  # METEOR is English-only
    assert r["scores"]["zh"]["model"]["bleu4"] == pytest.approx(1.0)  # the first reference, verbatim
    assert gen.calls[0][1] is None  # one language: no language switch
    with pytest.raises(InvalidInput, match="writes zh, not en"):
        evaluate_captioning(wrap(gen), test[:6], langs=["en"], progress=False)
    with pytest.raises(InvalidInput, match="training captions"):
        evaluate_captioning(wrap(gen), test[:6], retrieval_model=FakeEmbedder({}), progress=False)
    vqa = FakeGenerator("vqa", ("image",), lambda *a: "x")
    with pytest.raises(InvalidInput, match="--task captioning"):
        evaluate_captioning(wrap(vqa), test[:6], progress=False)


def _answers(samples: Sequence[Sample]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(s.id, q.question): (q.answer, q.type) for s in samples for q in s.targets.qa}


def test_vqa_per_type_prior_and_blind(shapes: tuple[list[Sample], list[Sample]]) -> None:
    test, train = shapes
    truth = _answers(test)

    def answer(sid: str, prompt: str | None, lang: str | None) -> str:
        assert prompt is not None
        right, qtype = truth[(sid, prompt)]
        return "wrong" if qtype == "color" else right.upper() + "."  # VQA normalisation forgives case and '.'

    seen_prompts: list[str] = []

    def blind_answer(sid: str, prompt: str | None, lang: str | None) -> str:
        assert prompt is not None and prompt.endswith("<sep>")  # a language model is asked for the answer
        seen_prompts.append(prompt)
        return "yes" if truth[(sid, prompt[:-len("<sep>")])][1] != "count" else "2"

    blind = FakeGenerator("lm", (), blind_answer)
    r = evaluate_vqa(wrap(FakeGenerator("vqa", ("image",), answer)), test, train_samples=train,
                     blind_model=wrap(blind), batch_size=7, progress=False)
    items = task_items(test, "vqa", "image")
    assert r["systems"] == ["model", "prior", "blind"] and r["n_items"] == len(items)
    assert all(text == p for c in blind.calls for text, p in zip(c[2], c[0], strict=True))  # the question alone
    acc = r["accuracy"]
    assert acc["per_type"]["color"]["model"] == 0.0
    assert all(row["model"] == 1.0 for t, row in acc["per_type"].items() if t != "color")
    preds = {name: [p["text"] if name == "model" else p[name] for p in r["predictions"]]
             for name in ("model", "prior", "blind")}
    # the prior, computed here from the training answers (most frequent, ties alphabetical)
    counts: dict[tuple[str, str], Counter[str]] = {}
    for s in train:
        for q in s.targets.qa_for("image"):
            counts.setdefault((q.type, q.lang), Counter())[q.answer] += 1
    best = {k: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for k, c in counts.items()}
    assert preds["prior"] == [best[(it.qtype or "", it.lang)] for it in items]
    for name in ("model", "prior", "blind"):
        want = vqa_report([(p, it.references, it.qtype or "other") for p, it in zip(preds[name], items, strict=True)])
        assert acc["overall"][name] == pytest.approx(want["overall"])
        for t, row in want["per_type"].items():
            assert acc["per_type"][t][name] == pytest.approx(row["accuracy"]) and acc["per_type"][t]["n"] == row["n"]
        for group, flag in (("seen", False), ("heldout", True)):
            scores = [vqa_accuracy(p, it.references) for p, it in zip(preds[name], items, strict=True)
                      if it.sample.metadata["heldout"] is flag]
            assert acc[group][name] == pytest.approx(sum(scores) / len(scores)) and acc[group]["n"] == len(scores)
        for lang in ("en", "zh"):
            scores = [vqa_accuracy(p, it.references) for p, it in zip(preds[name], items, strict=True)
                      if it.lang == lang]
            assert acc["per_lang"][lang][name] == pytest.approx(sum(scores) / len(scores))
    assert r["prior_answers"] == PriorAnswers.from_samples(train, "image").to_dict()
    assert set(r["speed"]) == {"model", "blind"} and len(seen_prompts) == len(items)
    assert [p["accuracy"] for p in r["predictions"]] == [vqa_accuracy(p, it.references)
                                                          for p, it in zip(preds["model"], items, strict=True)]


def test_vqa_refuses_a_blind_model_that_sees(shapes: tuple[list[Sample], list[Sample]]) -> None:
    test, _ = shapes
    model = wrap(FakeGenerator("vqa", ("image",), lambda *a: "red"))
    with pytest.raises(InvalidInput, match="question alone"):
        evaluate_vqa(model, test[:3], blind_model=model, progress=False)
    r = evaluate_vqa(model, test[:3], progress=False)  # no train split: no prior
    assert r["systems"] == ["model"] and "prior_answers" not in r


def test_prior_ties_and_unseen_types() -> None:
    prior = PriorAnswers([("color", "en", "red"), ("color", "en", "blue"), ("count", "en", "2"),
                          ("count", "en", "2"), ("color", "zh", "红色")])
    assert prior.answer("color", "en") == "blue"  # a tie: alphabetical
    assert prior.answer("shape", "en") == "2"  # never seen: the language's most frequent answer
    assert prior.answer("shape", "fr") == ""


def _speech(sid: str, text: str, lang: str) -> Sample:
    return Sample(id=sid, audio=np.zeros(800, np.float32), sample_rate=16000,
                  targets=Targets(transcript=Transcript(text, lang)))


def test_asr_rates_and_unseen_sentences() -> None:
    en = ["the red circle moves", "a big blue square", "two small green stars", "the pink cross moves"]
    zh = ["红色的圆形", "蓝色正方形", "小的星形啊"]
    test = [_speech(f"e{i}", t, "en") for i, t in enumerate(en)] + [_speech(f"z{i}", t, "zh") for i, t in enumerate(zh)]
    train = [_speech("t0", "a big  blue square", "en"), _speech("t1", "红色的圆形", "zh"), _speech("t2", "other", "en")]
    by_id = {s.id: s.targets.transcript.text for s in test if s.targets.transcript is not None}

    def hear(sid: str, prompt: str | None, lang: str | None) -> str:
        text = by_id[sid]
        return " ".join(text.split()[:-1]) if sid.startswith("e") else "黑" + text[1:]  # drop a word / a character

    r = evaluate_asr(wrap(FakeGenerator("asr", ("audio",), hear)), test, train_samples=train, progress=False)
    assert r["scores"]["all"]["en"] == {"wer": pytest.approx(0.25), "n": 4}  # one word of four, every time
    assert r["scores"]["all"]["zh"] == {"cer": pytest.approx(3 / 15), "n": 3}  # one character of five
    triples = [(by_id[s.id], hear(s.id, None, None), s.targets.transcript.lang) for s in test
               if s.targets.transcript is not None]
    assert r["scores"]["all"] == asr_report(triples)
    in_train = {"e1", "z0"}  # up to whitespace
    assert r["train_overlap"] == {"n": 7, "in_train": 2, "rate": pytest.approx(2 / 7), "train_transcripts": 3}
    assert r["scores"]["unseen"] == asr_report([t for s, t in zip(test, triples, strict=True) if s.id not in in_train])
    assert r["scores"]["in_train"] == asr_report([t for s, t in zip(test, triples, strict=True) if s.id in in_train])
    assert [p["in_train"] for p in r["predictions"]] == [s.id in in_train for s in test]
    r = evaluate_asr(wrap(FakeGenerator("asr", ("audio",), hear)), test, langs=["zh"], progress=False)
    assert list(r["scores"]) == ["all"] and list(r["scores"]["all"]) == ["zh"] and "train_overlap" not in r
