"""``POST /v1/chat/completions``: OpenAI's chat API over the served chat models (`Service.chat_models`), so OpenAI's
clients chat with a VQA run, a captioner, a speech recogniser or a multimodal LLM about pictures and clips.

- ``messages``: system (or ``developer``), user and assistant turns; ``content`` a string or a list of parts:
  ``{"type": "text", "text"}``, ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` and
  ``{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"}}`` (user messages only). Images
  travel as data URLs only: a remote URL is a 400, the server fetches nothing. Media are checked from their
  headers against the request's budget (`MediaLimits`) before any is decoded, as on every other route.
- Decoding: greedy unless ``temperature`` > 0 (or ``top_p`` < 1) asks for sampling (OpenAI's default is
  temperature 1; small models answer better greedily), ``max_tokens`` / ``max_completion_tokens`` (default and
  most: `MAX_NEW_TOKENS`), ``seed``, ``stop``; ``n`` > 1 choices need sampling, choice i drawing with
  ``seed + i``. OpenAI's other options are accepted only at their neutral values (no tools, log-probs, penalties,
  or JSON mode).
- The reply: ``chat.completion`` with ``choices[i].message``, ``finish_reason`` (``stop``, or ``length`` when the
  reply used all its tokens) and ``usage`` (prompt tokens as the model counts them, tokens generated). With
  ``stream``: ``chat.completion.chunk`` events (the role, then content deltas, then the finish reason, then with
  ``stream_options.include_usage`` a usage chunk), then ``data: [DONE]``; an error after the stream started is a
  ``data: {"error": {...}}`` event.
- Limits: `ServeSettings.max_chat_messages` messages, ``max_text_chars`` characters in all, the media limits,
  `MAX_CHOICES` choices, `MAX_NEW_TOKENS` tokens. Errors use OpenAI's envelope (`openai_api.openai_error`).

Conversations are decoded and checked in the thread pool, then decoded by the generation batcher's worker
thread (`gen_batching`) as `ConversationSample`s, merged with concurrent requests for the same model and options."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from ..errors import ApiError, InvalidInput
from ..lm.decoding import MAX_NEW_TOKENS, DecodingOptions
from ..models.chat import ROLES, ChatMessage, ChatModel, ConversationSample, check_conversation, finish_reason
from .gen_batching import GenJob, GenResult
from .generation import DONE, SSE_HEADERS, error_parts, wait_for
from .jsonbody import CheckedRoute
from .media import RequestBudget, check_audio, check_image
from .openai_api import ERRORS as OPENAI_ERRORS
from .openai_api import OPENAI_TAG, openai_error
from .routes import reader
from .schemas import MAX_INPUTS
from .service import Service, chat_key

CHAT_PATH = "/v1/chat/completions"
MAX_CHOICES = 8
IMAGE_URL = re.compile(r"^data:image/[\w.+-]+(?:;[\w=.+-]+)*;base64,", re.ASCII)
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
router = APIRouter(route_class=CheckedRoute, tags=[OPENAI_TAG])


# ------------------------------------------------------------------------------------------------ schemas

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, strict=True, description="a last chunk with the usage")
    include_obfuscation: bool | None = Field(None, description="accepted and ignored")


class ChatCompletionRequest(BaseModel):
    """OpenAI's ``POST /v1/chat/completions`` body (unknown fields are refused, as OpenAI does)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a served chat model (GET /v1/models)")
    messages: list[Any] = Field(max_length=MAX_INPUTS, description=(
        "{role: system | developer | user | assistant, content}; content is a string or a list of parts: "
        "{type: text, text}, {type: image_url, image_url: {url: 'data:image/png;base64,...'}}, "
        "{type: input_audio, input_audio: {data: BASE64, format: wav}} (media in user messages only)"))
    max_tokens: int | None = Field(None, strict=True, ge=1, description=f"at most {MAX_NEW_TOKENS}")
    max_completion_tokens: int | None = Field(None, strict=True, ge=1, description="another name for max_tokens")
    temperature: float | None = Field(None, ge=0, le=2, description="0 or left out: greedy; > 0: sampling")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling (< 1 samples)")
    n: int = Field(1, strict=True, ge=1, le=MAX_CHOICES, description="choices; more than 1 needs sampling")
    seed: int | None = Field(None, strict=True, ge=0, description="sampling seed (choice i: seed + i)")
    stop: str | list[str] | None = Field(None, description="cut each reply before the first of these (up to 8)")
    stream: bool = Field(False, strict=True, description="answer with chat.completion.chunk events")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="accepted and ignored")
    store: bool | None = Field(None, description="accepted and ignored")
    metadata: dict[str, str] | None = Field(None, description="accepted and ignored")
    # OpenAI's options this server does not have: accepted at their neutral values only
    frequency_penalty: float | None = Field(None, description="0 only")
    presence_penalty: float | None = Field(None, description="0 only")
    logprobs: bool | None = Field(None, description="false only")
    response_format: dict[str, Any] | None = Field(None, description='{"type": "text"} only')
    tools: list[Any] | None = Field(None, description="none: this server calls no tools")
    tool_choice: Any = Field(None, description='"none" only')


class ChatReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatReply
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


_SSE_DOC = {"text/event-stream": {"schema": {"type": "string"}, "example": (
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"vqa","choices":[{"index":0,'
    '"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"vqa","choices":[{"index":0,'
    '"delta":{"content":"red"},"finish_reason":null}]}\n\n'
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"vqa","choices":[{"index":0,'
    '"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')}}


# ------------------------------------------------------------------------------------------------ request -> model

def pick_chat_model(svc: Service, name: str) -> ChatModel:
    cm = svc.chat_models.get(name)
    if cm is not None:
        return cm
    if name in svc.generators or name == svc.model_id:
        what = f"a {svc.generators[name].task} model" if name in svc.generators else "the embedding model"
        raise InvalidInput(f"{name!r} is {what}, which cannot chat (chat models of this server: "
                           f"{', '.join(svc.chat_models) or 'none'})", field="model")
    raise ApiError(404, "ModelNotFound", f"the model {name!r} does not exist (chat models of this server: "
                   f"{', '.join(repr(n) for n in svc.chat_models) or 'none'}; GET /v1/models)", field="model")


def unsupported(body: ChatCompletionRequest) -> None:
    """OpenAI's options this server does not implement, unless at their neutral values."""
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name) not in (None, 0):
            raise InvalidInput(f"{name} is not supported (only 0); repetition is not penalised here", field=name)
    if body.logprobs:
        raise InvalidInput("logprobs are not supported", field="logprobs")
    if body.response_format is not None and body.response_format.get("type") != "text":
        raise InvalidInput('only {"type": "text"} is supported: no JSON mode', field="response_format")
    if body.tools or body.tool_choice not in (None, "none"):
        raise InvalidInput("tools are not supported: this server calls no functions",
                           field="tools" if body.tools else "tool_choice")


def chat_options(body: ChatCompletionRequest) -> list[DecodingOptions]:
    """The decoding options of each of the ``n`` choices."""
    given = [(f, v) for f in ("max_completion_tokens", "max_tokens") if (v := getattr(body, f)) is not None]
    if len({v for _, v in given}) > 1:
        raise InvalidInput("max_tokens and max_completion_tokens differ: give one", field="max_tokens")
    t, top_p = body.temperature, body.top_p
    sample = (t is not None and t > 0) or (t is None and top_p is not None and top_p < 1)
    if body.n > 1 and not sample:
        raise InvalidInput("n > 1 needs sampling (temperature > 0): greedy decoding gives n identical replies",
                           field="n")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    kw: dict[str, Any] = {"max_new_tokens": given[0][1] if given else MAX_NEW_TOKENS, "stop": stop}
    if sample:
        kw.update(do_sample=True, temperature=t or 1.0, top_p=top_p)
    out = []
    for i in range(body.n):
        try:
            out.append(DecodingOptions(**kw, seed=None if body.seed is None else body.seed + i))
        except InvalidInput as exc:
            fields = {"max_new_tokens": given[0][0] if given else "max_tokens", "do_sample": "temperature"}
            raise InvalidInput(exc.message, field=fields.get(exc.field or "", exc.field)) from None
    return out


def parse_messages(raw: list[Any], svc: Service) -> tuple[list[ChatMessage], dict[str, str]]:
    """OpenAI's messages -> `ChatMessage`s (every medium checked against one budget before any is decoded), and
    where each image and clip came from (``messages[i].images[k]`` -> ``messages[i].content[j]``)."""
    settings = svc.settings
    if len(raw) > settings.max_chat_messages:
        raise InvalidInput(f"{len(raw)} messages exceed the limit of {settings.max_chat_messages}", field="messages")
    budget = RequestBudget(settings.limits)
    paths: dict[str, str] = {}
    pending = []
    for i, msg in enumerate(raw):
        at = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidInput("expected a message object {role, content}", field=at)
        extra = sorted(set(msg) - {"role", "content", "name"})
        if extra:
            why = "tools are not supported" if "tool" in extra[0] else "unknown field"
            raise InvalidInput(why, field=f"{at}.{extra[0]}")
        role = "system" if msg.get("role") == "developer" else msg.get("role")
        if role not in ROLES:
            raise InvalidInput(f"role must be system, developer, user or assistant, got {msg.get('role')!r}",
                               field=f"{at}.role")
        content = msg.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise InvalidInput("content must be a string or a list of content parts", field=f"{at}.content")
        texts: list[str] = []
        media: dict[str, list[Callable[[], Any]]] = {"images": [], "audio": []}
        for j, part in enumerate(parts):
            kind, decode = _part(part, f"{at}.content" if isinstance(content, str) else f"{at}.content[{j}]",
                                 str(role), svc, budget)
            if kind == "text":
                texts.append(decode())
            else:
                paths[f"{at}.{kind}[{len(media[kind])}]"] = f"{at}.content[{j}]"
                media[kind].append(decode)
        pending.append((str(role), "\n".join(texts), media))
    return [ChatMessage(role, text, tuple(d() for d in media["images"]), tuple(d() for d in media["audio"]))
            for role, text, media in pending], paths


def _part(part: Any, at: str, role: str, svc: Service, budget: RequestBudget) -> tuple[str, Callable[[], Any]]:
    """("text" | "images" | "audio", its decoder) of one content part (media: checked and charged now)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidInput("a text part needs a string text", field=f"{at}.text")
        return "text", lambda: text
    if kind in ("image_url", "input_audio") and role != "user":
        raise InvalidInput(f"a {role} message holds text only; images and audio go in user messages", field=at)
    limits = svc.settings.limits
    if kind == "image_url":
        inner = part.get("image_url")
        url = inner.get("url") if isinstance(inner, dict) else None
        field = f"{at}.image_url.url"
        if not isinstance(url, str) or not IMAGE_URL.match(url):
            remote = isinstance(url, str) and url.split(":", 1)[0].lower() in ("http", "https", "ftp", "file")
            raise InvalidInput("remote URLs are not fetched: send the image itself as a data URL "
                               "(data:image/png;base64,...)" if remote else
                               "expected a data URL of an image (data:image/png;base64,...)", field=field)
        return "images", check_image(url, field, limits, budget)
    if kind == "input_audio":
        inner = part.get("input_audio")
        if not isinstance(inner, dict) or not isinstance(inner.get("data"), str):
            raise InvalidInput("an input_audio part needs {data: BASE64, format}", field=f"{at}.input_audio")
        fmt = inner.get("format")
        if not isinstance(fmt, str) or fmt.lower() not in AUDIO_FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(AUDIO_FORMATS)}, got {fmt!r}",
                               field=f"{at}.input_audio.format")
        return "audio", check_audio(inner["data"], f"{at}.input_audio.data", limits, budget)
    raise InvalidInput(f"unsupported content part {kind!r}: this server reads text, image_url (data URLs) and "
                       "input_audio parts", field=f"{at}.type" if isinstance(part, dict) else at)


_MEDIA_FIELD = re.compile(r"(messages\[\d+\])\.(?:images|audio)(?:\[\d+\])?")


def prepare(svc: Service, cm: ChatModel, raw: list[Any]) -> tuple[list[ChatMessage], int]:
    """(conversation, prompt tokens), checked by `check_conversation` and by the model itself (its prompt is
    counted), so that a bad request fails before it is queued. Errors name the request's own fields."""
    messages, paths = parse_messages(raw, svc)
    try:
        conversation = check_conversation(messages, cm.modalities, svc.settings.max_chat_messages,
                                          svc.settings.max_text_chars)
        return conversation, cm.count_tokens(conversation)
    except InvalidInput as exc:
        m = _MEDIA_FIELD.fullmatch(exc.field or "")
        if m is None:
            raise
        raise InvalidInput(exc.message, field=paths.get(m.group(0), f"{m.group(1)}.content")) from None


# ------------------------------------------------------------------------------------------------ the route

@router.post(CHAT_PATH, response_model=ChatCompletion,
             responses={**OPENAI_ERRORS, 200: {"content": _SSE_DOC, "description": "The completion, or (stream) "
                                                                                   "its chunks"}})
async def chat_completions(body: ChatCompletionRequest, svc: Service = Depends(reader)) -> Response:
    """OpenAI-compatible chat: the next assistant reply to a conversation, with images and audio clips as data
    URLs, from a served chat model (``model``)."""
    cm = pick_chat_model(svc, body.model)
    unsupported(body)
    options = chat_options(body)
    conversation, prompt_tokens = await run_in_threadpool(prepare, svc, cm, body.messages)
    sample = ConversationSample.of(conversation)
    jobs = [GenJob(chat_key(body.model), sample, None, o) for o in options]
    head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": body.model}

    def usage(results: list[GenResult]) -> dict[str, int]:
        done = sum(r.tokens for r in results)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}

    def finish(i: int, res: GenResult) -> str:
        return finish_reason(cm, prompt_tokens, res.tokens, options[i])

    if body.stream:
        include = body.stream_options is not None and body.stream_options.include_usage
        return stream_chunks(svc, jobs, head, finish, usage if include else None)
    try:
        results = await asyncio.gather(*(wait_for(svc, j) for j in jobs))
    finally:
        for job in jobs:
            job.abandon()   # one choice failed (or the client left): the others stop too; done ones: no-op
    choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "finish_reason": finish(i, r),
                "logprobs": None} for i, r in enumerate(results)]
    return Response(to_json({**head, "object": "chat.completion", "choices": choices, "usage": usage(results)}),
                    media_type="application/json")


def _sse(obj: Any) -> bytes:
    return b"data: " + to_json(obj) + b"\n\n"


def _soon(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[int, str | None]], i: int,
          piece: str | None, *_: Any) -> None:
    """Hand ``(choice, piece)`` to the event loop (from the worker thread); None: the choice is done."""
    with contextlib.suppress(RuntimeError):   # the loop is gone (server shut down): nobody is listening
        loop.call_soon_threadsafe(queue.put_nowait, (i, piece))


def stream_chunks(svc: Service, jobs: list[GenJob], head: dict[str, Any], finish: Callable[[int, GenResult], str],
                  usage: Callable[[list[GenResult]], dict[str, int]] | None) -> StreamingResponse:
    """Queue the choices (a full queue raises now, as an HTTP error) and stream their chunks as they decode."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue()
    futures = []
    try:
        for i, job in enumerate(jobs):
            job.on_delta = partial(_soon, loop, queue, i)
            futures.append(svc.generation.submit(job))
            futures[-1].add_done_callback(partial(_soon, loop, queue, i, None))
    except BaseException:
        for job in jobs:
            job.abandon()
        raise
    chunk = {**head, "object": "chat.completion.chunk"}

    def choice(i: int, delta: dict[str, str], reason: str | None) -> bytes:
        return _sse({**chunk, "choices": [{"index": i, "delta": delta, "finish_reason": reason}]})

    async def events() -> AsyncIterator[bytes]:
        try:
            for i in range(len(jobs)):
                yield choice(i, {"role": "assistant", "content": ""}, None)
            results: dict[int, GenResult] = {}
            while len(results) < len(jobs):
                i, piece = await queue.get()
                if piece is not None:
                    yield choice(i, {"content": piece}, None)
                    continue
                if futures[i].cancelled():   # abandoned while queued: only when the client has left
                    return
                exc = futures[i].exception()
                if exc is not None:
                    yield _sse(openai_error(*error_parts(exc))[1])
                    yield DONE
                    return
                results[i] = futures[i].result()
                yield choice(i, {}, finish(i, results[i]))
            if usage is not None:
                yield _sse({**chunk, "choices": [], "usage": usage([results[i] for i in range(len(jobs))])})
            yield DONE
        finally:
            for job in jobs:
                job.abandon()   # the client left (or all is sent: then it changes nothing)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
