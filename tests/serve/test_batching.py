"""Dynamic micro-batching: fewer model calls, identical results, order kept, bounded queue, error isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from servekit import FakeModel, solid

from polymodal.errors import InvalidInput
from polymodal.serve.batching import BatcherClosed, MicroBatcher, QueueFull, model_embed_fn
from polymodal.serve.metrics import ServiceMetrics


def make(model: FakeModel, **kw) -> MicroBatcher:
    return MicroBatcher(model_embed_fn(model), **{"max_batch": 32, "max_wait_ms": 20, "queue_size": 256, **kw})


def texts(i: int, n: int) -> list[str]:
    return [f"request {i} item {j} word{i * 7 + j}" for j in range(n)]


def test_concurrent_requests_share_model_calls_and_match_unbatched():
    model = FakeModel(delay=0.02)
    b = make(model)
    reqs = [texts(i, 1 + i % 3) for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        outs = list(pool.map(lambda r: b.embed("text", r), reqs))
    b.close()
    assert len(model.calls) < len(reqs) / 2, model.calls
    assert sum(n for _, n in model.calls) == sum(len(r) for r in reqs)
    reference = FakeModel()
    for req, out in zip(reqs, outs, strict=True):
        np.testing.assert_array_equal(out, reference.embed(text=req))  # same rows, same order


def test_model_runs_in_the_worker_thread_not_the_caller():
    model = FakeModel()
    b = make(model, max_wait_ms=0)
    b.embed("text", ["hello"])
    b.close()
    assert model.threads == {"polymodal-embed"}


def test_async_callers_are_batched():
    model = FakeModel(delay=0.02)
    b = make(model)

    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(b.embed_async("text", [f"q {i}"]) for i in range(16)))

    outs = asyncio.run(run())
    b.close()
    assert len(model.calls) <= 3, model.calls
    ref = FakeModel().embed(text=[f"q {i}" for i in range(16)])
    np.testing.assert_array_equal(np.concatenate(outs), ref)


def test_one_call_per_modality_and_max_batch_respected():
    model = FakeModel(delay=0.01)
    b = make(model, max_batch=4)
    img = solid((10, 200, 30))
    jobs = [("text", [f"t{i}"]) if i % 2 else ("image", [img]) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(lambda j: b.embed(*j), jobs))
    b.close()
    assert all(n <= 4 for _, n in model.calls), model.calls
    assert {m for m, _ in model.calls} == {"text", "image"}
    ref = FakeModel()
    for (m, items), out in zip(jobs, outs, strict=True):
        np.testing.assert_array_equal(out, ref.embed(**{m: items}))


def test_a_request_larger_than_max_batch_still_runs_whole():
    model = FakeModel()
    b = make(model, max_batch=2, max_wait_ms=0)
    out = b.embed("text", texts(0, 5))
    b.close()
    assert out.shape == (5, 16) and model.calls == [("text", 5)]


def test_lone_request_waits_at_most_about_max_wait():
    b = make(FakeModel(), max_wait_ms=30)
    b.embed("text", ["warm up"])
    start = time.perf_counter()
    b.embed("text", ["alone"])
    took = time.perf_counter() - start
    b.close()
    assert 0.02 <= took < 0.5


def test_full_queue_refuses_with_retry_after():
    gate = threading.Event()

    class Gated(FakeModel):
        def embed(self, **kw):
            gate.wait(5)
            return super().embed(**kw)

    model = Gated()
    metrics = ServiceMetrics()
    b = MicroBatcher(model_embed_fn(model), max_batch=1, max_wait_ms=0, queue_size=2, metrics=metrics)
    first = b.submit("text", ["a"])
    deadline = time.time() + 5
    while b.depth() and time.time() < deadline:  # the worker has taken "a" and blocks in the model
        time.sleep(0.005)
    queued = [b.submit("text", ["b"]), b.submit("text", ["c"])]
    with pytest.raises(QueueFull) as err:
        b.submit("text", ["d"])
    assert err.value.retry_after_s >= 1
    assert metrics.rejected.value() == 1 and metrics.queue_depth.value() == 2
    gate.set()
    assert [f.result(5).shape for f in [first, *queued]] == [(1, 16)] * 3
    b.close()


def test_a_bad_request_fails_alone():
    model = FakeModel(delay=0.02)
    b = make(model)
    reqs = [["fine"], ["also fine"], ["   "], ["still fine"]]
    futures = [b.submit("text", r) for r in reqs]
    results = []
    for f in futures:
        try:
            results.append(f.result(5))
        except InvalidInput as exc:
            results.append(exc)
    b.close()
    assert isinstance(results[2], InvalidInput)
    ref = FakeModel()
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i], ref.embed(text=reqs[i]))


def test_close_fails_waiting_requests():
    gate = threading.Event()

    class Gated(FakeModel):
        def embed(self, **kw):
            gate.wait(5)
            return super().embed(**kw)

    b = MicroBatcher(model_embed_fn(Gated()), max_batch=1, max_wait_ms=0, queue_size=8)
    running = b.submit("text", ["a"])
    while b.depth():
        time.sleep(0.005)
    waiting = b.submit("text", ["b"])
    threading.Timer(0.05, gate.set).start()
    b.close()
    assert running.result(5).shape == (1, 16)
    with pytest.raises(BatcherClosed):
        waiting.result(5)
    with pytest.raises(BatcherClosed):
        b.submit("text", ["c"])


def test_metrics_record_batch_sizes():
    metrics = ServiceMetrics()
    model = FakeModel(delay=0.02)
    b = MicroBatcher(model_embed_fn(model), max_batch=8, max_wait_ms=20, queue_size=64, metrics=metrics)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: b.embed("text", [f"x{i}"]), range(8)))
    b.close()
    assert metrics.batch_size.count(modality="text") == len(model.calls)
    text = metrics.render()
    assert 'polymodal_embed_batch_size_bucket{modality="text",le="+Inf"}' in text
    assert "polymodal_embed_queue_depth 0" in text
