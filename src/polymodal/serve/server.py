"""Running the app: uvicorn with the limits of `ServeSettings` that belong to the HTTP server, not the app.

- ``max_connections`` -> uvicorn's ``limit_concurrency``: beyond it, new requests get 503.
- ``keep_alive_s`` -> uvicorn's ``timeout_keep_alive``: an idle keep-alive connection is closed.
- ``max_header_bytes`` -> h11's ``max_incomplete_event_size``: a longer request line + headers get 400. The h11
  parser is used for this reason (uvicorn's httptools parser has no header size limit).
- ``header_timeout_s``: a connection that has not sent a complete request line and headers this long after it
  opened (or after its previous response) is closed.
- ``body_timeout_s``: a request whose body has not arrived complete this long after the end of its headers is
  answered 408 (when no answer was started) and its connection closed. Handling the request once its body is in
  is not timed; a request without a body (GET) has nothing to wait for.

uvicorn has neither timeout; `TimeoutH11` adds them, so that idle or slow ("slowloris") connections, slow in
their headers or in their body, cannot pile up and hold ``max_connections``: each is closed within its timeout.

The socket is bound before the (slow) model loads, so a busy port fails at once with a clear message, and the
URL is announced only once the server listens."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import socket
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import InvalidInput
from .service import ServeSettings

log = logging.getLogger("polymodal.serve")


class TimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections that take longer than ``header_timeout`` seconds to send a
    request's line and headers (counted from the connection's start, or from its previous response), or longer
    than ``body_timeout`` seconds to send its body (counted from the end of its headers)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        timer = getattr(self, "_body_timer", None)
        if timer is not None:
            timer.cancel()
            self._body_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection that sent no complete request headers in %gs", self.header_timeout)
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        log.info("closing a connection that sent no complete request body in %gs", self.body_timeout)
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and self.conn.our_state is h11.SEND_RESPONSE:
            # The app is still waiting for the body: it is told the client left (its `receive` gives
            # http.disconnect and its `send` does nothing), and the client gets a 408 instead.
            cycle.disconnected = True
            cycle.message_event.set()
            try:
                self.transport.write(self.conn.send(h11.Response(
                    status_code=408, reason=b"Request Timeout",
                    headers=[(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")])))
                self.transport.write(self.conn.send(h11.Data(data=b"request body not received in time")))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:  # pragma: no cover - h11 refused: closing is enough
                pass
        self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        state = self.conn.their_state
        if state is not h11.IDLE:  # a request's headers are in: the header timeout is over
            self._cancel_header_timer()
        if state is h11.SEND_BODY:  # its body is on its way: timed from the end of the headers
            if getattr(self, "_body_timer", None) is None and not self.transport.is_closing():
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)
        else:  # the body is in (or there is none): handling the request is not timed
            self._cancel_body_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)


def protocol_class(settings: ServeSettings) -> type[TimeoutH11]:
    return type("TimeoutH11", (TimeoutH11,), {"header_timeout": float(settings.header_timeout_s),
                                              "body_timeout": float(settings.body_timeout_s)})


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: any free port), or an error that says what is wrong."""
    if not 0 <= port <= 65535:
        raise InvalidInput(f"port must be in 0..65535, got {port}", field="--port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidInput(f"cannot resolve host {host!r} ({exc.strerror})", field="--host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInput(f"port {port} on {host} is in use (stop what listens there, or pick another "
                               "--port)", field="--port") from None
        if exc.errno == errno.EACCES:
            raise InvalidInput(f"not allowed to listen on port {port} on {host} (ports below 1024 need "
                               "privileges)", field="--port") from None
        raise InvalidInput(f"cannot listen on {host}:{port} ({exc.strerror})", field="--host") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    """The URL of a bound socket: the port it really got, the host as the user gave it."""
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None] | None):
        super().__init__(config)
        self.on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        # What exists once the server listens (torch, the model, FastAPI: some 200,000 objects) lives as long as
        # the process: frozen, the garbage collector no longer walks it. An unfrozen full collection took 0.27 s
        # (every thread waits for it, the model's included) and the young ones took ~30% of the CPU of a request.
        gc.collect()
        gc.freeze()
        if self.started and self.on_listening is not None:
            self.on_listening()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets=sockets)
        finally:
            gc.unfreeze()  # a process that runs several servers (tests) collects their leftovers again


def make_server(app: Any, settings: ServeSettings, *, log_level: str = "info",
                on_listening: Callable[[], None] | None = None) -> uvicorn.Server:
    """A uvicorn server for ``app`` with the settings' connection limits; run it with ``.run(sockets=[sock])``
    (a socket from `bind`). ``on_listening`` is called once it accepts connections."""
    config = uvicorn.Config(app, http=protocol_class(settings), limit_concurrency=settings.max_connections,
                            timeout_keep_alive=settings.keep_alive_s,
                            h11_max_incomplete_event_size=settings.max_header_bytes, log_level=log_level,
                            lifespan="on", workers=1, server_header=False)
    return _Server(config, on_listening)
