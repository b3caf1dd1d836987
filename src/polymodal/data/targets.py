"""What a generator should produce for a sample: reference captions, question/answer pairs, a transcript, a
dialog, and conversations about the sample (instruction tuning of the multimodal LLMs). First-class fields of `Sample` (``sample.targets``),
not metadata, so formats carry them, ``data inspect`` counts them and every generative model reads them the
same way.

Every item names its language (``"en"``, ``"zh"``, ...) and the modality it is about (``media``: ``"image"``,
``"video"``, ``"audio"``): a shapes scene has captions of its picture and of its clip, and "which way does the
green cross move?" can only be answered from the clip. JSON shape (``Targets.to_dict`` / ``from_dict``)::

    {"captions": [{"text": "A red circle on the left.", "lang": "en", "media": "image"}, ...],
     "qa": [{"question": "What color is the circle?", "answer": "red", "type": "color",
             "lang": "en", "media": "image", "answers": ["red", ...]}, ...],
     "transcript": {"text": "A red circle on the left.", "lang": "en"},
     "dialog": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "conversations": [{"lang": "en", "media": "image", "spoken": false, "kind": "instruct",
                        "turns": [{"role": "user", "content": "How many stars are there?"},
                                  {"role": "assistant", "content": "There is 1 star.", "skill": "count",
                                   "answer": "1", "template": "count/0"}, ...]}, ...]}

Empty parts are left out of the JSON. ``answers`` (optional) holds several human answers, for the VQAv2
soft accuracy; without it the single ``answer`` is the reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput

MEDIA: tuple[str, ...] = ("audio", "image", "text", "video")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
KEYS: tuple[str, ...] = ("captions", "qa", "transcript", "dialog", "conversations")
CONVERSATION_KINDS: tuple[str, ...] = ("instruct", "pope")


def _text(value: Any, where: str, source: str | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"expected a non-empty string, got {value!r}", field=where, source=source)
    return value


def _lang(value: Any, where: str, source: str | None) -> str:
    if not isinstance(value, str) or not value or len(value) > 16 or not value.replace("-", "").isalnum():
        raise InvalidInput(f"expected a language code such as 'en' or 'zh', got {value!r}", field=where,
                           source=source)
    return value


def _media(value: Any, where: str, source: str | None) -> str:
    if value not in MEDIA:
        raise InvalidInput(f"expected one of {list(MEDIA)}, got {value!r}", field=where, source=source)
    return str(value)


def _object(obj: Any, allowed: Sequence[str], where: str, source: str | None) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"expected a JSON object, got {type(obj).__name__}", field=where, source=source)
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise InvalidInput(f"unknown key {unknown[0]!r} (known: {', '.join(allowed)})",
                           field=f"{where}.{unknown[0]}", source=source)
    return obj


@dataclass(frozen=True)
class Caption:
    text: str
    lang: str = "en"
    media: str = "image"

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "lang": self.lang, "media": self.media}

    @classmethod
    def from_dict(cls, obj: Any, where: str = "targets.captions[0]", source: str | None = None) -> Caption:
        o = _object(obj, ("text", "lang", "media"), where, source)
        return cls(_text(o.get("text"), f"{where}.text", source), _lang(o.get("lang", "en"), f"{where}.lang", source),
                   _media(o.get("media", "image"), f"{where}.media", source))


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    type: str = "other"  # question type, for per-type accuracy and the prior baseline
    lang: str = "en"
    media: str = "image"
    answers: tuple[str, ...] = ()  # several reference answers (VQAv2 soft accuracy); () -> (answer,)

    @property
    def references(self) -> tuple[str, ...]:
        return self.answers or (self.answer,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"question": self.question, "answer": self.answer, "type": self.type,
                               "lang": self.lang, "media": self.media}
        if self.answers:
            out["answers"] = list(self.answers)
        return out

    @classmethod
    def from_dict(cls, obj: Any, where: str = "targets.qa[0]", source: str | None = None) -> QA:
        o = _object(obj, ("question", "answer", "type", "lang", "media", "answers"), where, source)
        answers = o.get("answers", [])
        if not isinstance(answers, list):
            raise InvalidInput(f"expected a list of strings, got {type(answers).__name__}", field=f"{where}.answers",
                               source=source)
        return cls(_text(o.get("question"), f"{where}.question", source),
                   _text(o.get("answer"), f"{where}.answer", source),
                   _text(o.get("type", "other"), f"{where}.type", source),
                   _lang(o.get("lang", "en"), f"{where}.lang", source),
                   _media(o.get("media", "image"), f"{where}.media", source),
                   tuple(_text(a, f"{where}.answers[{i}]", source) for i, a in enumerate(answers)))


@dataclass(frozen=True)
class Transcript:
    text: str
    lang: str = "en"

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "lang": self.lang}

    @classmethod
    def from_dict(cls, obj: Any, where: str = "targets.transcript", source: str | None = None) -> Transcript:
        o = _object(obj, ("text", "lang"), where, source)
        return cls(_text(o.get("text"), f"{where}.text", source), _lang(o.get("lang", "en"), f"{where}.lang", source))


_TURN_EXTRAS: tuple[str, ...] = ("skill", "answer", "template")


@dataclass(frozen=True)
class Turn:
    """One message. On an assistant turn ``skill`` says what it tests, ``answer`` is the canonical short answer
    scored for it (``content`` may be a whole sentence) and ``template`` is the id of the instruction phrasing
    the user turn before it was written from (``"count/2"``; POPE probes: ``"pope/adversarial"``). All three
    are optional."""

    role: str
    content: str
    skill: str | None = None
    answer: str | None = None
    template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        out.update({k: v for k in _TURN_EXTRAS if (v := getattr(self, k)) is not None})
        return out

    @classmethod
    def from_dict(cls, obj: Any, where: str = "targets.dialog[0]", source: str | None = None) -> Turn:
        o = _object(obj, ("role", "content", *_TURN_EXTRAS), where, source)
        role = o.get("role")
        if role not in ROLES:
            raise InvalidInput(f"expected one of {list(ROLES)}, got {role!r}", field=f"{where}.role", source=source)
        extras = {k: None if o.get(k) is None else _text(o[k], f"{where}.{k}", source) for k in _TURN_EXTRAS}
        return cls(str(role), _text(o.get("content"), f"{where}.content", source), **extras)


def _check_turns(turns: Any, where: str, source: str | None) -> None:
    """An optional leading system turn, then user/assistant alternating, ending with an assistant turn."""
    if not isinstance(turns, tuple) or not all(isinstance(t, Turn) for t in turns):
        raise InvalidInput("expected a tuple of Turn", field=f"{where}.turns", source=source)
    start = 1 if turns and turns[0].role == "system" else 0
    for i, t in enumerate(turns[start:], start):
        expected = ("user", "assistant")[(i - start) % 2]
        if t.role != expected:
            raise InvalidInput(f"expected a {expected} turn (after an optional system turn, user and assistant "
                               f"alternate), got {t.role!r}", field=f"{where}.turns[{i}].role", source=source)
    if len(turns) - start < 2 or turns[-1].role != "assistant":
        raise InvalidInput("a conversation needs at least one user turn and must end with an assistant turn",
                           field=f"{where}.turns", source=source)


@dataclass(frozen=True)
class Conversation:
    """A conversation about the sample's ``media`` in language ``lang``. ``spoken``: the first user turn is
    also the sample's ``audio`` (a spoken question). ``kind``: ``"instruct"`` (instruction tuning) or
    ``"pope"`` (yes/no probes about present and absent objects)."""

    lang: str
    turns: tuple[Turn, ...]
    media: str = "image"
    spoken: bool = False
    kind: str = "instruct"

    def __post_init__(self) -> None:
        _check_turns(self.turns, "conversation", None)
        if not isinstance(self.spoken, bool):
            raise InvalidInput(f"expected true or false, got {self.spoken!r}", field="conversation.spoken")
        if self.kind not in CONVERSATION_KINDS:
            raise InvalidInput(f"expected one of {list(CONVERSATION_KINDS)}, got {self.kind!r}",
                               field="conversation.kind")

    def to_dict(self) -> dict[str, Any]:
        return {"lang": self.lang, "media": self.media, "spoken": self.spoken, "kind": self.kind,
                "turns": [t.to_dict() for t in self.turns]}

    @classmethod
    def from_dict(cls, obj: Any, where: str = "targets.conversations[0]", source: str | None = None
                  ) -> Conversation:
        o = _object(obj, ("lang", "media", "spoken", "kind", "turns"), where, source)
        items = o.get("turns")
        if not isinstance(items, list):
            raise InvalidInput(f"expected a list, got {type(items).__name__}", field=f"{where}.turns", source=source)
        turns = tuple(Turn.from_dict(t, f"{where}.turns[{i}]", source) for i, t in enumerate(items))
        _check_turns(turns, where, source)
        spoken, kind = o.get("spoken", False), o.get("kind", "instruct")
        if not isinstance(spoken, bool):
            raise InvalidInput(f"expected true or false, got {spoken!r}", field=f"{where}.spoken", source=source)
        if kind not in CONVERSATION_KINDS:
            raise InvalidInput(f"expected one of {list(CONVERSATION_KINDS)}, got {kind!r}", field=f"{where}.kind",
                               source=source)
        return cls(_lang(o.get("lang"), f"{where}.lang", source), turns,
                   _media(o.get("media", "image"), f"{where}.media", source), spoken, str(kind))


@dataclass(frozen=True)
class Targets:
    """A sample's generation targets; every part may be empty."""

    captions: tuple[Caption, ...] = ()
    qa: tuple[QA, ...] = ()
    transcript: Transcript | None = None
    dialog: tuple[Turn, ...] = ()
    conversations: tuple[Conversation, ...] = ()

    def __post_init__(self) -> None:
        for name, kind in (("captions", Caption), ("qa", QA), ("dialog", Turn), ("conversations", Conversation)):
            items = getattr(self, name)
            if not isinstance(items, tuple) or not all(isinstance(x, kind) for x in items):
                raise InvalidInput(f"expected a tuple of {kind.__name__}", field=f"targets.{name}")
        if self.transcript is not None and not isinstance(self.transcript, Transcript):
            raise InvalidInput("expected a Transcript or None", field="targets.transcript")

    def __bool__(self) -> bool:
        return bool(self.captions or self.qa or self.transcript is not None or self.dialog or self.conversations)

    def captions_for(self, media: str = "image", lang: str | None = None) -> list[Caption]:
        return [c for c in self.captions if c.media == media and (lang is None or c.lang == lang)]

    def qa_for(self, media: str | None = None, lang: str | None = None) -> list[QA]:
        return [q for q in self.qa if (media is None or q.media == media) and (lang is None or q.lang == lang)]

    def counts(self) -> dict[str, int]:
        return {"captions": len(self.captions), "qa": len(self.qa),
                "transcript": int(self.transcript is not None), "dialog": len(self.dialog),
                "conversations": len(self.conversations)}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.captions:
            out["captions"] = [c.to_dict() for c in self.captions]
        if self.qa:
            out["qa"] = [q.to_dict() for q in self.qa]
        if self.transcript is not None:
            out["transcript"] = self.transcript.to_dict()
        if self.dialog:
            out["dialog"] = [t.to_dict() for t in self.dialog]
        if self.conversations:
            out["conversations"] = [c.to_dict() for c in self.conversations]
        return out

    @classmethod
    def from_dict(cls, obj: Any, source: str | None = None) -> Targets:
        if obj is None:
            return cls()
        o = _object(obj, KEYS, "targets", source)
        lists = {}
        for key in ("captions", "qa", "dialog", "conversations"):
            items = o.get(key, [])
            if not isinstance(items, list):
                raise InvalidInput(f"expected a list, got {type(items).__name__}", field=f"targets.{key}", source=source)
            lists[key] = items
        transcript = o.get("transcript")
        return cls(
            captions=tuple(Caption.from_dict(c, f"targets.captions[{i}]", source) for i, c in enumerate(lists["captions"])),
            qa=tuple(QA.from_dict(q, f"targets.qa[{i}]", source) for i, q in enumerate(lists["qa"])),
            transcript=None if transcript is None else Transcript.from_dict(transcript, source=source),
            dialog=tuple(Turn.from_dict(t, f"targets.dialog[{i}]", source) for i, t in enumerate(lists["dialog"])),
            conversations=tuple(Conversation.from_dict(c, f"targets.conversations[{i}]", source)
                                for i, c in enumerate(lists["conversations"])),
        )


EMPTY = Targets()


def targets_field(value: Any, source: str | None) -> Targets:
    """``Sample.targets`` accepts a `Targets`, its JSON dict, or None (no targets)."""
    if value is None:
        return EMPTY
    if isinstance(value, Targets):
        return value
    if isinstance(value, Mapping):
        return Targets.from_dict(value, source)
    raise InvalidInput(f"expected Targets or a JSON object, got {type(value).__name__}", field="targets", source=source)


__all__ = ["CONVERSATION_KINDS", "EMPTY", "KEYS", "MEDIA", "QA", "Caption", "Conversation", "Targets", "Transcript",
           "Turn", "targets_field"]
