"""Generation endpoints: ``POST /v1/generate`` (ours: captioning, VQA, any generative model, JSON in, JSON or a
server-sent event stream out) and ``POST /v1/audio/transcriptions`` (OpenAI's shape: a multipart file in,
``{"text"}`` out, so OpenAI's clients transcribe with a served ASR model).

Inputs are decoded in the thread pool under the same limits as ``/v1/embed``'s (`items.decode_query`); the
model runs in the generation batcher's worker thread (`gen_batching`), merged with concurrent requests for the
same model and decoding options; the event loop only awaits.

Streams (``"stream": true``) are ``text/event-stream``: one ``data: {json}`` event per new piece of text, then
a final event with the whole text, then ``data: [DONE]``. An error after the stream started is an event
``data: {"error": {...}}`` (then ``[DONE]``); errors found before (bad input, beam search, a full queue) are
ordinary HTTP errors. A client that leaves mid-stream abandons its request: its rows stop streaming, and a
batch whose clients have all left stops at its next decoding step."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from starlette.datastructures import FormData, UploadFile

from ..data.sample import Sample
from ..errors import ApiError, BatcherClosed, InvalidInput, NotFound, PolymodalError, QueueFull
from ..lm.decoding import MAX_NEW_TOKENS, DecodingOptions
from ..models.generative import GenerativeModel
from .gen_batching import GenJob, GenResult
from .items import decode_query
from .jsonbody import CheckedRoute
from .media import RequestBudget, check_audio
from .openai_api import ERRORS as OPENAI_ERRORS
from .openai_api import OPENAI_TAG, openai_error
from .routes import JSON_ERRORS, reader
from .schemas import AUDIO_DOC, IMAGE_DOC, VideoIn
from .service import Service

log = logging.getLogger("polymodal.serve")
router = APIRouter(route_class=CheckedRoute)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}   # nginx: pass events on at once
DONE = b"data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------------ schemas

class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a served generative model (GET /v1/models); may be left out "
                                                "when the server serves one")
    image: str | None = Field(None, description=IMAGE_DOC)
    audio: str | None = Field(None, description=AUDIO_DOC)
    video: VideoIn | None = None
    prompt: str | None = Field(None, description="the question (vqa) or prompt (lm)")
    question: str | None = Field(None, description="another name for prompt")
    decoding: dict[str, Any] | None = Field(None, description="polymodal.lm.DecodingOptions fields: max_new_tokens "
                                            f"(<= {MAX_NEW_TOKENS}), num_beams, do_sample, temperature, top_k, top_p, "
                                            "repetition_penalty, stop, seed")
    stream: bool = Field(False, strict=True, description="answer with server-sent events (not with num_beams > 1)")


class GenerateUsage(BaseModel):
    tokens: int = Field(description="tokens generated")


class GenerateResponse(BaseModel):
    model: str
    task: str
    text: str
    usage: GenerateUsage


_SSE_DOC = {"text/event-stream": {"schema": {"type": "string"},
                                  "example": 'data: {"delta":"a red"}\n\ndata: {"delta":" circle"}\n\n'
                                             'data: {"done":true,"model":"cap","task":"captioning",'
                                             '"text":"a red circle","usage":{"tokens":3}}\n\ndata: [DONE]\n\n'}}


# ------------------------------------------------------------------------------------------------ shared

def pick_model(svc: Service, name: str | None, task: str | None = None) -> tuple[str, GenerativeModel]:
    """The generative model a request names (404 if unknown); left out: the only one (of ``task``)."""
    models = {n: gm for n, gm in svc.generators.items() if task is None or gm.task == task}
    if name is None:
        if len(models) == 1:
            return next(iter(models.items()))
        if not svc.generators:
            raise ApiError(404, "ModelNotFound", "this server serves no generative model (start it with "
                           "--generate RUN)", field="model")
        raise InvalidInput(f"give model: this server generates with {', '.join(svc.generators)}", field="model")
    gm = svc.generators.get(name)
    if gm is None:
        served = ", ".join(repr(n) for n in svc.generators) or "none"
        raise ApiError(404, "ModelNotFound", f"the model {name!r} does not exist (generative models of this server: "
                       f"{served}; GET /v1/models)", field="model")
    if task is not None and gm.task != task:
        raise InvalidInput(f"{name!r} is a {gm.task} model, not {task} (models for {task}: "
                           f"{', '.join(models) or 'none'})", field="model")
    return name, gm


def decoding_options(obj: dict[str, Any] | None) -> DecodingOptions:
    try:
        return DecodingOptions.from_dict(obj)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field=f"decoding.{exc.field}" if exc.field else "decoding") from None
    except TypeError as exc:   # a value of a type the dataclass cannot even compare
        raise InvalidInput(str(exc), field="decoding") from None


async def wait_for(svc: Service, job: GenJob) -> GenResult:
    """Queue the request (a full queue raises at once) and await its text; a cancelled wait abandons it."""
    future = svc.generation.submit(job)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        job.abandon()
        raise


@dataclass(frozen=True)
class StreamFormat:
    delta: Callable[[str], dict[str, Any]]
    done: Callable[[GenResult], dict[str, Any]]
    error: Callable[[int, str, str, str | None], dict[str, Any]]


def _sse(obj: Any) -> bytes:
    return b"data: " + to_json(obj) + b"\n\n"


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):   # the loop is gone (server shut down): nobody is listening
        loop.call_soon_threadsafe(fn, *args)


def stream_response(svc: Service, job: GenJob, fmt: StreamFormat) -> StreamingResponse:
    """Queue the request (a full queue raises now, as an HTTP error) and stream its text as it is generated."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    job.on_delta = lambda d: _call_soon(loop, pieces.put_nowait, d)   # from the worker thread, in order
    future = svc.generation.submit(job)
    future.add_done_callback(lambda _: _call_soon(loop, pieces.put_nowait, None))

    async def events() -> AsyncIterator[bytes]:
        try:
            while (piece := await pieces.get()) is not None:
                yield _sse(fmt.delta(piece))
            if future.cancelled():   # abandoned while queued: only when the client has left
                return
            exc = future.exception()
            yield _sse(fmt.done(future.result()) if exc is None else fmt.error(*error_parts(exc)))
            yield DONE
        finally:
            job.abandon()   # the client left (or all is sent: then it changes nothing)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def error_parts(exc: BaseException) -> tuple[int, str, str, str | None]:
    """(status, kind, message, field) of an error met after a stream started (as the app's handlers map them)."""
    if isinstance(exc, PolymodalError):
        status = 422 if isinstance(exc, InvalidInput) else 404 if isinstance(exc, NotFound) else 500
        return status, type(exc).__name__, exc.message, exc.field
    if isinstance(exc, QueueFull | BatcherClosed):
        return 503, "Overloaded", str(exc), None
    log.error("generation failed", exc_info=exc)
    return 500, "InternalError", "internal server error", None


def _our_error(status: int, kind: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "field": field}}


# ------------------------------------------------------------------------------------------------ /v1/generate

def _sample(svc: Service, gm: GenerativeModel, media: dict[str, Any], prompt: str | None) -> Sample:
    """Decode the request's media (limits checked from their headers first) into the model's sample."""
    decoded = decode_query(media, svc.settings)
    return gm.samples(**decoded, prompt=prompt)[0]


def _prompt(svc: Service, body: GenerateRequest) -> str | None:
    if body.prompt is not None and body.question is not None:
        raise InvalidInput("give prompt or question, not both", field="question")
    field = "prompt" if body.question is None else "question"
    text = body.prompt if body.question is None else body.question
    if text is not None:
        if not text.strip():
            raise InvalidInput(f"{field} is empty", field=field)
        if len(text) > svc.settings.max_text_chars:
            raise InvalidInput(f"{field} of {len(text)} characters exceeds the limit of "
                               f"{svc.settings.max_text_chars}", field=field)
    return text


@router.post("/v1/generate", response_model=GenerateResponse, tags=["generate"],
             responses={**JSON_ERRORS, 200: {"content": _SSE_DOC, "description": "The text, or (stream) its "
                                                                                   "events"}})
async def generate(body: GenerateRequest, svc: Service = Depends(reader)) -> Response:
    """Generate text from an image, a clip, audio and/or a prompt with a served generative model: a caption,
    the answer to a question about an image, a transcript, a continuation. With ``"stream": true``, server-sent
    events: ``{"delta"}`` per new piece of text, then ``{"done": true, "text", ...}``, then ``[DONE]``."""
    name, gm = pick_model(svc, body.model)
    prompt = _prompt(svc, body)
    options = decoding_options(body.decoding)
    if body.stream and not options.streamable:
        raise InvalidInput("beam search (num_beams > 1) cannot stream: a beam's text is only known at the end; "
                           "use num_beams 1 or stream false", field="stream")
    media = body.model_dump(include={"image", "audio"}, exclude_none=True)
    if body.video is not None:
        media["video"] = body.video
    sample = await run_in_threadpool(_sample, svc, gm, media, prompt)
    job = GenJob(name, sample, prompt, options)

    def done(res: GenResult) -> dict[str, Any]:
        return {"done": True, "model": name, "task": gm.task, "text": res.text, "usage": {"tokens": res.tokens}}

    if body.stream:
        return stream_response(svc, job, StreamFormat(lambda d: {"delta": d}, done, _our_error))
    res = await wait_for(svc, job)
    return Response(to_json({k: v for k, v in done(res).items() if k != "done"}), media_type="application/json")


# -------------------------------------------------------------------------------- /v1/audio/transcriptions

RESPONSE_FORMATS = ("json", "text", "verbose_json")
# OpenAI's other parameters: accepted and ignored (no timestamps, chunking, log-probs or speaker names here)
IGNORED_FIELDS = frozenset({"prompt", "timestamp_granularities[]", "timestamp_granularities", "include[]",
                            "include", "chunking_strategy", "keywords[]", "languages[]", "known_speaker_names[]",
                            "known_speaker_references[]", "user"})
KNOWN_FIELDS = IGNORED_FIELDS | {"file", "model", "language", "response_format", "temperature", "stream"}
_FORM_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "model"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the audio file (WAV, FLAC, OGG or MP3)"},
        "model": {"type": "string", "description": "a served asr model (GET /v1/models)"},
        "language": {"type": "string", "description": "ISO-639-1 code; echoed by verbose_json, not used"},
        "prompt": {"type": "string", "description": "accepted and ignored"},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0,
                        "description": "0: greedy decoding; > 0: sampling at this temperature"},
        "stream": {"type": "boolean", "default": False,
                   "description": "server-sent transcript.text.delta / transcript.text.done events"}}}}}}}


@dataclass(frozen=True)
class TranscriptionForm:
    audio: bytes
    model: str
    language: str | None
    response_format: str
    options: DecodingOptions
    stream: bool


def _text_field(form: FormData, name: str, default: str | None = None) -> str | None:
    value = form.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidInput("expected a text field, got a file", field=name)
    return value


async def read_form(request: Request) -> TranscriptionForm:
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError(415, "UnsupportedMediaType", "send multipart/form-data with the audio as the file field "
                       "(curl -F file=@clip.wav -F model=NAME)", field="file")
    async with request.form(max_files=1, max_fields=len(KNOWN_FIELDS)) as form:
        unknown = sorted(set(form.keys()) - KNOWN_FIELDS)
        if unknown:
            raise InvalidInput("unknown parameter", field=unknown[0])
        upload = form.get("file")
        if upload is None:
            raise InvalidInput("give the audio file as the multipart field 'file'", field="file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("file must be a file upload, not a text field", field="file")
        audio = await upload.read()
        model = _text_field(form, "model")
        if not model:
            raise InvalidInput("give model: a served asr model (GET /v1/models)", field="model")
        fmt = _text_field(form, "response_format", "json") or "json"
        if fmt in ("srt", "vtt", "diarized_json"):
            raise InvalidInput(f"response_format {fmt} needs timestamps or speakers, which this server does not "
                               f"produce: use {', '.join(RESPONSE_FORMATS)}", field="response_format")
        if fmt not in RESPONSE_FORMATS:
            raise InvalidInput(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                               field="response_format")
        return TranscriptionForm(audio, model, _language(_text_field(form, "language")), fmt,
                                 _temperature(_text_field(form, "temperature")),
                                 _flag(_text_field(form, "stream"), "stream"))


def _language(value: str | None) -> str | None:
    if value is not None and (len(value) > 32 or not value.replace("-", "").replace("_", "").isalpha()):
        raise InvalidInput(f"expected a language code such as en, got {value[:40]!r}", field="language")
    return value or None


def _temperature(value: str | None) -> DecodingOptions:
    """OpenAI's temperature: 0 (the default) decodes greedily, > 0 samples at that temperature."""
    try:
        t = float(value) if value is not None and value.strip() else 0.0
    except ValueError:
        t = math.nan
    if not 0 <= t <= 1:
        raise InvalidInput(f"temperature must be a number in [0, 1], got {value!r}", field="temperature")
    if t == 0:
        return DecodingOptions(max_new_tokens=MAX_NEW_TOKENS)
    return DecodingOptions(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=t)


def _flag(value: str | None, field: str) -> bool:
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise InvalidInput(f"expected true or false, got {value[:20]!r}", field=field)


def _audio_sample(svc: Service, gm: GenerativeModel, audio: bytes) -> tuple[Sample, float]:
    """The uploaded file, checked from its header against the limits, decoded: (sample, seconds)."""
    if not audio:
        raise InvalidInput("the file is empty", field="file")
    # the same checks and decoder as base64 audio on the other endpoints (a copy of at most max_bytes)
    decode = check_audio(base64.b64encode(audio).decode("ascii"), "file", svc.settings.limits,
                         RequestBudget(svc.settings.limits))
    wave, rate = decode()
    return gm.samples(audio=(wave, rate))[0], len(wave) / rate


def _usage(tokens: int) -> dict[str, Any]:
    return {"type": "tokens", "input_tokens": 0, "output_tokens": tokens, "total_tokens": tokens}


@router.post("/v1/audio/transcriptions", tags=[OPENAI_TAG], openapi_extra=_FORM_DOC,
             responses={**OPENAI_ERRORS, 200: {"description": "json: {text, usage}; text: the text; verbose_json: "
                                                              "{task, language, duration, text}",
                                               "content": {"text/plain": {"schema": {"type": "string"}},
                                                           **_SSE_DOC}},
                        415: {"description": "not multipart/form-data"}})
async def transcriptions(request: Request, svc: Service = Depends(reader)) -> Response:
    """OpenAI-compatible transcription of an audio file with a served asr model (``model``: its name)."""
    form = await read_form(request)
    name, gm = pick_model(svc, form.model, task="asr")
    sample, seconds = await run_in_threadpool(_audio_sample, svc, gm, form.audio)
    job = GenJob(name, sample, None, form.options)
    if form.stream:
        fmt = StreamFormat(lambda d: {"type": "transcript.text.delta", "delta": d},
                           lambda r: {"type": "transcript.text.done", "text": r.text, "usage": _usage(r.tokens)},
                           lambda *parts: openai_error(*parts)[1])
        return stream_response(svc, job, fmt)
    res = await wait_for(svc, job)
    if form.response_format == "text":
        return PlainTextResponse(res.text)
    if form.response_format == "verbose_json":
        return JSONResponse({"task": "transcribe", "language": form.language or "unknown",
                             "duration": round(seconds, 3), "text": res.text, "usage": _usage(res.tokens)})
    return JSONResponse({"text": res.text, "usage": _usage(res.tokens)})

