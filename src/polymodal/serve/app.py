"""`create_app`: the FastAPI application over a model and a folder of collections.

Everything that is not an endpoint lives here: settings, the error contract (every error is JSON
``{"error": {"type", "message", "field"}}``), the request body limit, request metrics, API-key checks, CORS,
and the service object the endpoints share. The endpoints are in `routes.py`, the page in ``static/``."""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidInput, NotFound, PolymodalError
from .batching import BatcherClosed, MicroBatcher, QueueFull, model_embed_fn
from .media import MediaLimits
from .metrics import ServiceMetrics
from .store import CollectionStore, Conflict, is_collection

log = logging.getLogger("polymodal.serve")


@dataclass(frozen=True)
class ServeSettings:
    """Every knob of the service; the CLI maps its flags onto this."""

    api_key: str | None = None          # required for writes (and reads with auth_reads) when set
    auth_reads: bool = False
    max_batch: int = 32                 # items per model.embed call
    max_wait_ms: float = 5.0            # how long the first request of a batch may wait for company
    queue_size: int = 256               # embedding requests waiting; beyond -> 503
    max_body_bytes: int = 32 * 2**20    # whole request body; beyond -> 413
    max_items: int = 256                # inputs per /v1/embed modality, items per upsert
    max_k: int = 1000
    max_text_chars: int = 10_000
    limits: MediaLimits = field(default_factory=MediaLimits)
    thumb_size: int = 256               # stored thumbnails are at most this many pixels a side
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are given


class ApiError(Exception):
    """An HTTP error with the service's JSON body."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.field, self.headers = status, kind, message, field, headers


class Service:
    """What the endpoints share: model, settings, metrics, the micro-batcher and the collections."""

    def __init__(self, model: Any, store: CollectionStore, settings: ServeSettings):
        self.model = model
        self.store = store
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.batcher = MicroBatcher(model_embed_fn(model), max_batch=settings.max_batch,
                                    max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size,
                                    metrics=self.metrics)
        self.modalities = tuple(model.modalities)
        self.dim = int(model.dim)

    async def embed(self, modality: str, items: list[Any], field: str) -> np.ndarray:
        if modality not in self.modalities:
            raise InvalidInput(f"this model embeds {', '.join(self.modalities)}, not {modality}", field=field)
        return await self.batcher.embed_async(modality, items)

    def check_auth(self, request: Request, write: bool) -> None:
        key = self.settings.api_key
        if not key or not (write or self.settings.auth_reads):
            return
        given = request.headers.get("x-api-key", "").strip()
        auth = request.headers.get("authorization", "")
        if not given and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if not given:
            raise ApiError(401, "Unauthorized", "an API key is required (header 'Authorization: Bearer KEY' or "
                           "'X-API-Key: KEY')", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8")):
            raise ApiError(403, "Forbidden", "the API key is not valid")

    def close(self) -> None:
        self.batcher.close()
        self.store.close()


def create_app(model: Any, root: str | Path | None = None, settings: ServeSettings | None = None, *,
               collection: str | Path | None = None) -> FastAPI:
    """The service over ``model`` (anything with ``embed(text=/image=/audio=/video=)``, ``modalities``, ``dim``).

    ``root``: a folder of collections (created if missing); new collections are created there.
    ``collection``: one collection folder served as the default (its folder name is its name); created empty
    (dim from the model, cosine, auto index) if it does not exist."""
    from .routes import router  # the endpoints import this module's helpers

    settings = settings or ServeSettings()
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
    service = Service(model, store, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="polymodal", version=_version(), lifespan=lifespan,
                  description="Embed text, images, audio and video into one space and search collections.")
    app.state.service = service
    _install_errors(app)
    app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    return app


def _version() -> str:
    try:
        from .. import __version__
        return str(__version__)
    except ImportError:  # pragma: no cover
        return "0"


# ------------------------------------------------------------------------------------------------ errors

def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, "field": field}}, status_code=status,
                        headers=headers)


_STATUS_KIND = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                405: "MethodNotAllowed", 409: "Conflict", 413: "PayloadTooLarge", 415: "UnsupportedMediaType",
                422: "InvalidInput", 503: "Unavailable"}


def _install_errors(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.kind, exc.message, exc.field, exc.headers)

    async def polymodal_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PolymodalError)
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else \
            422 if isinstance(exc, InvalidInput) else 500
        return error_response(status, type(exc).__name__, exc.message, exc.field)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ())]
        field = ".".join(loc[1:] if loc[:1] in (["body"], ["query"], ["path"]) else loc) or None
        return error_response(422, "InvalidInput", str(first.get("msg", "invalid request")), field)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, _STATUS_KIND.get(exc.status_code, "HTTPError"), str(exc.detail),
                              headers=dict(exc.headers or {}))

    async def queue_full(_: Request, exc: Exception) -> JSONResponse:
        retry = math.ceil(exc.retry_after_s) if isinstance(exc, QueueFull) else 5
        return error_response(503, "Overloaded", str(exc), headers={"Retry-After": str(retry)})

    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "InternalError", "internal server error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(PolymodalError, polymodal_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_exception_handler(BatcherClosed, queue_full)
    app.add_exception_handler(Exception, internal)


# ------------------------------------------------------------------------------------------- middleware

async def _send_error(send: Send, status: int, kind: str, message: str) -> None:
    response = error_response(status, kind, message)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads the request
    return {"type": "http.disconnect"}


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
            await _send_error(send, 413, "PayloadTooLarge", too_big)
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
                await _send_error(send, 413, "PayloadTooLarge", too_big)
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
        status = [500]

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.inc(method=method, route=route, status=str(status[0]))
            self.metrics.latency.observe(time.perf_counter() - start, method=method, route=route)

