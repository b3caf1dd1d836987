"""Batching across concurrent generation requests: queued requests for the same model, with the same decoding
options (and the same kind of input), become one ``GenerativeModel.generate_samples`` call.

Requests enter a bounded queue (full: `GenerationQueueFull`, answered 503 with Retry-After). One worker thread --
never the event loop -- takes the oldest request's group, waits until ``max_batch`` rows of that group are
pending or the oldest has waited ``max_wait_ms``, and runs them as one batch with one streamer (`FanOut`) that
splits each decoding step's tokens by row: it counts each row's tokens (the response's usage) and hands a
streaming request its new text as it grows (``on_delta``, called from the worker thread).

- A request whose client has gone (`GenJob.abandon`) is skipped if still queued; once all rows of a running
  batch are abandoned (or the batcher closes), the next decoding step stops the model call. A batch never
  waits on a client: deltas are handed over, never awaited.
- Sampling with a ``seed`` runs alone, so that the same request gives the same text whatever else is queued.
- A model error inside a merged call is retried request by request (for the requests that have not streamed
  text yet), so one bad input fails only its own request."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..data.sample import Sample
from ..errors import BatcherClosed, QueueFull
from ..lm.decoding import DecodingOptions, cut_at_stop
from ..lm.tokenizer import EOS, SPECIALS
from ..models.generative import MAX_BATCH, GenerativeModel


class GenerationQueueFull(QueueFull):
    def __str__(self) -> str:
        return "the generation queue is full; retry later"


class ClientGone(RuntimeError):
    """Every client of a batch left (or the service closed): the model call was stopped."""


@dataclass(frozen=True)
class GenResult:
    text: str
    tokens: int   # tokens the model generated for this request (up to its end-of-sequence)


@dataclass(eq=False)
class GenJob:
    """One request: a sample (its prompt apart, as ``generate_samples`` takes them) for one model.
    ``on_delta``: called from the worker thread with each new piece of the text (streaming requests)."""

    model: str
    sample: Sample
    prompt: str | None
    options: DecodingOptions
    on_delta: Callable[[str], None] | None = None
    future: Future[GenResult] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    gone: bool = False
    streamed: bool = False   # some text was handed to on_delta (a failed batch is then not retried for it)

    def abandon(self) -> None:
        """The client left: skip this request if queued, stop its batch once all its rows have left."""
        self.gone = True
        self.future.cancel()   # only succeeds while queued

    def key(self) -> Hashable:
        """Requests batched together share this: model, options, which inputs they have."""
        s = self.sample
        inputs = tuple(m for m in ("audio", "image", "text", "video") if getattr(s, m) is not None)
        alone = self if self.options.do_sample and self.options.seed is not None else None
        return self.model, self.options, inputs, self.prompt is None, alone


class _Row:
    def __init__(self, job: GenJob):
        self.job = job
        self.ids: list[int] = []
        self.tokens = 0
        self.ended = False     # the model produced end-of-sequence for this row
        self.stopped = False   # a stop string appeared: nothing more is streamed
        self.emitted = ""      # text handed to on_delta so far


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string (not streamed yet)."""
    return max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def visible_text(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """What of a partial decode can be streamed (stop strings cut, a possible stop prefix and the surrounding
    whitespace held back, as the model's final text is stripped), and whether a stop string was met."""
    cut = cut_at_stop(text, stop)
    if len(cut) < len(text):
        return cut.strip(), True
    return cut[:len(cut) - _held_back(cut, stop)].strip(), False


class FanOut:
    """The streamer of one batch (`polymodal.models.generator.TokenStreamer`): ``put`` gets the prompt (2-D)
    and then each step's new token per row (1-D); each row's tokens go to its own request."""

    def __init__(self, gm: GenerativeModel, jobs: Sequence[GenJob], should_stop: Callable[[], bool]):
        self.tokenizer = gm.model.tokenizer
        self.rows = [_Row(j) for j in jobs]
        self.stop = jobs[0].options.stop
        self.should_stop = should_stop

    def put(self, value: Any) -> None:
        if self.should_stop() or all(r.job.gone for r in self.rows):
            raise ClientGone("every client of this batch has left")
        if value.dim() != 1:   # the prompt (B, L): nothing generated yet
            return
        step = value.tolist()
        if len(step) != len(self.rows):
            raise RuntimeError(f"the streamer got {len(step)} tokens for a batch of {len(self.rows)}")
        for row, tok in zip(self.rows, step, strict=True):
            if row.ended:
                continue
            if tok == EOS:
                row.ended = True
            elif tok >= len(SPECIALS):
                row.ids.append(int(tok))
                row.tokens += 1
                if row.job.on_delta is not None and not row.job.gone and not row.stopped:
                    self._stream(row)

    def _stream(self, row: _Row) -> None:
        assert self.tokenizer is not None
        text = self.tokenizer.decode(row.ids)
        if text.endswith("\ufffd"):   # a multi-byte character is not complete yet
            return
        shown, row.stopped = visible_text(text, self.stop)
        if len(shown) > len(row.emitted) and shown.startswith(row.emitted):
            self._send(row, shown[len(row.emitted):])
            row.emitted = shown

    def end(self) -> None:
        pass

    def finish(self, i: int, text: str) -> None:
        """Stream whatever of the final text was not streamed yet."""
        row = self.rows[i]
        if row.job.on_delta is not None and not row.job.gone and text.startswith(row.emitted) \
                and len(text) > len(row.emitted):
            self._send(row, text[len(row.emitted):])
            row.emitted = text

    @staticmethod
    def _send(row: _Row, delta: str) -> None:
        assert row.job.on_delta is not None
        row.job.streamed = True
        row.job.on_delta(delta)


class GenerationBatcher:
    """Groups concurrent generation requests into few model calls; thread-safe, loop-agnostic."""

    def __init__(self, models: Mapping[str, GenerativeModel], *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 queue_size: int = 256, clock: Callable[[], float] = time.monotonic):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.models = dict(models)
        self.max_batch = min(max_batch, MAX_BATCH)
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._clock = clock
        self._pending: deque[GenJob] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_call_s = 1.0   # running estimate of one model call, for Retry-After

    # ------------------------------------------------------------------ client side

    def submit(self, job: GenJob) -> Future[GenResult]:
        if job.model not in self.models:
            raise KeyError(job.model)
        job.arrived = self._clock()
        with self._cond:
            if self._closed:
                raise BatcherClosed("the generation worker has stopped")
            if len(self._pending) >= self.queue_size:
                raise GenerationQueueFull(self.retry_after())
            self._pending.append(job)
            self._ensure_worker()
            self._cond.notify()
        return job.future

    def retry_after(self) -> float:
        calls = max(1, -(-len(self._pending) // self.max_batch))
        return max(1.0, calls * self._last_call_s)

    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (a running batch stops at its next step); queued requests fail with `BatcherClosed`."""
        with self._cond:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in left:
            _fail(job, BatcherClosed("the service is shutting down"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side

    def _ensure_worker(self) -> None:  # called with the lock held
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="polymodal-generate", daemon=True)
            self._thread.start()

    def _take_batch(self) -> list[GenJob] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                while self._pending and self._pending[0].future.cancelled():
                    self._pending.popleft()   # its client left while it waited
                if not self._pending:
                    self._cond.wait()
                    continue
                key = self._pending[0].key()
                ready = sum(1 for j in self._pending if j.key() == key)
                wait = self._pending[0].arrived + self.max_wait - self._clock()
                if ready >= self.max_batch or wait <= 0:
                    break
                self._cond.wait(wait)
            batch: list[GenJob] = []
            rest: deque[GenJob] = deque()
            for job in self._pending:
                (batch if len(batch) < self.max_batch and job.key() == key else rest).append(job)
            self._pending = rest
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._execute(batch)

    def _closing(self) -> bool:
        return self._closed

    def _call(self, jobs: list[GenJob]) -> None:
        """One model call for ``jobs``; each gets its result (raises if the call fails)."""
        gm = self.models[jobs[0].model]
        options = jobs[0].options
        fan = FanOut(gm, jobs, self._closing)
        prompts = None if all(j.prompt is None for j in jobs) else [j.prompt for j in jobs]
        start = time.perf_counter()
        texts = gm.generate_samples([j.sample for j in jobs], prompts, options, batch_size=len(jobs),
                                    streamer=fan if options.streamable else None)
        self._last_call_s = 0.8 * self._last_call_s + 0.2 * (time.perf_counter() - start)
        if len(texts) != len(jobs):
            raise RuntimeError(f"the model returned {len(texts)} texts for {len(jobs)} inputs")
        tokenizer = gm.model.tokenizer
        for i, (job, text) in enumerate(zip(jobs, texts, strict=True)):
            fan.finish(i, text)
            tokens = fan.rows[i].tokens
            if not options.streamable and tokenizer is not None:   # beam search: no streamer counted them
                tokens = len(tokenizer.encode(text))
            job.future.set_result(GenResult(text, tokens))

    def _execute(self, batch: list[GenJob]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            self._call(live)
        except ClientGone as exc:
            for job in live:
                _fail(job, BatcherClosed("the service is shutting down") if self._closed else exc)
        except BaseException as exc:  # noqa: BLE001 - delivered to the waiting requests, never swallowed
            if len(live) == 1:
                _fail(live[0], exc)
                return
            self._retry_one_by_one(live, exc)

    def _retry_one_by_one(self, jobs: list[GenJob], first: BaseException) -> None:
        for job in jobs:
            if job.gone or job.streamed or self._closed or job.future.done():
                _fail(job, first)
                continue
            try:
                self._call([job])
            except BaseException as exc:  # noqa: BLE001
                _fail(job, exc)


def _fail(job: GenJob, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
