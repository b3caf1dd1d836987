"""Baselines that put a generative model's numbers in context (a number alone says little):

- captioning: the nearest-neighbour caption. An embedding model (an alignment run or a pretrained CLIP-like
  checkpoint) embeds each test image (or clip) and every distinct training caption of the same medium and
  language; the most similar caption is the prediction. It can only repeat what training said, so it cannot
  describe an unseen color+shape combination: the gap on held-out scenes is what generation adds;
- VQA: the prior answer, the most frequent training answer of the question's (type, language) (ties: the
  alphabetically first answer), which needs neither image nor question wording; and a blind model (a
  question-only run) answering the same questions without the picture;
- ASR: the training transcripts, to tell test utterances whose sentence was heard in training from new ones.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ..data.sample import Sample
from ..errors import InvalidInput
from .gen_items import GenItem
from .tasks import EmbeddingModel, model_input

EMBED_CHUNK = 256  # inputs per embed call (a progress step)


# ----------------------------------------------------------------------------------------------- VQA prior

class PriorAnswers:
    """The most frequent training answer per (question type, language); for a (type, language) never seen in
    training, the language's most frequent answer (and "" for a language never seen)."""

    def __init__(self, pairs: Iterable[tuple[str, str, str]]):
        by_type: dict[tuple[str, str], Counter[str]] = {}
        by_lang: dict[str, Counter[str]] = {}
        for qtype, lang, answer in pairs:
            by_type.setdefault((qtype, lang), Counter())[answer] += 1
            by_lang.setdefault(lang, Counter())[answer] += 1
        self.by_type = {k: _most_frequent(c) for k, c in by_type.items()}
        self.by_lang = {k: _most_frequent(c) for k, c in by_lang.items()}
        self.n = sum(sum(c.values()) for c in by_lang.values())

    @classmethod
    def from_samples(cls, samples: Iterable[Sample], media: str | None) -> PriorAnswers:
        """From the questions of ``samples`` about ``media`` (None: every question, for a text-only LM)."""
        return cls((q.type, q.lang, q.answer) for s in samples for q in s.targets.qa_for(media))

    def answer(self, qtype: str | None, lang: str) -> str:
        got = self.by_type.get((qtype or "other", lang))
        return got if got is not None else self.by_lang.get(lang, "")

    def to_dict(self) -> dict[str, dict[str, str]]:
        """{language: {type: answer}} (for the report)."""
        out: dict[str, dict[str, str]] = {}
        for (qtype, lang), answer in sorted(self.by_type.items()):
            out.setdefault(lang, {})[qtype] = answer
        return out


def _most_frequent(counts: Counter[str]) -> str:
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


# ----------------------------------------------------------------------------------------------- captions

def train_captions(samples: Iterable[Sample], media: str, langs: Iterable[str]) -> dict[str, list[str]]:
    """{language: distinct captions of ``media`` in first-seen order} of the training samples."""
    wanted = set(langs)
    seen: dict[str, dict[str, None]] = {lang: {} for lang in wanted}
    for s in samples:
        for c in s.targets.captions_for(media):
            if c.lang in wanted:
                seen[c.lang].setdefault(c.text, None)
    return {lang: list(texts) for lang, texts in seen.items()}


def _embed(model: EmbeddingModel, modality: str, inputs: Sequence[object], bar: tqdm | None) -> np.ndarray:
    parts = []
    for lo in range(0, len(inputs), EMBED_CHUNK):
        chunk = list(inputs[lo:lo + EMBED_CHUNK])
        parts.append(np.asarray(model.embed(**{modality: chunk}), dtype=np.float32))
        if bar is not None:
            bar.update(len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)


def nearest_captions(model: EmbeddingModel, items: Sequence[GenItem], train_samples: Iterable[Sample], media: str,
                     *, progress: bool = False) -> list[str]:
    """The training caption (same medium and language) nearest to each item's input, by cosine similarity of
    the model's normalised embeddings (ties: the caption seen first in training)."""
    for m in (media, "text"):
        if m not in model.modalities:
            raise InvalidInput(f"the retrieval baseline model embeds {', '.join(model.modalities)}; it needs "
                               f"{media} and text", field="--baseline-model")
    langs = sorted({it.lang for it in items})
    gallery = train_captions(train_samples, media, langs)
    empty = [lang for lang in langs if not gallery[lang]]
    if empty:
        raise InvalidInput(f"the training split has no {empty[0]} captions of the {media} to retrieve from",
                           field="--train-split")
    rows: dict[str, int] = {}  # sample id -> row of its embedding
    inputs: list[object] = []
    for it in items:
        if it.sample.id not in rows:
            rows[it.sample.id] = len(inputs)
            inputs.append(model_input(it.sample, media))
    total = len(inputs) + sum(len(v) for v in gallery.values())
    bar = tqdm(total=total, desc="retrieval baseline", unit="item", file=sys.stderr) if progress else None
    try:
        queries = _embed(model, media, inputs, bar)
        keys = {lang: _embed(model, "text", texts, bar) for lang, texts in gallery.items()}
    finally:
        if bar is not None:
            bar.close()
    best: dict[str, np.ndarray] = {}  # lang -> best caption per query row
    for lang in langs:
        wanted = sorted({rows[it.sample.id] for it in items if it.lang == lang})
        pick = np.zeros(len(inputs), dtype=np.int64)
        for lo in range(0, len(wanted), EMBED_CHUNK):
            part = wanted[lo:lo + EMBED_CHUNK]
            sims = queries[part].astype(np.float64) @ keys[lang].T.astype(np.float64)
            pick[part] = np.argmax(sims, axis=1)  # first maximum: the earliest caption wins ties
        best[lang] = pick
    return [gallery[it.lang][int(best[it.lang][rows[it.sample.id]])] for it in items]


# ----------------------------------------------------------------------------------------------- ASR

def normalize_sentence(text: str) -> str:
    """What "the same sentence" means for the train/test overlap: equal after collapsing whitespace."""
    return " ".join(text.split())


def train_transcripts(samples: Iterable[Sample]) -> set[str]:
    """The (whitespace-normalised) transcripts of the training samples."""
    return {normalize_sentence(s.targets.transcript.text) for s in samples if s.targets.transcript is not None}


__all__ = ["PriorAnswers", "nearest_captions", "normalize_sentence", "train_captions", "train_transcripts"]
