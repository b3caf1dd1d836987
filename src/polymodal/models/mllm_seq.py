"""The token layout of ``arch: "mllm"`` sequences, shared by training, generation and chat.

A sequence is ``<s>`` then one or more *segments*; a segment is an optional picture followed by turns::

    <s> [IMG]*K  user text <sep> assistant text </s>  user text <sep> assistant text </s>  [IMG]*K  user ...

``[IMG]`` is the picture's placeholder: ``K`` slots that the bridge fills with soft tokens (LLaVA: one per patch;
BLIP-2: one per query) or, for Flamingo, a single marker token whose position tells the text after it which
picture its cross-attention reads. The placeholder is the LM's last vocabulary row (never a trained token; it is
suppressed in generation). Training predicts every assistant token and its ``</s>``; a generation prompt ends
with the last user turn's ``<sep>``. A system message is put before the first user turn's text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InvalidInput
from ..lm.tokenizer import BOS, EOS, PAD, SEP, TextTokenizer
from .generator import pad_sequences

CAPTION_PROMPT = {"en": "Write a caption for the picture.", "zh": "为这张图片写一句说明。"}


@dataclass
class Segment:
    """An optional picture (an index into the pictures of the batch) and the turns about it; the last turn's
    answer is None in a generation prompt."""

    image: int | None
    turns: list[tuple[str, str | None]] = field(default_factory=list)
    audio: int | None = None  # a spoken question: an index into the batch's audio clips (before the turns)


@dataclass
class Encoded:
    ids: list[int]
    targets: list[bool]  # targets[t]: token t is predicted (an assistant token or its </s>)
    images: list[int]  # the pictures of the sequence, in order
    audio: list[int] = field(default_factory=list)  # its audio clips, in order


def conversation_turns(turns: Sequence[Any]) -> list[tuple[str, str]]:
    """(user, assistant) pairs of a conversation's turns; a system turn goes before the first user text."""
    out: list[tuple[str, str]] = []
    system = ""
    user: str | None = None
    for t in turns:
        if t.role == "system":
            system = t.content
        elif t.role == "user":
            user = f"{system}\n{t.content}" if system and not out else t.content
        elif user is not None:
            out.append((user, t.content))
            user = None
    return out


def sample_sequences(targets: Any, metadata: Mapping[str, Any], *, kinds: Sequence[str], langs: Sequence[str],
                     qa_types: Sequence[str] | None, state: bool, audio: bool
                     ) -> list[tuple[str, list[tuple[str, str]], bool]]:
    """(lang, turns, spoken) of every target sequence a sample gives: captions (the answer to `CAPTION_PROMPT`),
    question answering (``state``: the question is ``metadata["prompt_state"]``, the scene as text) and
    conversations (``audio``: a spoken conversation's first question is the sample's audio, its text not shown)."""
    out: list[tuple[str, list[tuple[str, str]], bool]] = []
    if "captions" in kinds:
        out += [(x.lang, [(CAPTION_PROMPT.get(x.lang, CAPTION_PROMPT["en"]), x.text)], False)
                for x in targets.captions if x.media == "image" and x.lang in langs]
    if "qa" in kinds:
        for q in targets.qa:
            if q.media != "image" or q.lang not in langs or (qa_types is not None and q.type not in qa_types):
                continue
            question = q.question
            if state:
                question = str(metadata.get("prompt_state") or "")
                if not question:
                    raise InvalidInput("input 'state' reads metadata['prompt_state'], which this sample lacks",
                                       field="metadata.prompt_state")
            out.append((q.lang, [(question, q.answer)], False))
    if "conversations" in kinds:
        for conv in getattr(targets, "conversations", ()):
            if conv.lang in langs:
                spoken = bool(conv.spoken and audio)
                turns = conversation_turns(conv.turns)
                if spoken and turns:
                    turns[0] = ("", turns[0][1])
                out.append((conv.lang, turns, spoken))
    return out


def encode_row(tok: TextTokenizer, segments: Sequence[Segment], slots: int, image_token: int,
               max_len: int, audio_slots: int = 0) -> Encoded:
    """One sequence's ids; cut to ``max_len`` tokens (a cut never splits a picture's or a clip's slots: it and
    what follows it go). Audio slots use the token after ``image_token``."""
    ids, targets, images, audio = [BOS], [False], [], []
    for seg in segments:
        if seg.image is not None:
            if len(ids) + slots > max_len:
                break
            ids += [image_token] * slots
            targets += [False] * slots
            images.append(seg.image)
        if seg.audio is not None:
            if not audio_slots:
                raise InvalidInput("this model reads no audio", field="audio")
            if len(ids) + audio_slots > max_len:
                break
            ids += [image_token + 1] * audio_slots
            targets += [False] * audio_slots
            audio.append(seg.audio)
        for user, answer in seg.turns:
            u = tok.encode(user) + [SEP]
            ids += u
            targets += [False] * len(u)
            if answer is None:
                break
            a = tok.encode(answer) + [EOS]
            ids += a
            targets += [True] * len(a)
    return Encoded(ids[:max_len], targets[:max_len], images, audio)


def prompt_row(tok: TextTokenizer, segments: Sequence[Segment], slots: int, image_token: int,
               max_len: int, audio_slots: int = 0) -> Encoded:
    """A generation prompt: like `encode_row`, but it must end with an open question and fit whole."""
    if not segments or not segments[-1].turns or segments[-1].turns[-1][1] is not None:
        raise InvalidInput("a prompt ends with a user turn to answer", field="messages")
    enc = encode_row(tok, segments, slots, image_token, max_len + 10**6, audio_slots)
    if len(enc.ids) >= max_len:
        raise InvalidInput(f"the conversation is {len(enc.ids)} tokens with its pictures; this model reads at "
                           f"most {max_len} (prompt and answer together)", field="messages")
    return enc


def right_padded(rows: Sequence[Encoded], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, loss mask (B, L-1): whether predicting ids[:, t+1] counts)."""
    ids, mask = pad_sequences([r.ids for r in rows], PAD)
    tgt = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(rows):
        tgt[i, :len(r.targets)] = torch.tensor(r.targets, dtype=torch.bool)
    return ids.to(device), mask.to(device), tgt[:, 1:].to(device)


def left_padded_rows(rows: Sequence[Encoded], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_sequences([r.ids for r in rows], PAD, left=True)
    return ids.to(device), mask.to(device)


__all__ = ["CAPTION_PROMPT", "Encoded", "Segment", "conversation_turns", "encode_row", "left_padded_rows", "prompt_row",
           "right_padded", "sample_sequences"]
