"""`ServeSettings` (every knob of the service) and `Service` (what the endpoints share: model, settings,
metrics, the micro-batcher, the collections, API-key checks)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request

from ..errors import ApiError, InvalidInput
from .batching import MicroBatcher, model_embed_fn
from .media import MediaLimits
from .metrics import ServiceMetrics
from .store import CollectionStore


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
