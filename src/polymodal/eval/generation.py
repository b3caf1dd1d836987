"""Evaluate a generative run on a data set split, each task beside its baselines (`gen_baselines`):

- `evaluate_captioning`: BLEU-1..4, ROUGE-L, CIDEr-D (+ METEOR with Java) per language (`text_metrics`), for the
  model and the nearest-neighbour caption of a retrieval model; on `shapes` pictures, the attribute accuracy of
  the captions read back into the scene graph (`caption_parse`), over seen and held-out color+shape pairs;
- `evaluate_vqa`: VQA accuracy (`vqa_metrics`: VQA normalisation, VQAv2 soft accuracy with several answers)
  overall, per question type, per language and over seen/held-out scenes, for the model, the prior answer
  and a blind (question-only) model;
- `evaluate_asr`: WER (English) and CER (Mandarin) as jiwer defines them (`asr_metrics`), over every test
  utterance and over those whose sentence never occurs among the training transcripts.

Each returns a JSON-able dict; ``predictions`` holds one dict per item (`GenItem.to_json` plus the baselines'
outputs), which ``polymodal eval --out`` writes as JSONL. Generation shows a tqdm bar (with the time left) on
stderr; ``speed`` reports items/s and generated tokens/s (the output texts re-tokenized with the model's own
tokenizer, so the end token is not counted; whitespace words for a model without one).

Languages: a model that writes a fixed set of languages (``model.model.langs``, e.g. a captioner's) is scored
on those by default, and a captioner with several gets each item's language (its language tag)."""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from tqdm import tqdm

from ..data.collate import collate
from ..data.sample import Sample
from ..errors import InvalidInput
from ..lm.decoding import DecodingOptions
from ..models.gen_batch import SEP_TEXT
from ..models.generative import MAX_BATCH, GenerativeModel
from .asr_metrics import asr_report
from .caption_parse import attribute_report
from .gen_baselines import PriorAnswers, nearest_captions, normalize_sentence, train_transcripts
from .gen_items import GenItem, task_items
from .tasks import EmbeddingModel
from .text_metrics import caption_scores
from .vqa_metrics import vqa_accuracy

CAPTION_LANGS = ("en", "zh")  # what the caption metrics and the caption parser read


# ----------------------------------------------------------------------------------------------- decoding

def model_langs(model: GenerativeModel) -> list[str] | None:
    """The languages the model writes when it has a fixed set (``langs`` of the wrapped generator), else None."""
    langs = getattr(model.model, "langs", None)
    return [str(x) for x in langs] if isinstance(langs, list | tuple) and langs else None


def _langs(model: GenerativeModel, langs: Sequence[str] | None) -> list[str] | None:
    writes = model_langs(model)
    if not langs:
        return writes
    bad = [x for x in langs if writes is not None and x not in writes]
    if bad:
        raise InvalidInput(f"this model writes {', '.join(writes or [])}, not {bad[0]}", field="--lang")
    return list(langs)


def _inputs(model: GenerativeModel, items: Sequence[GenItem]) -> tuple[list[Sample], list[str | None] | None]:
    """(samples, prompts) for a batch of items. A model that reads no modality (a language model, a blind VQA
    model) gets the question alone, as `GenerativeModel.samples` builds it; a language model asks for the
    answer with the separator after the question."""
    if model.task == "chat":  # a multimodal LLM: the question where there is one, else (captioning) none
        return [it.sample for it in items], [it.prompt for it in items]
    if not model.needs_prompt:
        return [it.sample for it in items], None
    prompts: list[str | None] = []
    for it in items:
        if it.prompt is None:
            raise InvalidInput(f"item {it.sample.id} has no question for this {model.task} model", field="prompt")
        prompts.append(it.prompt + SEP_TEXT if model.task == "lm" else it.prompt)
    if model.modalities:
        return [it.sample for it in items], prompts
    return [Sample(id=it.sample.id, text=p, source=it.sample.source) for it, p in zip(items, prompts, strict=True)
            ], prompts


def _generate(model: GenerativeModel, samples: list[Sample], prompts: list[str | None] | None,
              options: DecodingOptions, lang: str | None) -> list[str]:
    size = max(1, min(len(samples), MAX_BATCH))
    if lang is None:
        return model.generate_samples(samples, prompts, options, batch_size=size)
    run: Any = model.generate_samples
    if "lang" in inspect.signature(run).parameters:
        return list(run(samples, prompts, options, batch_size=size, lang=lang))
    generate: Any = model.model.generate  # the generator's own language switch (e.g. the captioner's tags)
    with torch.no_grad():
        return list(generate(collate(samples, model.transform).to(model.device), prompts, options, None, lang=lang))


def decode_items(model: GenerativeModel, items: Sequence[GenItem], options: DecodingOptions | None = None, *,
                 batch_size: int = 16, progress: bool = True, desc: str = "generating"
                 ) -> tuple[list[str], dict[str, Any]]:
    """The model's text for every item (in order) and the speed: ``{"items", "seconds", "items_per_s",
    "tokens", "tokens_per_s", "counted"}``."""
    options = options or DecodingOptions()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"batch_size must be an integer >= 1, got {batch_size!r}", field="--batch-size")
    writes = model_langs(model)
    by_lang = writes is not None and len(writes) > 1 and "lang" in inspect.signature(model.model.generate).parameters
    groups: dict[str | None, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.lang if by_lang else None, []).append(i)
    out = [""] * len(items)
    t0 = time.perf_counter()
    with tqdm(total=len(items), desc=desc, unit="item", file=sys.stderr, disable=not progress) as bar:
        for lang, idx in groups.items():
            for lo in range(0, len(idx), batch_size):
                part = idx[lo:lo + batch_size]
                samples, prompts = _inputs(model, [items[i] for i in part])
                for i, text in zip(part, _generate(model, samples, prompts, options, lang), strict=True):
                    out[i] = text
                bar.update(len(part))
    return out, _speed(model, out, time.perf_counter() - t0)


def _speed(model: GenerativeModel, texts: Sequence[str], seconds: float) -> dict[str, Any]:
    tok = getattr(model.model, "tokenizer", None)
    count: Callable[[str], int] = (lambda t: len(tok.encode(t))) if tok is not None else (lambda t: len(t.split()))
    tokens = sum(count(t) for t in texts)
    s = max(seconds, 1e-9)
    return {"items": len(texts), "seconds": round(seconds, 4), "items_per_s": len(texts) / s, "tokens": tokens,
            "tokens_per_s": tokens / s, "counted": "tokenizer" if tok is not None else "words"}


def _check_task(model: GenerativeModel, allowed: Sequence[str], task: str) -> None:
    if model.task not in allowed:
        raise InvalidInput(f"a {model.task} model cannot be evaluated with --task {task}", field="--task")


def _heldout(sample: Sample) -> bool | None:
    value = sample.metadata.get("heldout")
    return bool(value) if isinstance(value, bool) else None


# ----------------------------------------------------------------------------------------------- captioning

def _scene(sample: Sample) -> tuple[list[Mapping[str, Any]], str | None] | None:
    """(objects, relation) of a `shapes` scene graph in the metadata, None for other data."""
    objects = sample.metadata.get("objects")
    keys = ("color", "shape", "size", "position")
    if not isinstance(objects, list) or not objects or not all(
            isinstance(o, Mapping) and all(k in o for k in keys) for o in objects):
        return None
    relation = sample.metadata.get("relation")
    return list(objects), relation if isinstance(relation, str) else None


def evaluate_captioning(model: GenerativeModel, samples: Sequence[Sample], *,
                        train_samples: Iterable[Sample] | None = None, retrieval_model: EmbeddingModel | None = None,
                        langs: Sequence[str] | None = None, options: DecodingOptions | None = None,
                        batch_size: int = 16, progress: bool = True, meteor: bool | None = None) -> dict[str, Any]:
    """Caption every sample with the model's input (one item per language of its references) and score it.

    ``retrieval_model`` + ``train_samples``: the nearest training caption as the baseline. ``meteor``: as
    `caption_scores` (None: when Java is present, English only). Returns ``{"media", "n_items", "systems",
    "scores": {lang: {"n", system: {metric: value}}}, "attributes": {system: {"overall"|"seen"|"heldout":
    {"n", "color", "shape", "size", "position", "relation", "all"}}}`` (shapes pictures only), ``"speed",
    "decoding", "predictions"}``."""
    _check_task(model, ("captioning", "chat"), "captioning")
    media = model.modalities[0]
    items = task_items(samples, "captioning", media, _langs(model, langs))
    if not items:
        raise InvalidInput(f"the data has no {media} captions (targets) to score against", field="--data")
    options = options or DecodingOptions()
    texts, speed = decode_items(model, items, options, batch_size=batch_size, progress=progress, desc="captioning")
    systems: dict[str, list[str]] = {"model": texts}
    if retrieval_model is not None:
        if train_samples is None:
            raise InvalidInput("the retrieval baseline retrieves training captions: give the train split",
                               field="--train-split")
        systems["retrieval"] = nearest_captions(retrieval_model, items, train_samples, media, progress=progress)
    scores: dict[str, dict[str, Any]] = {}
    for lang in sorted({it.lang for it in items}):
        idx = [i for i, it in enumerate(items) if it.lang == lang]
        refs = {str(i): list(items[i].references) for i in idx}
        row: dict[str, Any] = {"n": len(idx)}
        for name, hyps in systems.items():
            row[name] = caption_scores(refs, {str(i): hyps[i] for i in idx}, lang=lang, meteor=meteor)
        scores[lang] = row
    out: dict[str, Any] = {"media": media, "n_items": len(items), "systems": list(systems), "scores": scores}
    scenes = {i: sc for i, it in enumerate(items)
              if media == "image" and it.lang in CAPTION_LANGS and (sc := _scene(it.sample)) is not None}
    if scenes:
        out["attributes"] = {name: attribute_report((hyps[i], objs, rel, items[i].lang)
                                                    for i, (objs, rel) in scenes.items())
                             for name, hyps in systems.items()}
    out.update(speed=speed, decoding=options.to_dict())
    out["predictions"] = [_prediction(it, "captioning", {name: hyps[i] for name, hyps in systems.items()})
                          for i, it in enumerate(items)]
    return out


def _prediction(item: GenItem, task: str, outputs: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    row = item.to_json(outputs["model"], task)
    row.update({k: v for k, v in outputs.items() if k != "model"})
    row.update(extra)
    heldout = _heldout(item.sample)
    if heldout is not None:
        row["heldout"] = heldout
    return row


# ----------------------------------------------------------------------------------------------- VQA

def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _rows(groups: Mapping[str, Sequence[int]], acc: Mapping[str, Sequence[float]]) -> dict[str, dict[str, Any]]:
    return {g: {"n": len(idx), **{name: _mean([a[i] for i in idx]) for name, a in acc.items()}}
            for g, idx in groups.items() if idx}


def evaluate_vqa(model: GenerativeModel, samples: Sequence[Sample], *, train_samples: Iterable[Sample] | None = None,
                 blind_model: GenerativeModel | None = None, langs: Sequence[str] | None = None,
                 options: DecodingOptions | None = None, batch_size: int = 16, progress: bool = True
                 ) -> dict[str, Any]:
    """Answer every question about the model's input (a text-only LM: every question) and score the answers.

    Baselines: ``train_samples`` -> the prior answer per (question type, language); ``blind_model`` (a run that
    reads no modality) -> its answers to the same questions. Returns ``{"media", "n_items", "systems",
    "accuracy": {"overall": row, "per_type": {type: row}, "per_lang": {lang: row}, "seen": row, "heldout":
    row}`` with ``row = {"n", system: accuracy}`` (seen/heldout when the samples carry ``metadata["heldout"]``),
    ``"prior_answers": {lang: {type: answer}}, "speed": {system: ...}, "decoding", "predictions"}``."""
    _check_task(model, ("vqa", "lm", "chat"), "vqa")
    media = model.modalities[0] if model.modalities else None
    items = task_items(samples, "vqa" if media else "lm", media, _langs(model, langs))
    if not items:
        raise InvalidInput(f"the data has no questions (targets) about the {media or 'text'}", field="--data")
    options = options or DecodingOptions()
    texts, speed = decode_items(model, items, options, batch_size=batch_size, progress=progress, desc="answering")
    systems: dict[str, list[str]] = {"model": texts}
    speeds = {"model": speed}
    out: dict[str, Any] = {"media": media or "text", "n_items": len(items)}
    if train_samples is not None:
        prior = PriorAnswers.from_samples(train_samples, media)
        if prior.n:
            systems["prior"] = [prior.answer(it.qtype, it.lang) for it in items]
            out["prior_answers"] = prior.to_dict()
    if blind_model is not None:
        if blind_model.modalities or blind_model.task not in ("vqa", "lm"):
            raise InvalidInput(f"the blind baseline must answer from the question alone (an lm run, or a vqa run "
                               f"with blind: true); this {blind_model.task} model reads "
                               f"{', '.join(blind_model.modalities)}", field="--blind")
        systems["blind"], speeds["blind"] = decode_items(blind_model, items, options, batch_size=batch_size,
                                                         progress=progress, desc="blind baseline")
    acc = {name: [vqa_accuracy(p, it.references) for p, it in zip(preds, items, strict=True)]
           for name, preds in systems.items()}
    by_type: dict[str, list[int]] = {}
    by_lang: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_type.setdefault(it.qtype or "other", []).append(i)
        by_lang.setdefault(it.lang, []).append(i)
    accuracy: dict[str, Any] = {"overall": _rows({"all": range(len(items))}, acc)["all"],
                                "per_type": _rows(dict(sorted(by_type.items())), acc),
                                "per_lang": _rows(dict(sorted(by_lang.items())), acc)}
    flags = [_heldout(it.sample) for it in items]
    if any(f is not None for f in flags):
        accuracy.update(_rows({"seen": [i for i, f in enumerate(flags) if f is False],
                               "heldout": [i for i, f in enumerate(flags) if f]}, acc))
    out.update(systems=list(systems), accuracy=accuracy, speed=speeds, decoding=options.to_dict())
    out["predictions"] = [_prediction(it, "vqa", {n: s[i] for n, s in systems.items()}, accuracy=acc["model"][i])
                          for i, it in enumerate(items)]
    return out


# ----------------------------------------------------------------------------------------------- ASR

def evaluate_asr(model: GenerativeModel, samples: Sequence[Sample], *, train_samples: Iterable[Sample] | None = None,
                 langs: Sequence[str] | None = None, options: DecodingOptions | None = None, batch_size: int = 16,
                 progress: bool = True) -> dict[str, Any]:
    """Transcribe every sample with audio and a transcript; WER (space-delimited languages) / CER (Chinese).

    With ``train_samples``: ``train_overlap`` (how many test transcripts occur verbatim, up to whitespace, among
    the training transcripts) and the rates over the ``unseen`` sentences and the ``in_train`` ones. Returns
    ``{"n_items", "scores": {"all"|"unseen"|"in_train": {lang: {"wer"|"cer", "n"}}}, "train_overlap": {"n",
    "in_train", "rate", "train_transcripts"}, "speed", "decoding", "predictions"}``."""
    _check_task(model, ("asr",), "asr")
    items = task_items(samples, "asr", "audio", _langs(model, langs))
    if not items:
        raise InvalidInput("the data has no audio with a transcript (targets) to score against", field="--data")
    options = options or DecodingOptions()
    texts, speed = decode_items(model, items, options, batch_size=batch_size, progress=progress, desc="transcribing")
    triples = [(it.references[0], text, it.lang) for it, text in zip(items, texts, strict=True)]
    scores: dict[str, Any] = {"all": asr_report(triples)}
    out: dict[str, Any] = {"n_items": len(items), "systems": ["model"], "scores": scores}
    seen: list[bool] | None = None
    if train_samples is not None:
        heard = train_transcripts(train_samples)
        seen = [normalize_sentence(it.references[0]) in heard for it in items]
        out["train_overlap"] = {"n": len(items), "in_train": sum(seen), "rate": sum(seen) / len(items),
                                "train_transcripts": len(heard)}
        for name, keep in (("unseen", False), ("in_train", True)):
            part = [t for t, s in zip(triples, seen, strict=True) if s is keep]
            if part:
                scores[name] = asr_report(part)
    out.update(speed=speed, decoding=options.to_dict())
    out["predictions"] = [_prediction(it, "asr", {"model": texts[i]},
                                      **({} if seen is None else {"in_train": seen[i]}))
                          for i, it in enumerate(items)]
    return out


__all__ = ["decode_items", "evaluate_asr", "evaluate_captioning", "evaluate_vqa", "model_langs"]
