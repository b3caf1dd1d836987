"""`ServeSettings` (every knob of the service) and `Service` (what the endpoints share: model, settings,
metrics, the micro-batcher, the collections, API-key checks, and the generative models with their batcher).

The embedding model is optional when generative models are served (a generation-only service): the embedding
endpoints then answer 404. Chat models (`Service.chat_models`) are every served generative model that can chat
(`polymodal.models.chat.as_chat_model`) plus the chat models given by name (``create_app(chat_models=...)``).
Each is queued in the generation batcher as a `ConversationRunner` under `chat_key(name)`; a chat model given by
name is also a generative model (listed by ``GET /v1/models``, asked one-turn questions by ``/v1/generate``).
Image models (`polymodal.models.t2i_front.ImageGenerator`, ``POST /v1/images/generations``) each get one worker
thread (`ImageWorkers`)."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np
from fastapi import Request

from ..errors import ApiError, BatcherClosed, InvalidInput, QueueFull
from ..models.chat import ChatModel, ConversationRunner, as_chat_model
from ..models.generative import GenerativeModel
from ..models.t2i_front import ImageGenerator
from .batching import MicroBatcher, model_embed_fn
from .gen_batching import GenerationBatcher
from .media import MediaLimits
from .metrics import ServiceMetrics
from .schemas import MAX_INPUTS
from .store import CollectionStore


@dataclass(frozen=True)
class ServeSettings:
    """Every knob of the service; the CLI maps its flags onto this."""

    api_key: str | None = None          # required for writes (and reads with auth_reads) when set
    auth_reads: bool = False
    max_batch: int = 32                 # items per model.embed call (rows per generate call: at most 64)
    max_wait_ms: float = 5.0            # how long the first request of a batch may wait for company
    queue_size: int = 256               # embedding requests waiting (and generation requests); beyond -> 503
    max_body_bytes: int = 32 * 2**20    # whole request body; beyond -> 413
    max_items: int = 256                # inputs per /v1/embed modality, items per upsert
    max_k: int = 1000
    max_text_chars: int = 10_000       # one text; all the messages of a chat request together
    max_chat_messages: int = 32         # messages of one chat request
    # JSON values (lists, objects, strings, numbers, literals) in one body (413); None: max_items * (dim + 1024) + 4096
    max_json_values: int | None = None
    limits: MediaLimits = field(default_factory=MediaLimits)
    thumb_size: int = 256               # stored thumbnails are at most this many pixels a side
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are given
    # the HTTP server (`polymodal.serve.server`; not the app): connections, timeouts, header size
    max_connections: int = 256          # open connections; beyond: 503 (uvicorn's limit_concurrency)
    keep_alive_s: int = 5               # an idle keep-alive connection is closed after this many seconds
    header_timeout_s: float = 10.0      # a connection must send its request line and headers within this
    body_timeout_s: float = 30.0        # ... and then, from the end of its headers, its whole body within this
    max_header_bytes: int = 16 * 1024   # request line + headers; beyond: 400
    # the id the OpenAI-compatible endpoints serve the model under; None: the folder it was loaded from
    model_name: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_items <= MAX_INPUTS:   # the request schemas cap their lists at MAX_INPUTS
            raise InvalidInput(f"must be in 1..{MAX_INPUTS}, got {self.max_items}", field="max_items")
        if self.max_chat_messages < 1:
            raise InvalidInput(f"must be >= 1, got {self.max_chat_messages}", field="max_chat_messages")


class Service:
    """What the endpoints share: model, settings, metrics, the micro-batcher and the collections, and the
    generative models (by the name they are served under) with their batcher."""

    def __init__(self, model: Any, store: CollectionStore, settings: ServeSettings,
                 generators: Mapping[str, GenerativeModel] | None = None,
                 chat_models: Mapping[str, ChatModel] | None = None,
                 image_models: Mapping[str, ImageGenerator] | None = None):
        self.model = model   # None: no embedding model (generation only)
        self.store = store
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.batcher = MicroBatcher(model_embed_fn(model), max_batch=settings.max_batch,
                                    max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size,
                                    metrics=self.metrics)
        self.modalities: tuple[str, ...] = tuple(model.modalities) if model is not None else ()
        self.dim = int(model.dim) if model is not None else 0
        self.model_id: str | None = served_model_id(model, settings.model_name) if model is not None else None
        self.generators, self.chat_models = _with_chat(dict(generators or {}), dict(chat_models or {}))
        if self.model_id is not None and self.model_id in self.generators:
            raise InvalidInput(f"the name {self.model_id!r} is both the embedding model's and a generative "
                               "model's", field="generate")
        self.image_models: dict[str, ImageGenerator] = dict(image_models or {})
        _check_image_names(self.image_models, self.model_id, self.generators, self.chat_models)
        self.images = ImageWorkers(list(self.image_models), settings.queue_size)
        runners = {chat_key(n): ConversationRunner.of(cm) for n, cm in self.chat_models.items()}
        self.generation = GenerationBatcher({**self.generators, **runners}, max_batch=settings.max_batch,
                                            max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size)
        self.max_json_values = settings.max_json_values or settings.max_items * (self.dim + 1024) + 4096
        # os.environ holds undecodable bytes as surrogates ("surrogateescape"): give them back as the bytes
        self._key = settings.api_key.encode("utf-8", "surrogateescape") if settings.api_key else None

    async def embed(self, modality: str, items: list[Any], field: str) -> np.ndarray:
        if self.model is None:
            served = [*self.generators, *self.image_models]
            raise ApiError(404, "NotFound", "this server serves no embedding model, only generative ones "
                           f"({', '.join(served)}): see POST /v1/generate and /v1/images/generations",
                           field="model")
        if modality not in self.modalities:
            raise InvalidInput(f"this model embeds {', '.join(self.modalities)}, not {modality}", field=field)
        return await self.batcher.embed_async(modality, items)

    def check_auth(self, request: Request, write: bool) -> None:
        """Keys are compared as bytes, in constant time: the configured key as UTF-8, the header as the bytes the
        client sent (Starlette decodes header bytes as latin-1, which ``encode("latin-1")`` undoes exactly)."""
        if self._key is None or not (write or self.settings.auth_reads):
            return
        # strip only what HTTP calls whitespace: str.strip() would also eat latin-1 \xa0 and \x85, which are
        # bytes inside UTF-8 characters ("à" is C3 A0)
        given = request.headers.get("x-api-key", "").strip(" \t")
        auth = request.headers.get("authorization", "")
        if not given and auth[:7].lower() == "bearer ":
            given = auth[7:].strip(" \t")
        if not given:
            raise ApiError(401, "Unauthorized", "an API key is required (header 'Authorization: Bearer KEY' or "
                           "'X-API-Key: KEY')", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode("latin-1"), self._key):
            raise ApiError(403, "Forbidden", "the API key is not valid")

    def close(self) -> None:
        self.batcher.close()
        self.generation.close()
        self.images.close()
        self.store.close()


def chat_key(name: str) -> str:
    """The generation batcher's name for the chat model served as ``name`` (no served name holds a colon)."""
    return f"chat:{name}"


def _with_chat(generators: dict[str, GenerativeModel], chat: dict[str, ChatModel]
               ) -> tuple[dict[str, GenerativeModel], dict[str, ChatModel]]:
    """(generative models, chat models): the named chat models join the generative ones as runners, and every
    generative model that can chat joins the chat models."""
    both = sorted(set(generators) & set(chat))
    if both:
        raise InvalidInput(f"the name {both[0]!r} is both a generative model's and a chat model's", field="chat")
    capable = {n: cm for n, gm in generators.items() if (cm := as_chat_model(gm)) is not None}
    return {**generators, **{n: ConversationRunner.of(cm) for n, cm in chat.items()}}, {**capable, **chat}


def _check_image_names(images: Mapping[str, ImageGenerator], model_id: str | None,
                       generators: Mapping[str, GenerativeModel], chat: Mapping[str, ChatModel]) -> None:
    """Every served name means one model: an image model's may not be another model's."""
    for name in images:
        if name == model_id or name in generators or name in chat:
            what = "the embedding model's" if name == model_id else "a generative model's"
            raise InvalidInput(f"the name {name!r} is both an image model's and {what}", field="generate")


class ImageQueueFull(QueueFull):
    def __str__(self) -> str:
        return "the image queue of this model is full; retry later"


class ImageWorkers:
    """One worker thread per image model, so that a model makes one request's pictures at a time (sampling is
    CPU-bound and already uses the cores torch gives it: two at once would only share them, and double the
    memory). At most ``queue_size`` requests per model are held (running or waiting); more get a 503."""

    def __init__(self, names: list[str], queue_size: int):
        self.queue_size = queue_size
        self._pools = {n: ThreadPoolExecutor(1, thread_name_prefix=f"images-{n}") for n in names}
        self._held = dict.fromkeys(names, 0)
        self._seconds = dict.fromkeys(names, 5.0)   # a running mean of one request's time, for Retry-After
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, name: str, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn()`` on ``name``'s worker (after the requests before it); a full queue raises at once."""
        with self._lock:
            if self._closed:
                raise BatcherClosed("the image workers have stopped")
            if self._held[name] >= self.queue_size:
                raise ImageQueueFull(max(1.0, self._held[name] * self._seconds[name]))
            self._held[name] += 1
        try:
            return self._pools[name].submit(self._timed, name, fn)
        except BaseException:
            self._release(name)
            raise

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            took = time.perf_counter() - start
            with self._lock:
                self._seconds[name] = 0.7 * self._seconds[name] + 0.3 * took
            self._release(name)

    def _release(self, name: str) -> None:
        with self._lock:
            self._held[name] -= 1

    def cancel(self, name: str, future: Future[Any]) -> None:
        """Drop a request that has not started (its client left); a running one finishes."""
        if future.cancel():
            self._release(name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def served_model_id(model: Any, configured: str | None = None) -> str:
    """The id the OpenAI-compatible endpoints serve the model under: ``configured`` when given, else the name of
    the folder it was loaded from (`EmbeddingModel.name`: ``runs/clip`` -> ``clip``), else ``polymodal``."""
    if configured:
        return configured
    name = getattr(model, "name", None)
    if isinstance(name, str) and name.strip():
        return PurePath(name.rstrip("/\\")).name or name
    return "polymodal"
