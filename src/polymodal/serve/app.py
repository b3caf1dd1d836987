"""`create_app`: the FastAPI application over a model and a folder of collections, and/or generative models.

The wiring lives here: the error contract (every error is JSON ``{"error": {"type", "message", "field"}}``),
the request body limit, request metrics and CORS. The settings and the service object the endpoints share are
in `service.py`, the endpoints in `routes.py` (which never import this module), the page in ``static/``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from ..errors import ApiError, BatcherClosed, Conflict, InvalidInput, NotFound, PolymodalError, QueueFull
from ..index import is_collection
from ..models.chat import ChatModel
from ..models.generative import GenerativeModel
from ..models.t2i_front import ImageGenerator
from .chat import CHAT_PATH
from .chat import router as chat_router
from .docs import router as docs_router
from .explain import router as explain_router
from .generation import router as generation_router
from .images import router as images_router
from .metrics import ServiceMetrics
from .openai_api import is_openai_path, openai_error
from .openai_api import router as openai_router
from .routes import router
from .schemas import INT64_MAX, INT64_MIN
from .service import ServeSettings, Service
from .store import CollectionStore

log = logging.getLogger("polymodal.serve")


def create_app(model: Any, root: str | Path | None = None, settings: ServeSettings | None = None, *,
               collection: str | Path | None = None, generators: Mapping[str, GenerativeModel] | None = None,
               chat_models: Mapping[str, ChatModel] | None = None,
               image_models: Mapping[str, ImageGenerator] | None = None) -> FastAPI:
    """The service over ``model`` (anything with ``embed(text=/image=/audio=/video=)``, ``modalities``, ``dim``).

    ``root``: a folder of collections (created if missing); new collections are created there.
    ``collection``: one collection folder served as the default (its folder name is its name); created empty
    (dim from the model, cosine, auto index) if it does not exist.
    ``generators``: generative models by the name they are served under (`generation.py`: /v1/generate,
    /v1/audio/transcriptions). With generators, ``model`` may be None: a generation-only service (no
    collections).
    ``chat_models``: chat models (`polymodal.models.chat.ChatModel`, e.g. an mllm run's) by served name; they
    and every generative model that can chat answer ``POST /v1/chat/completions`` (`chat.py`).
    ``image_models``: text->image models (`polymodal.models.t2i_front.ImageGenerator`) by served name, for
    ``POST /v1/images/generations`` (`images.py`)."""
    settings = settings or ServeSettings()
    if model is None:
        if not generators and not chat_models and not image_models:
            raise InvalidInput("give an embedding model, generative, chat or image models, or both", field="model")
        if root is not None or collection is not None:
            raise InvalidInput("collections need an embedding model", field="collection")
    pinned: dict[str, Path] = {}
    default = None
    if collection is not None:
        cpath = Path(collection)
        default = cpath.name
        pinned[default] = cpath
    rpath = Path(root) if root is not None else None
    if rpath is not None:
        rpath.mkdir(parents=True, exist_ok=True)
    store = CollectionStore(rpath, pinned, default)
    if default is not None and not is_collection(pinned[default]):  # a new (missing or empty) folder
        store.create(default, int(model.dim), "cosine", "auto")
    service = Service(model, store, settings, generators, chat_models, image_models)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="polymodal", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Embed text, images, audio and video into one space and search collections; "
                              "caption, answer questions about and transcribe them.")
    app.state.service = service
    _install_errors(app)
    app.include_router(router)
    app.include_router(explain_router)
    app.include_router(openai_router)
    app.include_router(generation_router)
    app.include_router(chat_router)
    app.include_router(images_router)
    app.include_router(docs_router)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderLimit, max_bytes=settings.max_header_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    return app


def _openapi(app: FastAPI, settings: ServeSettings) -> dict[str, Any]:
    """FastAPI's schema, plus the bounds that are settings of this server (k, frames, items per request)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        models = schema["components"]["schemas"]
        limits = settings.limits
        bounds = [("SearchRequest", "k", "maximum", settings.max_k),
                  ("VideoIn", "frames", "maximum", limits.max_frames),
                  ("UpsertRequest", "items", "maxItems", settings.max_items),
                  ("ChatCompletionRequest", "messages", "maxItems", settings.max_chat_messages)]
        for model, prop, key, value in bounds:
            models[model]["properties"][prop][key] = value
        for prop in ("text", "image", "audio", "video"):
            _nullable_list(models["EmbedRequest"]["properties"][prop])["maxItems"] = settings.max_items
        openai = models["EmbeddingsRequest"]["properties"]
        _nullable_list(openai["input"])["maxItems"] = settings.max_items
        next(p for p in openai["dimensions"]["anyOf"] if p.get("type") == "integer")["maximum"] = \
            app.state.service.dim
        _exact_int_bounds(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def _exact_int_bounds(node: Any) -> None:
    """FastAPI's OpenAPI models hold bounds as floats (2**63 - 1 would read 9.223372036854776e+18): integers again."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum"):
                v = node.get(key)
                if isinstance(v, float) and v.is_integer():
                    node[key] = INT64_MAX if v == float(INT64_MAX) else INT64_MIN if v == float(INT64_MIN) else int(v)
        for v in node.values():
            _exact_int_bounds(v)
    elif isinstance(node, list):
        for v in node:
            _exact_int_bounds(v)


def _nullable_list(prop: dict[str, Any]) -> dict[str, Any]:
    """The array branch of an ``X | None`` property (``anyOf: [array, null]``)."""
    return next(p for p in prop.get("anyOf", [prop]) if p.get("type") == "array")


# ------------------------------------------------------------------------------------------------ errors

def _printable(text: str) -> str:
    """Never fail to encode an error: a lone surrogate that slipped into a message becomes an escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    """The error body of the service, ``{"error": {"type", "message", "field"}}``, or OpenAI's envelope on the
    OpenAI-compatible routes (``path``; see `openai_api.openai_error`)."""
    message, field = _printable(message), _printable(field) if field is not None else None
    if is_openai_path(path) or path == CHAT_PATH:
        status, body = openai_error(status, kind, message, field)
        if status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse({"error": {"type": kind, "message": message, "field": field}}, status_code=status,
                        headers=headers)


_STATUS_KIND = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                405: "MethodNotAllowed", 409: "Conflict", 413: "PayloadTooLarge", 415: "UnsupportedMediaType",
                422: "InvalidInput", 431: "HeadersTooLarge", 503: "Unavailable"}


def _install_errors(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.kind, exc.message, exc.field, exc.headers, request.url.path)

    async def polymodal_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PolymodalError)
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else \
            422 if isinstance(exc, InvalidInput) else 500
        return error_response(status, type(exc).__name__, exc.message, exc.field, path=request.url.path)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = list(first.get("loc", ()))
        where = loc[0] if loc[:1] in (["body"], ["query"], ["path"]) else None
        field = field_path(loc[1:] if where else loc) or ("body" if where == "body" else None)
        return error_response(422, "InvalidInput", str(first.get("msg", "invalid request")), field,
                              path=request.url.path)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = getattr(exc, "kind", None) or _STATUS_KIND.get(exc.status_code, "HTTPError")
        return error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "field", None),
                              headers=dict(exc.headers or {}), path=request.url.path)

    async def queue_full(request: Request, exc: Exception) -> JSONResponse:
        retry = math.ceil(exc.retry_after_s) if isinstance(exc, QueueFull) else 5
        return error_response(503, "Overloaded", str(exc), headers={"Retry-After": str(retry)},
                              path=request.url.path)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "InternalError", "internal server error", path=request.url.path)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(PolymodalError, polymodal_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_exception_handler(BatcherClosed, queue_full)
    app.add_exception_handler(Exception, internal)


def field_path(loc: list[Any]) -> str | None:
    """pydantic's ``("items", 3, "text")`` -> ``items[3].text``, as the service's own errors name fields."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or None


# ------------------------------------------------------------------------------------------- middleware

async def _send_error(scope: Scope, send: Send, status: int, kind: str, message: str) -> None:
    response = error_response(status, kind, message, path=scope.get("path", ""))
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads the request
    return {"type": "http.disconnect"}


class HeaderLimit:
    """431 for a request line + headers over ``max_bytes``. (The server's h11 parser also stops buffering an
    unfinished header block beyond that size; this check is exact, whatever arrived in one read.)"""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + \
                sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > self.max_bytes:
                await _send_error(scope, send, 431, "HeadersTooLarge", f"the request line and headers ({size} bytes) "
                                  f"exceed the limit of {self.max_bytes} bytes")
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over ``max_bytes``: refused from Content-Length before reading, or while reading a
    chunked body; the app then sees the body already read (at most max_bytes were held in memory)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        too_big = f"request body exceeds the limit of {self.max_bytes} bytes"
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_error(scope, send, 413, "PayloadTooLarge", too_big)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await _send_error(scope, send, 413, "PayloadTooLarge", too_big)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequestMetrics:
    """Counts and times every HTTP request by method, route template (never the raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]   # an app that fails before answering is a server error ...

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and status[0] == 500:
                status[0] = 499   # ... unless the client left first (nginx's "client closed request")
            return message

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, watched, tracked)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.inc(method=method, route=route, status=str(status[0]))
            self.metrics.latency.observe(time.perf_counter() - start, method=method, route=route)

