"""OpenAI-compatible endpoints: ``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /v1/models/{model}``, so
that OpenAI's client libraries and the RAG tools built on them (``base_url=http://HOST:PORT/v1``) embed with the
served model. (``POST /v1/audio/transcriptions`` is in `generation.py`, ``POST /v1/images/generations`` in
`images.py`; ``GET /v1/models`` lists the generative and image models too, with their ``task``.)

- ``input``: a string or a list of strings (at most ``ServeSettings.max_items``). An item that is a data URL,
  ``data:image/<type>;base64,...`` or ``data:audio/<type>;base64,...``, is an image or audio clip (polymodal's
  extension), decoded under the same limits and per-request budget as ``/v1/embed``. Token arrays (lists of
  ints, which OpenAI's API also takes) are refused with a 400 that says to send text: their ids belong to
  OpenAI's tokenizer, not to the served model's.
- ``model``: the served model's id (`Service.model_id`, listed by ``GET /v1/models``); another name is a 404
  ``model_not_found``, as OpenAI answers, rather than vectors of some other model than the one asked for.
- ``encoding_format``: ``"float"`` (default) or ``"base64"`` (little-endian float32 bytes, what OpenAI's Python
  client asks for unless told otherwise and decodes itself).
- ``dimensions``: the first N dimensions, re-normalised (as OpenAI's text-embedding-3 models shorten theirs); more
  than the model has, or anything but a JSON integer >= 1 (``true``, ``"3"``), is a 400.
- ``usage``: the text tokens the model read (its own tokenizer, up to its maximum text length; words when it
  exposes no tokenizer); media count 0. Counted in the thread pool (a tokenizer can take seconds on a big
  request, which would stall the event loop).

Errors on these routes use OpenAI's envelope, ``{"error": {"message", "type", "param", "code"}}`` (`openai_error`),
with the status codes OpenAI's clients map to their exception types: invalid input is a 400 (not the 422 of the
other routes), a missing or wrong API key a 401. The embeddings go through the micro-batcher with ``/v1/embed``'s."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from ..errors import ApiError, InvalidInput
from .items import prepare_one
from .jsonbody import CheckedRoute
from .media import RequestBudget
from .routes import finite_rows, reader
from .schemas import MAX_INPUTS
from .service import Service

OPENAI_TAG = "openai"
IMAGES_PATH = "/v1/images/generations"   # served by images.py
# a media item: a data URL of an image or audio file (video needs a frame count: /v1/embed only)
MEDIA_URL = re.compile(r"^data:(image|audio|video)/[\w.+-]+(?:;[\w=.+-]+)*;base64,", re.ASCII)


def is_openai_path(path: str) -> bool:
    """Whether errors on ``path`` use OpenAI's envelope."""
    return path in ("/v1/embeddings", "/v1/models", "/v1/audio/transcriptions", "/v1/chat/completions",
                    IMAGES_PATH) or \
        path.startswith("/v1/models/")


def openai_error(status: int, kind: str, message: str, field: str | None) -> tuple[int, dict[str, Any]]:
    """The service's error (status, kind, message, field) -> OpenAI's status and ``{"error": {...}}`` body.
    A 422 (invalid input) becomes OpenAI's 400 and a wrong key (403) its 401, so that OpenAI's clients raise
    ``BadRequestError`` and ``AuthenticationError``; ``code`` is the service's error kind in snake_case
    (``invalid_input``, ``model_not_found``, ``payload_too_large``, ``overloaded``)."""
    if status == 422:
        status = 400
    if status in (401, 403):
        status, code = 401, "invalid_api_key"
    else:
        code = re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
    kind_ = "server_error" if status >= 500 else "invalid_request_error"
    return status, {"error": {"message": message, "type": kind_, "param": field, "code": code}}


# ------------------------------------------------------------------------------------------------ schemas

class EmbeddingsRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body (unknown fields are refused, as OpenAI does)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the served model's id (GET /v1/models)")
    input: Any = Field(description="a string or a list of strings; items that are data URLs "
                                   "(data:image/png;base64,... or data:audio/wav;base64,...) are images or audio "
                                   "clips. Token arrays are not accepted.",
                       json_schema_extra={"anyOf": [{"type": "string"},
                                                    {"type": "array", "items": {"type": "string"},
                                                     "maxItems": MAX_INPUTS}]})
    encoding_format: Literal["float", "base64"] | None = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes")
    # strict: JSON true or "3" is not a dimension count (lax mode would take them as 1 and 3)
    dimensions: int | None = Field(None, ge=1, strict=True,
                                   description="keep the first N dimensions, re-normalised")
    user: str | None = Field(None, description="ignored (accepted for compatibility)")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="the vector, or its float32 bytes in base64")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    task: str = Field(default="embedding", description="polymodal's extension: embedding, or what a generative "
                                                       "model does (captioning, vqa, asr, lm, text_to_image)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


# ------------------------------------------------------------------------------------------------ routes

def _err(description: str) -> dict[str, Any]:
    return {"model": OpenAIErrorResponse, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err("Malformed JSON, or invalid input: an unknown field, an empty or unreadable input, too many inputs, "
              "media over the limits, token arrays, dimensions beyond the model's (param names it)"),
    401: _err("API key missing or wrong (code invalid_api_key)"),
    404: _err("Unknown model (code model_not_found)"),
    413: _err("The body is larger than the server's limit, or holds too many JSON values"),
    422: _err("Not used: invalid input is a 400 here, as in OpenAI's API"),
    503: _err("The embedding queue is full (Retry-After says when to come back)"),
}
router = APIRouter(route_class=CheckedRoute, tags=[OPENAI_TAG])
STARTED = int(time.time())


def model_cards(svc: Service) -> list[ModelCard]:
    """The embedding model (if any), then the generative models by name, then the image models by name."""
    cards = [ModelCard(id=svc.model_id, created=STARTED, owned_by="polymodal")] if svc.model_id is not None else []
    tasks = {**{name: gm.task for name, gm in svc.generators.items()},
             **{name: gen.task for name, gen in svc.image_models.items()}}
    return cards + [ModelCard(id=name, created=STARTED, owned_by="polymodal", task=task)
                    for name, task in tasks.items()]


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(svc: Service = Depends(reader)) -> ModelList:
    """The served models, in OpenAI's list format."""
    return ModelList(data=model_cards(svc))


# {model:path}: ids may hold slashes (Hugging Face style, ``BAAI/bge-small``), which OpenAI's client sends as is
@router.get("/v1/models/{model:path}", response_model=ModelCard, responses=ERRORS)
async def get_model(model: Annotated[str, Path()], svc: Service = Depends(reader)) -> ModelCard:
    card = next((c for c in model_cards(svc) if c.id == model), None)
    if card is None:
        raise ApiError(404, "ModelNotFound", f"the model {model!r} does not exist: this server serves "
                       f"{', '.join(repr(c.id) for c in model_cards(svc)) or 'no model'} (GET /v1/models)",
                       field="model")
    return card


def check_model(svc: Service, name: str) -> str:
    """The embedding model's id, if ``name`` is it (else 404)."""
    if name in svc.generators or name in svc.image_models:
        task = svc.generators[name].task if name in svc.generators else svc.image_models[name].task
        raise InvalidInput(f"{name!r} is a generative model ({task}), not an embedding model", field="model")
    if svc.model_id is None or name != svc.model_id:
        serves = f"embeds with {svc.model_id!r}" if svc.model_id is not None else "serves no embedding model"
        raise ApiError(404, "ModelNotFound", f"the model {name!r} does not exist: this server {serves} "
                       "(GET /v1/models)", field="model")
    return svc.model_id


@router.post("/v1/embeddings", response_model=EmbeddingList, responses=ERRORS)
async def embeddings(body: EmbeddingsRequest, svc: Service = Depends(reader)) -> Response:
    """OpenAI-compatible embeddings of texts, and of images and audio clips given as data URLs."""
    model_id = check_model(svc, body.model)
    items = input_items(body.input, svc.settings.max_items)
    dims = body.dimensions
    if dims is not None and dims > svc.dim:
        raise InvalidInput(f"dimensions={dims} exceeds the model's {svc.dim} dimensions", field="dimensions")
    listed = isinstance(body.input, list)
    groups = classify(items, listed)
    if groups.keys() <= {"text"}:  # cheap: no need to leave the event loop
        decoded = decode(groups, svc, listed)
    else:
        decoded = await run_in_threadpool(decode, groups, svc, listed)
    names = list(decoded)
    outs = await asyncio.gather(*(svc.embed(m, [v for _, v in decoded[m]], _field(decoded[m][0][0], listed))
                                  for m in names))
    vectors = np.empty((len(items), svc.dim), np.float32)
    for m, out in zip(names, outs, strict=True):
        vectors[[i for i, _ in decoded[m]]] = out
    if dims is not None and dims < svc.dim:
        vectors = shorten(vectors, dims)
    # the tokenizer can take seconds on a big request: off the event loop, and only once the embedding succeeded
    # (a request refused with a 503 costs no tokenizing)
    texts = [v for _, v in groups.get("text", [])]
    tokens = await run_in_threadpool(count_tokens, svc.model, texts) if texts else 0
    return Response(render(vectors, body.encoding_format == "base64", model_id, tokens),
                    media_type="application/json")


def input_items(value: Any, max_items: int) -> list[Any]:
    """``input`` as a list of items; token arrays and empty or overlong lists are refused (400, param input)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InvalidInput("input is an empty list: give a string or a list of strings", field="input")
    if len(items) > max_items:
        raise InvalidInput(f"{len(items)} inputs exceed the limit of {max_items} per request", field="input")
    if all(_is_int(x) or (isinstance(x, list) and x and all(_is_int(t) for t in x)) for x in items):
        raise InvalidInput("token arrays are not accepted: this server tokenizes with its own model, so send the "
                           "text itself (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))",
                           field="input")
    return items


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def classify(items: list[Any], listed: bool) -> dict[str, list[tuple[int, Any]]]:
    """{modality: [(position, item)]}: data URLs of images and audio, the other strings are text."""
    groups: dict[str, list[tuple[int, Any]]] = {}
    for i, item in enumerate(items):
        field = _field(i, listed)
        if not isinstance(item, str):
            raise InvalidInput(f"expected a string, got {_json_type(item)}", field=field)
        m = MEDIA_URL.match(item)
        modality = m.group(1) if m else "text"
        if modality == "video":
            raise InvalidInput("video is not accepted here: send it to /v1/embed as a film strip with its frame "
                               "count", field=field)
        groups.setdefault(modality, []).append((i, item))
    return groups


def _json_type(x: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(x), type(x).__name__)


def _field(i: int, listed: bool) -> str:
    return f"input[{i}]" if listed else "input"


def decode(groups: dict[str, list[tuple[int, Any]]], svc: Service,
           listed: bool) -> dict[str, list[tuple[int, Any]]]:
    """Check every input (media from their headers, against one request budget), then decode them."""
    budget = RequestBudget(svc.settings.limits)
    pending = {m: [(i, prepare_one(m, v, svc.settings, _field(i, listed), budget))
                   for i, v in values] for m, values in groups.items()}
    return {m: [(i, dec()) for i, dec in decoders] for m, decoders in pending.items()}


def shorten(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` dimensions of each row, L2-normalised again (a zero row stays zero)."""
    head = np.ascontiguousarray(vectors[:, :dims], dtype=np.float32)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    out: np.ndarray = head / np.where(norms > 0, norms, 1.0)
    return out.astype(np.float32, copy=False)


def count_tokens(model: Any, texts: list[str]) -> int:
    """Text tokens the model reads: its tokenizer's, up to its maximum text length, when it exposes one
    (``model.transform.text``, as `EmbeddingModel` does); otherwise whitespace-separated words."""
    if not texts:
        return 0
    transform = getattr(model, "transform", None)
    tokenizer = getattr(transform, "text", None)
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        max_len = getattr(transform, "max_text_len", None)
        try:
            return sum(len(encode(t, max_len)) for t in texts)
        except Exception:  # noqa: BLE001 - usage is informative; never fail a request over it
            pass
    return sum(len(t.split()) for t in texts)


def render(vectors: np.ndarray, as_base64: bool, model_id: str, tokens: int) -> bytes:
    """The response body, built directly (a pydantic model per vector costs more than the encoding itself)."""
    finite_rows(vectors)
    if as_base64:
        rows: list[Any] = [base64.b64encode(v.astype("<f4", copy=False).tobytes()).decode("ascii") for v in vectors]
    else:
        rows = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    body = {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return to_json(body)  # see routes.finite_rows

