"""Dynamic micro-batching: concurrent embedding requests of one modality become one ``model.embed`` call.

Requests enter a bounded queue (a full queue raises `QueueFull`, which the service answers with 503 and
Retry-After). One worker thread -- never the event loop -- takes the oldest request's modality, waits until
``max_batch`` items of that modality are pending or the oldest has waited ``max_wait_ms``, merges those requests
(in arrival order) into one call, and hands each request its own rows. A model error inside a merged call is
retried request by request, so one bad input fails only its own request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BatcherClosed, QueueFull
from .metrics import ServiceMetrics

EmbedFn = Callable[[str, list[Any]], np.ndarray]


@dataclass
class _Request:
    modality: str
    items: list[Any]
    future: Future[np.ndarray] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


def model_embed_fn(model: Any) -> EmbedFn:
    """Adapt a model with ``embed(text=..., image=..., audio=..., video=...)`` to ``fn(modality, items)``."""
    def embed(modality: str, items: list[Any]) -> np.ndarray:
        return np.asarray(model.embed(**{modality: items}), dtype=np.float32)
    return embed


class MicroBatcher:
    """Groups concurrent ``embed(modality, items)`` requests into few model calls; thread-safe, loop-agnostic.
    ``clock``: the seconds source that arrivals and the ``max_wait_ms`` deadline are measured on (tests inject
    a controllable one)."""

    def __init__(self, embed_fn: EmbedFn, *, max_batch: int = 32, max_wait_ms: float = 5.0, queue_size: int = 256,
                 metrics: ServiceMetrics | None = None, clock: Callable[[], float] = time.monotonic):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.embed_fn = embed_fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics or ServiceMetrics()
        self._clock = clock
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_call_s = 0.05  # running estimate of one model call, for Retry-After

    # ------------------------------------------------------------------ client side

    def submit(self, modality: str, items: Sequence[Any]) -> Future[np.ndarray]:
        """Queue one request; its future resolves to float32 ``(len(items), D)``. Raises `QueueFull`."""
        req = _Request(modality, list(items), arrived=self._clock())
        with self._cond:
            if self._closed:
                raise BatcherClosed("the embedding worker has stopped")
            if len(self._pending) >= self.queue_size:
                self.metrics.rejected.inc()
                raise QueueFull(self.retry_after())
            self._pending.append(req)
            self.metrics.queue_depth.set(len(self._pending))
            self._ensure_worker()
            self._cond.notify()
        return req.future

    def embed(self, modality: str, items: Sequence[Any]) -> np.ndarray:
        """Blocking form of `submit` (for threads)."""
        out: np.ndarray = self.submit(modality, items).result()
        return out

    async def embed_async(self, modality: str, items: Sequence[Any]) -> np.ndarray:
        """Awaitable form of `submit`: the event loop only waits, the model runs in the worker thread."""
        return await asyncio.wrap_future(self.submit(modality, items))

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained: calls needed for it times the recent call time."""
        calls = max(1, -(-len(self._pending) // self.max_batch))
        return max(1.0, calls * self._last_call_s)

    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; requests still queued fail with `BatcherClosed`."""
        with self._cond:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self.metrics.queue_depth.set(0)
            self._cond.notify_all()
        for req in left:
            req.future.set_exception(BatcherClosed("the service is shutting down"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side

    def _ensure_worker(self) -> None:  # called with the lock held
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="polymodal-embed", daemon=True)
            self._thread.start()

    def _take_batch(self) -> list[_Request] | None:
        """Block until a batch is due, then pop it (requests of the oldest request's modality, in order)."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._pending:
                    self._cond.wait()
                    continue
                oldest = self._pending[0]
                ready = sum(len(r.items) for r in self._pending if r.modality == oldest.modality)
                wait = oldest.arrived + self.max_wait - self._clock()
                if ready >= self.max_batch or wait <= 0:
                    break
                self._cond.wait(wait)
            batch: list[_Request] = []
            rest: deque[_Request] = deque()
            size = 0
            for req in self._pending:
                # the first request is always taken, even if it alone exceeds max_batch
                if req.modality == oldest.modality and (not batch or size + len(req.items) <= self.max_batch):
                    batch.append(req)
                    size += len(req.items)
                else:
                    rest.append(req)
            self._pending = rest
            self.metrics.queue_depth.set(len(rest))
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._execute(batch)

    def _call(self, modality: str, items: list[Any], n_requests: int) -> np.ndarray:
        start, cpu = time.perf_counter(), time.thread_time()
        out = self.embed_fn(modality, items)
        took = time.perf_counter() - start
        self._last_call_s = 0.8 * self._last_call_s + 0.2 * took
        self.metrics.model_latency.observe(took, modality=modality)
        self.metrics.model_cpu.inc(time.thread_time() - cpu, modality=modality)
        self.metrics.batch_size.observe(len(items), modality=modality)
        self.metrics.batch_requests.observe(n_requests, modality=modality)
        if out.ndim != 2 or out.shape[0] != len(items):
            raise RuntimeError(f"model returned shape {out.shape} for {len(items)} {modality} items")
        return out

    def _execute(self, batch: list[_Request]) -> None:
        modality = batch[0].modality
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        items = [x for r in live for x in r.items]
        try:
            out = self._call(modality, items, len(live))
        except BaseException as exc:  # noqa: BLE001 - delivered to the waiting requests, never swallowed
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            self._retry_one_by_one(modality, live)
            return
        start = 0
        for req in live:
            req.future.set_result(out[start: start + len(req.items)])
            start += len(req.items)

    def _retry_one_by_one(self, modality: str, reqs: list[_Request]) -> None:
        for req in reqs:
            try:
                req.future.set_result(self._call(modality, req.items, 1))
            except BaseException as exc:  # noqa: BLE001
                req.future.set_exception(exc)
