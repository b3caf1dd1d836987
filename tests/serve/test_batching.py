"""Dynamic micro-batching: fewer model calls, identical results, order kept, bounded queue, error isolation.

Everything is asserted on what can be observed -- the model calls (modality, items), the rows each request gets
back, metrics -- never on wall-clock durations, so the tests hold on a busy machine. Batches form in a known
state: the worker is parked inside a gated model call while the requests queue up, then the gate opens. The
``max_wait_ms`` deadline runs on an injected clock that the test moves by hand. ``TIMEOUT`` only bounds how long
a broken test may hang."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from servekit import FakeModel, solid

from polymodal.errors import InvalidInput
from polymodal.serve.batching import BatcherClosed, MicroBatcher, QueueFull, model_embed_fn
from polymodal.serve.metrics import ServiceMetrics

TIMEOUT = 30.0


class Gated(FakeModel):
    """A FakeModel whose calls block until ``gate`` is set; ``entered`` is set once the worker is inside one."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.gate = threading.Event(), threading.Event()

    def embed(self, **kw):
        self.entered.set()
        assert self.gate.wait(TIMEOUT), "the test never opened the gate"
        return super().embed(**kw)


class FakeClock:
    """Seconds that move only when the test says; counts how often the batcher read it."""

    def __init__(self) -> None:
        self.now, self.reads = 0.0, 0
        self._cond = threading.Condition()

    def __call__(self) -> float:
        with self._cond:
            self.reads += 1
            self._cond.notify_all()
            return self.now

    def set(self, now: float) -> None:
        with self._cond:
            self.now = now

    def wait_reads(self, more: int) -> None:
        """Block until the clock was read ``more`` more times (the worker re-checked its deadline)."""
        with self._cond:
            target = self.reads + more
            assert self._cond.wait_for(lambda: self.reads >= target, TIMEOUT)


def held(model: Gated, **kw) -> MicroBatcher:
    """A batcher whose worker is inside a first ("warm up") model call, so that whatever is submitted next
    waits in the queue until ``model.gate`` opens. ``max_wait_ms=0``: once open, batches go out at once."""
    b = MicroBatcher(model_embed_fn(model), **{"max_batch": 32, "max_wait_ms": 0, "queue_size": 256, **kw})
    b.submit("text", ["warm up"])
    assert model.entered.wait(TIMEOUT)
    return b


def texts(i: int, n: int) -> list[str]:
    return [f"request {i} item {j} word{i * 7 + j}" for j in range(n)]


def assert_rows_match_unbatched(jobs: list[tuple[str, list]], outs: list[np.ndarray]) -> None:
    ref = FakeModel()
    for (modality, items), out in zip(jobs, outs, strict=True):
        np.testing.assert_array_equal(out, ref.embed(**{modality: items}))  # same rows, same order


def test_queued_requests_share_model_calls_and_match_unbatched():
    model = Gated()
    b = held(model, max_batch=32)
    reqs = [texts(i, 1 + i % 3) for i in range(24)]  # 48 items
    futures = [b.submit("text", r) for r in reqs]
    model.gate.set()
    outs = [f.result(TIMEOUT) for f in futures]
    b.close()
    # the warm-up alone, then 48 queued items in two calls: 32 (requests packed up to max_batch) and the rest
    assert model.calls == [("text", 1), ("text", 32), ("text", 16)]
    assert_rows_match_unbatched([("text", r) for r in reqs], outs)


def test_model_runs_in_the_worker_thread_not_the_caller():
    model = FakeModel()
    b = MicroBatcher(model_embed_fn(model), max_wait_ms=0)
    b.embed("text", ["hello"])
    b.close()
    assert model.threads == {"polymodal-embed"}


def test_async_callers_are_batched():
    model = Gated()
    b = held(model)

    async def run() -> list[np.ndarray]:
        tasks = [asyncio.ensure_future(b.embed_async("text", [f"q {i}"])) for i in range(16)]
        for _ in range(10_000):  # let every task run up to its submit; the worker is still held
            if b.depth() == 16:
                break
            await asyncio.sleep(0)
        assert b.depth() == 16
        model.gate.set()
        return await asyncio.gather(*tasks)

    outs = asyncio.run(run())
    b.close()
    assert model.calls == [("text", 1), ("text", 16)]
    np.testing.assert_array_equal(np.concatenate(outs), FakeModel().embed(text=[f"q {i}" for i in range(16)]))


def test_one_modality_per_call_and_max_batch_respected():
    model = Gated()
    b = held(model, max_batch=4)
    img = solid((10, 200, 30))
    jobs = [("text", [f"t{i}"]) if i % 2 else ("image", [img]) for i in range(20)]
    futures = [b.submit(m, items) for m, items in jobs]
    model.gate.set()
    outs = [f.result(TIMEOUT) for f in futures]
    b.close()
    # each call takes the oldest request's modality, at most max_batch items; the other modality waits its turn
    assert model.calls[1:] == [("image", 4), ("text", 4), ("image", 4), ("text", 4), ("image", 2), ("text", 2)]
    assert_rows_match_unbatched(jobs, outs)


def test_a_request_larger_than_max_batch_still_runs_whole():
    model = FakeModel()
    b = MicroBatcher(model_embed_fn(model), max_batch=2, max_wait_ms=0)
    out = b.embed("text", texts(0, 5))
    b.close()
    assert out.shape == (5, 16) and model.calls == [("text", 5)]


def test_lone_request_waits_for_max_wait_then_runs_alone():
    clock, model = FakeClock(), FakeModel()
    b = MicroBatcher(model_embed_fn(model), max_batch=8, max_wait_ms=20, clock=clock)
    fut = b.submit("text", ["alone"])  # arrives at t = 0
    clock.wait_reads(2)  # the worker looked at the clock and went back to waiting for company
    assert not fut.done() and model.calls == [] and b.depth() == 1
    clock.set(0.0199)
    clock.wait_reads(2)
    assert not fut.done() and model.calls == []
    clock.set(0.020)  # the deadline: the worker stops waiting and runs what it has
    np.testing.assert_array_equal(fut.result(TIMEOUT), FakeModel().embed(text=["alone"]))
    b.close()
    assert model.calls == [("text", 1)]


def test_deadline_counts_from_the_oldest_request_and_takes_later_ones():
    clock, model = FakeClock(), FakeModel()
    b = MicroBatcher(model_embed_fn(model), max_batch=8, max_wait_ms=20, clock=clock)
    first = b.submit("text", ["first"])  # t = 0: due at 0.020
    clock.set(0.015)
    second = b.submit("text", ["second"])  # due at 0.035
    clock.wait_reads(2)
    assert model.calls == []
    clock.set(0.020)
    first.result(TIMEOUT), second.result(TIMEOUT)
    b.close()
    assert model.calls == [("text", 2)]  # flushed at the oldest's deadline, with the newer request in it


def test_a_full_batch_goes_out_without_waiting_for_the_deadline():
    clock, model = FakeClock(), FakeModel()  # the clock never moves: only max_batch can trigger the call
    b = MicroBatcher(model_embed_fn(model), max_batch=3, max_wait_ms=20, clock=clock)
    futures = [b.submit("text", [f"x{i}"]) for i in range(3)]
    outs = [f.result(TIMEOUT) for f in futures]
    b.close()
    assert model.calls == [("text", 3)]
    assert_rows_match_unbatched([("text", [f"x{i}"]) for i in range(3)], outs)


def test_full_queue_refuses_with_retry_after():
    model = Gated()
    metrics = ServiceMetrics()
    b = MicroBatcher(model_embed_fn(model), max_batch=1, max_wait_ms=0, queue_size=2, metrics=metrics)
    first = b.submit("text", ["a"])
    assert model.entered.wait(TIMEOUT)  # the worker has taken "a" and blocks in the model
    queued = [b.submit("text", ["b"]), b.submit("text", ["c"])]
    with pytest.raises(QueueFull) as err:
        b.submit("text", ["d"])
    assert err.value.retry_after_s >= 1
    assert metrics.rejected.value() == 1 and metrics.queue_depth.value() == 2
    model.gate.set()
    assert [f.result(TIMEOUT).shape for f in [first, *queued]] == [(1, 16)] * 3
    b.close()
    assert model.calls == [("text", 1)] * 3


def test_a_bad_request_fails_alone():
    model = Gated()
    b = held(model)
    reqs = [["fine"], ["also fine"], ["   "], ["still fine"]]
    futures = [b.submit("text", r) for r in reqs]
    model.gate.set()
    results: list = []
    for f in futures:
        try:
            results.append(f.result(TIMEOUT))
        except InvalidInput as exc:
            results.append(exc)
    b.close()
    assert isinstance(results[2], InvalidInput)
    # the merged call fails, then each request is retried alone
    assert model.calls == [("text", 1), ("text", 4)] + [("text", 1)] * 4
    assert_rows_match_unbatched([("text", reqs[i]) for i in (0, 1, 3)], [results[i] for i in (0, 1, 3)])


def test_close_fails_waiting_requests():
    model = Gated()
    b = MicroBatcher(model_embed_fn(model), max_batch=1, max_wait_ms=0, queue_size=8)
    running = b.submit("text", ["a"])
    assert model.entered.wait(TIMEOUT)
    waiting = b.submit("text", ["b"])
    b.close(timeout=0)  # the worker is still inside the model call
    with pytest.raises(BatcherClosed):
        waiting.result(TIMEOUT)
    with pytest.raises(BatcherClosed):
        b.submit("text", ["c"])
    model.gate.set()
    assert running.result(TIMEOUT).shape == (1, 16)  # the call already running completes
    b.close()  # joins the worker
    assert model.calls == [("text", 1)]  # "b" never reached the model


def test_metrics_record_batch_sizes():
    metrics = ServiceMetrics()
    model = Gated()
    b = held(model, max_batch=8, metrics=metrics)
    futures = [b.submit("text", [f"x{i}"]) for i in range(8)]
    model.gate.set()
    [f.result(TIMEOUT) for f in futures]
    b.close()
    assert model.calls == [("text", 1), ("text", 8)]
    assert metrics.batch_size.count(modality="text") == 2
    text = metrics.render()
    assert 'polymodal_embed_batch_size_bucket{modality="text",le="4"} 1' in text  # the warm-up call
    assert 'polymodal_embed_batch_size_bucket{modality="text",le="8"} 2' in text
    assert 'polymodal_embed_batch_size_sum{modality="text"} 9' in text
    assert 'polymodal_embed_batch_requests_sum{modality="text"} 9' in text
    assert "polymodal_embed_queue_depth 0" in text


def test_metrics_count_the_model_cpu_of_the_worker_thread_not_its_waiting():
    """The model's CPU time (what the bench sets against the HTTP overhead): a model that burns CPU is counted,
    one that sleeps (waiting for an accelerator) is not."""
    def burn(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    class Busy(FakeModel):
        def embed(self, **kw):
            burn(0.05)
            return super().embed(**kw)

    for model, low, high in ((Busy(), 0.05, 5.0), (FakeModel(delay=0.2), 0.0, 0.1)):
        metrics = ServiceMetrics()
        b = MicroBatcher(model_embed_fn(model), max_batch=8, max_wait_ms=0, metrics=metrics)
        b.embed("text", ["x"])
        b.close()
        cpu = metrics.model_cpu.value(modality="text")
        assert low <= cpu < high, (type(model).__name__, cpu)
    assert "polymodal_model_call_cpu_seconds_total{modality=\"text\"}" in metrics.render()
