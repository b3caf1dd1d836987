"""Chatting with a model: `ChatMessage`, the `ChatModel` protocol, the chat loaders, and `GenerativeChat`.

A conversation is a sequence of `ChatMessage`s (system, user and assistant turns; user turns may carry images and
audio clips). A `ChatModel` answers a batch of conversations with the next assistant reply of each; ``polymodal
chat`` and the service's ``POST /v1/chat/completions`` both talk to this protocol, and `check_conversation` is the
validation they share.

- `CHAT_LOADERS` maps a run's arch to the function that loads it as a chat model. An arch module registers its own
  (``@register_chat_loader("mllm")``); this module imports none of them. `load_chat_model(RUN)` dispatches on the
  run's arch. `CHAT_ADAPTERS` does the same for a generative model already loaded, by its task
  (``@register_chat_adapter("chat")``): `as_chat_model(gm)` is how the service chats with its generative models.
- `GenerativeChat` lets today's generative runs chat (arch ``vqa``, ``lm``, ``captioner``, ``asr``). These models
  are single-turn: only the last user message and the conversation's latest picture or clip are read.
- `ConversationRunner` and `ConversationSample` put any chat model behind the service's generation batcher, which
  queues samples: a conversation travels inside a sample, and the runner answers a batch of them with one ``chat``
  call (so chat requests share the batcher's queue, worker thread, merging and streaming).
- `finish_reason` says whether a reply ended by itself (``"stop"``) or ran out of tokens (``"length"``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..data.sample import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, Sample
from ..data.transforms.compose import SampleTransform
from ..errors import ConfigError, InvalidInput
from ..lm.decoding import DecodingOptions
from ..lm.tokenizer import TextTokenizer
from ..rundir import CONFIG
from .gen_batch import SEP_TEXT, encode_prompt
from .generative import MAX_BATCH, GenerativeModel, load_generative_model, run_arch
from .generator import TextGenerator, TokenStreamer

ROLES: tuple[str, ...] = ("system", "user", "assistant")
MEDIA: tuple[str, ...] = ("image", "audio")      # what a chat message can carry
MAX_MESSAGES = 64        # check_conversation's defaults (the service passes its own settings)
MAX_CHARS = 32_000       # characters of all messages together
MAX_MEDIA = 8            # images, and audio clips, in one message
CHAT_TASKS: tuple[str, ...] = ("vqa", "lm", "captioning", "asr")   # generative tasks GenerativeChat adapts


@dataclass(frozen=True, eq=False)
class ChatMessage:
    """One turn: ``role`` system / user / assistant, ``content`` its text ("" allowed when media is attached),
    ``images`` uint8 H x W x 3 arrays, ``audio`` (float32 mono waveform, sample rate) pairs. Only user messages
    carry media. Lists are accepted and stored as tuples; errors name the field."""

    role: str
    content: str
    images: tuple[np.ndarray, ...] = ()
    audio: tuple[tuple[np.ndarray, int], ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {self.role!r}", field="role")
        if not isinstance(self.content, str):
            raise InvalidInput(f"content must be a string, got {type(self.content).__name__}", field="content")
        images, audio = _tuple(self.images, "images"), _tuple(self.audio, "audio")
        for j, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3 \
                    or min(img.shape) == 0:
                got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise InvalidInput(f"expected a uint8 H x W x 3 array, got {got}", field=f"images[{j}]")
        for j, clip in enumerate(audio):
            _check_clip(clip, f"audio[{j}]")
        if self.role != "user" and (images or audio):
            raise InvalidInput(f"only user messages carry images or audio, not a {self.role} message",
                               field="images" if images else "audio")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "audio", audio)


def _tuple(value: Any, field: str) -> tuple[Any, ...]:
    if not isinstance(value, tuple | list):
        raise InvalidInput(f"expected a tuple, got {type(value).__name__}", field=field)
    return tuple(value)


def _check_clip(clip: Any, field: str) -> None:
    if not isinstance(clip, tuple | list) or len(clip) != 2:
        raise InvalidInput("expected a (waveform, sample_rate) pair", field=field)
    wave, rate = clip
    if not isinstance(wave, np.ndarray) or wave.dtype != np.float32 or wave.ndim != 1 or not wave.size:
        raise InvalidInput("expected a non-empty float32 mono waveform", field=field)
    if not np.isfinite(wave).all():
        raise InvalidInput("waveform contains NaN or inf", field=field)
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) \
            or not MIN_SAMPLE_RATE <= int(rate) <= MAX_SAMPLE_RATE:
        raise InvalidInput(f"expected an integer sample rate in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz, "
                           f"got {rate!r}", field=field)


class ChatModel(Protocol):
    """What answers conversations. ``modalities``: the media it reads ("image", "audio"); () = text only."""

    @property
    def name(self) -> str: ...

    @property
    def modalities(self) -> tuple[str, ...]: ...

    def chat(self, conversations: Sequence[Sequence[ChatMessage]], options: DecodingOptions | None = None,
             streamer: TokenStreamer | None = None) -> list[str]:
        """The next assistant reply of each conversation (batched); ``streamer`` gets the new token ids of every
        row after each decoding step (transformers' streamer interface)."""
        ...

    def count_tokens(self, conversation: Sequence[ChatMessage]) -> int:
        """Tokens of the model's input for this conversation (its prompt); errors as ``chat`` would raise them."""
        ...


def check_conversation(messages: Sequence[ChatMessage], modalities: Sequence[str], max_messages: int = MAX_MESSAGES,
                       max_chars: int = MAX_CHARS, max_media: int = MAX_MEDIA) -> list[ChatMessage]:
    """The checks every chat model needs, with errors naming ``messages[i]...``: not empty, at most
    ``max_messages`` messages and ``max_chars`` characters, no empty user message, a user message last, media only
    of ``modalities`` and at most ``max_media`` images (and clips) per message."""
    msgs = list(messages)
    if not msgs:
        raise InvalidInput("the conversation is empty: give at least one user message", field="messages")
    if len(msgs) > max_messages:
        raise InvalidInput(f"{len(msgs)} messages exceed the limit of {max_messages}", field="messages")
    reads = " and ".join(modalities) or "only text"
    for i, m in enumerate(msgs):
        if not isinstance(m, ChatMessage):
            raise InvalidInput(f"expected a ChatMessage, got {type(m).__name__}", field=f"messages[{i}]")
        if m.role == "user" and not m.content.strip() and not m.images and not m.audio:
            raise InvalidInput("the message is empty", field=f"messages[{i}].content")
        for kind, items, name in (("image", m.images, "images"), ("audio", m.audio, "audio")):
            if items and kind not in modalities:
                raise InvalidInput(f"this model reads {reads}, not {kind}", field=f"messages[{i}].{name}[0]")
            if len(items) > max_media:   # the field names the first one beyond the limit
                raise InvalidInput(f"{len(items)} {name} in one message exceed this model's limit of {max_media}",
                                   field=f"messages[{i}].{name}[{max_media}]")
    chars = sum(len(m.content) for m in msgs)
    if chars > max_chars:
        raise InvalidInput(f"the messages hold {chars} characters, beyond the limit of {max_chars}", field="messages")
    if not any(m.role == "user" for m in msgs):
        raise InvalidInput("the conversation has no user message", field="messages")
    if msgs[-1].role != "user":
        raise InvalidInput(f"the last message is the {msgs[-1].role}'s: the model replies to a user message",
                           field=f"messages[{len(msgs) - 1}].role")
    return msgs


# ------------------------------------------------------------------------------------------------ GenerativeChat

class GenerativeChat(GenerativeModel):
    """A generative run as a `ChatModel`. These models are single-turn: the reply reads only the LAST user
    message and the conversation's latest image (or clip); earlier turns are ignored.

    - vqa: that message's text is the question, about its image (or the latest one before it);
    - lm: its text is the prompt, followed by ``<sep>`` (the question/answer boundary the LM was trained with)
      unless it holds one already; no media;
    - captioner: the reply is a caption of the latest image (the text is not read);
    - asr: the reply is the transcript of the latest audio clip.

    One image (or clip) per message at most; replies are stripped of surrounding whitespace. Runs whose model
    reads video cannot chat."""

    MAX_MEDIA = 1

    def __init__(self, model: TextGenerator, transform: SampleTransform, config: dict[str, Any],
                 device: torch.device, name: str = ""):
        super().__init__(model, transform, config, device, name)
        if not self.chat_capable(self):
            raise InvalidInput(f"a {self.task} model reading {', '.join(self.modalities)} cannot chat (chat "
                               f"messages carry {' and '.join(MEDIA)})", field="arch")

    @classmethod
    def of(cls, gm: GenerativeModel) -> GenerativeChat:
        """``gm`` as a chat model (the same modules: nothing is copied or reloaded)."""
        return gm if isinstance(gm, GenerativeChat) else cls(gm.model, gm.transform, gm.config, gm.device, gm.name)

    @staticmethod
    def chat_capable(gm: GenerativeModel) -> bool:
        return gm.task in CHAT_TASKS and set(gm.modalities) <= set(MEDIA)

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.model._tok()

    @property
    def max_positions(self) -> int | None:
        """Decoder positions (prompt + reply), when the model has such a bound."""
        for owner, attr in ((self.model, "max_len"), (getattr(self.model, "cfg", None), "max_target_positions")):
            value = getattr(owner, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    def chat_input(self, conversation: Sequence[ChatMessage]) -> tuple[Sample, str | None]:
        """The (sample, prompt) that ``generate_samples`` reads for this conversation's reply."""
        msgs = check_conversation(conversation, self.modalities, max_media=self.MAX_MEDIA)
        last = len(msgs) - 1
        prompt = None
        if self.needs_prompt:
            text = msgs[last].content.strip()
            if not text:
                what = "a question" if self.task == "vqa" else "a prompt"
                raise InvalidInput(f"this {self.task} model needs {what}: the last user message has no text",
                                   field=f"messages[{last}].content")
            prompt = text if self.task == "vqa" or SEP_TEXT in text else text + SEP_TEXT
        media: dict[str, Any] = {}
        for kind in self.modalities:
            found = [x for m in reversed(msgs) for x in (m.images if kind == "image" else m.audio)]
            if not found:
                name = "images" if kind == "image" else "audio"
                raise InvalidInput(f"this {self.task} model reads {'an image' if kind == 'image' else 'audio'}: "
                                   "attach one to a user message", field=f"messages[{last}].{name}")
            media[kind] = found[0]
        return self.samples(**media, prompt=prompt)[0], prompt

    def chat(self, conversations: Sequence[Sequence[ChatMessage]], options: DecodingOptions | None = None,
             streamer: TokenStreamer | None = None) -> list[str]:
        if not conversations:
            raise InvalidInput("no conversations to answer", field="conversations")
        inputs = [self.chat_input(c) for c in conversations]
        prompts = None if all(p is None for _, p in inputs) else [p for _, p in inputs]
        texts = self.generate_samples([s for s, _ in inputs], prompts, options,
                                      batch_size=min(len(inputs), MAX_BATCH), streamer=streamer)
        return [t.strip() for t in texts]

    def count_tokens(self, conversation: Sequence[ChatMessage]) -> int:
        """The decoder's prompt: ``<s>`` + question + ``<sep>`` (vqa), ``<s>`` + prompt (lm), ``<s>`` (+ a
        language tag; captioner, asr). The picture or clip reaches the decoder through cross-attention and is
        not counted."""
        _, prompt = self.chat_input(conversation)
        if self.task == "lm":
            return 1 + len(encode_prompt(self.tokenizer, prompt or ""))
        prefix = getattr(self.model, "prefix", None)
        if callable(prefix):
            return len(prefix(question=prompt))
        return 1

    def __repr__(self) -> str:
        return f"GenerativeChat(task={self.task!r}, reads={self.modalities})"


# ------------------------------------------------------------------------------------------------ loaders

ChatLoader = Callable[[Path, "str | torch.device"], ChatModel]
CHAT_LOADERS: dict[str, ChatLoader] = {}


def register_chat_loader(arch: str) -> Callable[[ChatLoader], ChatLoader]:
    """``@register_chat_loader("mllm")`` on ``fn(run_folder, device) -> ChatModel``."""
    def deco(fn: ChatLoader) -> ChatLoader:
        if CHAT_LOADERS.get(arch, fn) is not fn:
            raise ConfigError(f"a chat loader for arch {arch!r} is already registered", field="arch")
        CHAT_LOADERS[arch] = fn
        return fn

    return deco


def load_chat_model(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> ChatModel:
    """The run as a chat model, by its arch (`CHAT_LOADERS`)."""
    path = Path(run)
    arch = run_arch(path)
    loader = CHAT_LOADERS.get(arch) if arch is not None else None
    if loader is None:
        raise InvalidInput(f"{path} is not a run that can chat (arch {arch!r}; chat archs: "
                           f"{', '.join(sorted(CHAT_LOADERS))})", field="arch", source=str(path / CONFIG))
    return loader(path, device)


def _generative_chat(run: Path, device: str | torch.device) -> ChatModel:
    return GenerativeChat.of(load_generative_model(run, device))


for _arch in ("vqa", "lm", "captioner", "asr"):
    register_chat_loader(_arch)(_generative_chat)


# A generative model already loaded (as `polymodal serve --generate RUN` loads them) -> its chat model, by task.
ChatAdapter = Callable[[GenerativeModel], "ChatModel | None"]
CHAT_ADAPTERS: dict[str, ChatAdapter] = {}


def register_chat_adapter(task: str) -> Callable[[ChatAdapter], ChatAdapter]:
    """``@register_chat_adapter("chat")`` on ``fn(generative_model) -> ChatModel | None`` (None: this one
    cannot chat): how the service chats with a served generative model of that task."""
    def deco(fn: ChatAdapter) -> ChatAdapter:
        if CHAT_ADAPTERS.get(task, fn) is not fn:
            raise ConfigError(f"a chat adapter for task {task!r} is already registered", field="task")
        CHAT_ADAPTERS[task] = fn
        return fn

    return deco


def as_chat_model(gm: GenerativeModel) -> ChatModel | None:
    """``gm`` as a chat model, or None when it cannot chat (no adapter for its task, or it reads video)."""
    adapter = CHAT_ADAPTERS.get(gm.task)
    return adapter(gm) if adapter is not None else None


def _adapt(gm: GenerativeModel) -> ChatModel | None:
    return GenerativeChat.of(gm) if GenerativeChat.chat_capable(gm) else None


for _task in CHAT_TASKS:
    register_chat_adapter(_task)(_adapt)


# ------------------------------------------------------------------------------------------------ serving

@dataclass(frozen=True, eq=False)
class ConversationSample(Sample):
    """A sample that carries a whole conversation to a `ConversationRunner` (``text`` is a placeholder)."""

    conversation: tuple[ChatMessage, ...] = ()

    @classmethod
    def of(cls, conversation: Sequence[ChatMessage]) -> ConversationSample:
        return cls(id="chat", text="conversation", conversation=tuple(conversation))


class ConversationRunner(GenerativeModel):
    """A chat model as the generation batcher runs models: ``generate_samples`` answers a batch of
    `ConversationSample`s with one ``chat`` call; a plain sample (``/v1/generate``) is a one-turn conversation
    (its prompt as the user's text, its image or clip attached). ``model`` is the `TextGenerator` the chat model
    decodes with: its tokenizer turns the streamed ids into text."""

    def __init__(self, chat: ChatModel, generator: TextGenerator):
        super().__init__(generator, SampleTransform(), {}, getattr(chat, "device", torch.device("cpu")), chat.name)
        self.chat_model = chat

    @classmethod
    def of(cls, chat: ChatModel) -> ConversationRunner:
        generator = getattr(chat, "model", None)
        if not isinstance(generator, TextGenerator):
            raise ConfigError(f"{chat!r} cannot be served: the service decodes with a polymodal TextGenerator, "
                              "which a served chat model exposes as its `model`", field="chat_models")
        return cls(chat, generator)

    def generate_samples(self, samples: Sequence[Sample], prompts: Sequence[str | None] | None = None,
                         options: DecodingOptions | None = None, *, batch_size: int = 16,
                         streamer: TokenStreamer | None = None) -> list[str]:
        rows = list(prompts) if prompts is not None else [None] * len(samples)
        conversations = [s.conversation if isinstance(s, ConversationSample) else (_one_turn(s, p),)
                         for s, p in zip(samples, rows, strict=True)]
        # stripped, as the batcher streams them (so the streamed pieces add up to the reply)
        return [t.strip() for t in self.chat_model.chat(conversations, options, streamer)]


def _one_turn(s: Sample, prompt: str | None) -> ChatMessage:
    if s.video is not None:
        raise InvalidInput("a chat model reads images and audio, not video", field="video")
    audio = ((s.audio, int(s.sample_rate or 0)),) if s.audio is not None else ()
    return ChatMessage("user", prompt or "", images=(s.image,) if s.image is not None else (), audio=audio)


def finish_reason(model: object, prompt_tokens: int, tokens: int, options: DecodingOptions) -> str:
    """``"length"`` when the reply used every token it was allowed (``max_new_tokens``, or the model's positions
    left after the prompt when it has ``max_positions``), else ``"stop"``."""
    limit = options.max_new_tokens
    positions = getattr(model, "max_positions", None)
    if isinstance(positions, int):
        limit = min(limit, positions - prompt_tokens)
    return "length" if tokens >= limit else "stop"


__all__ = ["CHAT_ADAPTERS", "CHAT_LOADERS", "CHAT_TASKS", "MAX_CHARS", "MAX_MEDIA", "MAX_MESSAGES", "MEDIA", "ROLES", "ChatLoader",
           "ChatAdapter", "ChatMessage", "ChatModel", "ConversationRunner", "ConversationSample", "GenerativeChat",
           "as_chat_model", "check_conversation", "finish_reason", "load_chat_model", "register_chat_adapter",
           "register_chat_loader"]
