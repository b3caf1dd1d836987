"""What a generative model is asked, per sample of a data set, and what the answer should be.

- captioning: one item per sample with the model's input modality; references = every caption of that media
  (in the item's language);
- vqa: one item per question about the model's input modality; prompt = the question, references = its
  answers, ``qtype`` = the question type;
- asr: one item per sample with audio and a transcript; reference = the transcript;
- lm: one item per question (prompt = question, reference = answer): how much a text-only LM knows.

``langs`` keeps the items in those languages (None: all)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.sample import Sample
from ..errors import InvalidInput


@dataclass(frozen=True)
class GenItem:
    sample: Sample
    prompt: str | None
    references: tuple[str, ...]
    lang: str
    qtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, text: str, task: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.sample.id, "task": task, "lang": self.lang}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.qtype is not None:
            out["type"] = self.qtype
        out["text"] = text
        out["references"] = list(self.references)
        return out


def task_items(samples: Iterable[Sample], task: str, media: str | None, langs: Sequence[str] | None = None
               ) -> list[GenItem]:
    """The items of ``task`` over ``samples`` (see the module docstring); ``media``: the modality the model
    reads (None for a text-only LM)."""
    out: list[GenItem] = []
    keep = set(langs) if langs else None
    for s in samples:
        t = s.targets
        if task == "captioning":
            if media is None or getattr(s, media) is None:
                continue
            by_lang: dict[str, list[str]] = {}
            for c in t.captions_for(media):
                by_lang.setdefault(c.lang, []).append(c.text)
            for lang, refs in by_lang.items():
                if keep is None or lang in keep:
                    out.append(GenItem(s, None, tuple(refs), lang))
        elif task in ("vqa", "lm"):
            if task == "vqa" and (media is None or getattr(s, media) is None):
                continue
            for q in t.qa_for(media if task == "vqa" else None):
                if keep is None or q.lang in keep:
                    out.append(GenItem(s, q.question, q.references, q.lang, q.type))
        elif task == "asr":
            if s.audio is None or t.transcript is None:
                continue
            if keep is None or t.transcript.lang in keep:
                out.append(GenItem(s, None, (t.transcript.text,), t.transcript.lang))
        else:
            raise InvalidInput(f"unknown generation task {task!r} (known: captioning, vqa, asr, lm)", field="task")
    return out


__all__ = ["GenItem", "task_items"]
