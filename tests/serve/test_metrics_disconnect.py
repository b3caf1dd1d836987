"""A request whose client left before any answer is counted as 499 (client closed), never as a server error."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import ClientDisconnect, Request

from polymodal.serve.app import RequestMetrics
from polymodal.serve.metrics import ServiceMetrics


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/search", "headers": [], "query_string": b""}


def _call(app: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        with contextlib.suppress(ClientDisconnect):
            await app(_scope(), receive, send)

    asyncio.run(run())
    return sent


def test_a_client_that_left_mid_body_is_a_499_not_a_500() -> None:
    metrics = ServiceMetrics()

    async def reads_the_body(scope: Any, receive: Any, send: Any) -> None:
        await Request(scope, receive).body()   # raises ClientDisconnect on http.disconnect

    _call(RequestMetrics(reads_the_body, metrics),
          [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}])
    assert metrics.requests.value(method="POST", route="unmatched", status="499") == 1
    assert metrics.requests.value(method="POST", route="unmatched", status="500") == 0


def test_an_app_that_fails_without_answering_is_still_a_500() -> None:
    metrics = ServiceMetrics()

    async def fails(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("boom")

    with contextlib.suppress(RuntimeError):
        _call(RequestMetrics(fails, metrics), [{"type": "http.request", "body": b"{}", "more_body": False}])
    assert metrics.requests.value(method="POST", route="unmatched", status="500") == 1


def test_answered_requests_keep_their_status() -> None:
    metrics = ServiceMetrics()

    async def answers(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 408, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    _call(RequestMetrics(answers, metrics), [{"type": "http.request", "body": b"", "more_body": False}])
    assert metrics.requests.value(method="POST", route="unmatched", status="408") == 1
