"""A trained ``mllm`` run behind one call: `MLLMChat` answers conversations with pictures attached, in batches.

``load_mllm(RUN).chat([[ChatMessage("user", "What color is the star?", images=(pic,))]])`` -> ``["red"]``.
Every picture of a user message goes before that message's text (LLaVA's ``<image>\\n`` convention); a system
message goes before the first user text; the last message must be the user's."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.collate import collate
from ..data.sample import Sample
from ..data.transforms.compose import SampleTransform
from ..errors import InvalidInput
from ..lm.decoding import DecodingOptions
from .chat import register_chat_adapter, register_chat_loader
from .generator import TokenStreamer
from .loading import load_model
from .mllm import MultimodalLM
from .mllm_seq import Segment, prompt_row

MAX_IMAGES = 16  # pictures per conversation


class MLLMChat:
    """The `polymodal.models.chat.ChatModel` of an mllm run."""

    def __init__(self, model: MultimodalLM, transform: SampleTransform, device: torch.device, name: str = ""):
        self.model, self.transform, self.device, self.name = model, transform, device, name
        self.modalities: tuple[str, ...] = model.modalities

    def rows(self, conversation: Sequence[Any], first_image: int, first_clip: int = 0,
             clips: list[tuple[np.ndarray, int]] | None = None) -> tuple[list[Segment], list[np.ndarray]]:
        """A conversation (messages with ``role``, ``content``, ``images``, ``audio``) as segments + its pictures;
        its audio clips (spoken words, before the message's text) are appended to ``clips``."""
        if not conversation:
            raise InvalidInput("the conversation is empty", field="messages")
        if conversation[-1].role != "user":
            raise InvalidInput("the last message must be the user's", field="messages")
        segments: list[Segment] = [Segment(None)]
        images: list[np.ndarray] = []
        system, pending = "", None
        for i, m in enumerate(conversation):
            pics = list(getattr(m, "images", ()) or ())
            sounds = list(getattr(m, "audio", ()) or ())
            if sounds and ("audio" not in self.modalities or m.role != "user"):
                raise InvalidInput("this model reads no audio" if "audio" not in self.modalities else
                                   "only user messages carry audio", field=f"messages[{i}].audio")
            if pics and m.role != "user":
                raise InvalidInput("only user messages carry pictures", field=f"messages[{i}]")
            if pics and "image" not in self.modalities:
                raise InvalidInput("this model reads no pictures", field=f"messages[{i}].images")
            if m.role == "system":
                system = m.content
            elif m.role == "user":
                for pic in pics:
                    segments.append(Segment(first_image + len(images)))
                    images.append(np.asarray(pic))
                for clip in sounds:
                    if clips is None:
                        raise InvalidInput("audio needs a clip list", field=f"messages[{i}].audio")
                    if segments[-1].turns or segments[-1].audio is not None:
                        segments.append(Segment(None))
                    segments[-1].audio = first_clip + len(clips)
                    clips.append((np.asarray(clip[0], dtype=np.float32), int(clip[1])))
                text = m.content
                if system:
                    text, system = f"{system}\n{text}", ""
                pending = text if pending is None else f"{pending}\n{text}"
            elif m.role == "assistant":
                if pending is None:
                    raise InvalidInput("an assistant message must follow a user message", field=f"messages[{i}]")
                segments[-1].turns.append((pending, m.content))
                pending = None
            else:
                raise InvalidInput(f"role must be system, user or assistant, got {m.role!r}",
                                   field=f"messages[{i}].role")
        segments[-1].turns.append((pending or "", None))
        if len(images) > MAX_IMAGES:
            raise InvalidInput(f"at most {MAX_IMAGES} pictures per conversation", field="messages")
        return [s for s in segments if s.image is not None or s.audio is not None or s.turns], images

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor | None:
        if not images:
            return None
        samples = [Sample(id=f"p{i}", image=img) for i, img in enumerate(images)]
        data: torch.Tensor = collate(samples, self.transform).data["image"].to(self.device)
        return data

    def sounds(self, clips: Sequence[tuple[np.ndarray, int]]) -> torch.Tensor | None:
        if not clips:
            return None
        samples = [Sample(id=f"a{i}", audio=wave, sample_rate=rate) for i, (wave, rate) in enumerate(clips)]
        data: torch.Tensor = collate(samples, self.transform).data["audio"].to(self.device)
        return data

    def chat(self, conversations: Sequence[Sequence[Any]], options: DecodingOptions | None = None,
             streamer: TokenStreamer | None = None) -> list[str]:
        rows: list[list[Segment]] = []
        images: list[np.ndarray] = []
        clips: list[tuple[np.ndarray, int]] = []
        for conv in conversations:
            segs, pics = self.rows(conv, len(images), len(clips), clips)
            rows.append(segs)
            images += pics
        with torch.no_grad():
            return self.model.decode(rows, self.pixels(images), options, streamer, sounds=self.sounds(clips))

    def count_tokens(self, conversation: Sequence[Any]) -> int:
        segs, _ = self.rows(conversation, 0, 0, [])
        m = self.model
        return len(prompt_row(m._tok(), segs, m.slots, m.image_token, 10**6, m.audio_slots).ids)

    def __repr__(self) -> str:
        return f"MLLMChat({self.name!r}, bridge={self.model.bridge!r}, reads={self.modalities})"


@register_chat_loader("mllm")
def load_mllm(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> MLLMChat:
    model, transform, cfg = load_model(run, device)
    if not isinstance(model, MultimodalLM):
        raise InvalidInput(f"{run} is not an mllm run (arch {cfg.get('arch')!r})", field="arch")
    return MLLMChat(model, transform, torch.device(device), name=str(run))


@register_chat_adapter("chat")
def chat_of(gm: Any) -> MLLMChat:
    """An mllm run already loaded as a `GenerativeModel` (``serve --generate``) as a chat model."""
    if not isinstance(gm.model, MultimodalLM):
        raise InvalidInput("not an mllm model", field="model")
    return MLLMChat(gm.model, gm.transform, gm.device, gm.name)


__all__ = ["MAX_IMAGES", "MLLMChat", "chat_of", "load_mllm"]
