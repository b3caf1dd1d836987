"""`polymodal serve`'s server (uvicorn on a real socket, in a thread) and its command line: connection limits,
header size, header and body timeouts, binding before the model loads, ports, non-ASCII API keys on the wire.

No test measures time: a timeout under test is set short (a fraction of a second) and the test waits for its
effect with a generous safety limit."""

from __future__ import annotations

import argparse
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from servekit import SAFETY, FakeModel, running

from polymodal.errors import InvalidInput
from polymodal.serve import MediaLimits, ServeSettings
from polymodal.serve.server import bind, url_of


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=SAFETY)
    return s


def read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def closed_by_server(s: socket.socket) -> bool:
    """True when the server closes the connection (recv gives EOF) before SAFETY seconds pass."""
    try:
        while True:
            if not s.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def read_until_closed(s: socket.socket) -> bytes | None:
    """What the server sends until it closes the connection, or None when it is still open after SAFETY seconds."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_a_connection_without_complete_headers_is_closed(tmp_path: Path):
    with running(tmp_path, header_timeout_s=0.3, keep_alive_s=60) as base:
        silent = connect(base)  # connects and says nothing
        slow = connect(base)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        assert closed_by_server(silent) and closed_by_server(slow)
        # a keep-alive connection is timed again after each response
        kept = connect(base)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /health HTTP/1.1\r\n")
        assert closed_by_server(kept)
        assert httpx.get(base + "/health").status_code == 200  # a prompt client is served as usual


def test_a_request_body_that_does_not_arrive_in_time_is_cut_off(tmp_path: Path):
    """Complete headers, a large Content-Length and then one byte ("slowloris" on the body): each such connection
    is answered 408 and closed once the body timeout passes, so that they cannot hold --max-connections."""
    slow_post = (b"POST /v1/search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 1000\r\n\r\n{")
    with running(tmp_path, max_connections=4, body_timeout_s=0.3, header_timeout_s=60, keep_alive_s=60) as base:
        slow = [connect(base) for _ in range(3)]  # with a 4th connection they fill --max-connections
        for s in slow:
            s.sendall(slow_post)
        for s in slow:
            answer = read_until_closed(s)
            assert answer is not None, "a connection with an unfinished body was not closed"
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        deadline = time.monotonic() + SAFETY  # the server counts a connection until it has seen it close
        while (status := httpx.get(base + "/health").status_code) != 200:
            assert status == 503 and time.monotonic() < deadline, "the slow connections still hold the limit"
        # the body timeout starts anew with each request of a keep-alive connection
        kept = connect(base)
        body = b'{"text": ["a prompt body"]}'
        prompt_post = (b"POST /v1/embed HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                       b"content-length: %d\r\n\r\n" % len(body) + body)
        kept.sendall(prompt_post)
        assert read_response(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(slow_post)
        answer = read_until_closed(kept)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
        assert httpx.get(base + "/health").status_code == 200  # bodyless requests are unaffected


def test_a_request_is_not_timed_once_its_headers_and_body_are_in(tmp_path: Path):
    """The header timeout stops once the headers are in (the body has its own timeout), and the body timeout once
    the body is in: a slow answer is not cut off, nor is an idle keep-alive connection after it."""
    body = b'{"text": ["a slow body"]}'
    headers = (b"POST /v1/embed HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n" % len(body))
    with running(tmp_path, header_timeout_s=0.3, body_timeout_s=60) as base:
        s = connect(base)
        s.sendall(headers)
        done = threading.Event()
        threading.Timer(0.6, done.set).start()  # wait past the header timeout before sending the body
        assert done.wait(SAFETY)
        s.sendall(body)
        assert read_response(s).startswith(b"HTTP/1.1 200")
    # the model takes longer than either timeout to answer
    with running(tmp_path, FakeModel(delay=0.6), header_timeout_s=0.3, body_timeout_s=0.3, keep_alive_s=60) as base:
        s = connect(base)
        s.sendall(headers + body)
        assert read_response(s).startswith(b"HTTP/1.1 200")
        s.sendall(headers + body)  # the timers were reset: the next request on the connection is served too
        assert read_response(s).startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_limit_get_503(tmp_path: Path):
    with running(tmp_path, max_connections=2, keep_alive_s=60, header_timeout_s=60) as base:
        held = connect(base)
        held.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(held).startswith(b"HTTP/1.1 200")  # the server has surely counted it now
        with httpx.Client() as client:
            assert client.get(base + "/health").status_code == 503  # held + this one = 2 connections
        held.close()
        deadline = time.monotonic() + SAFETY  # the server notices the close asynchronously
        while httpx.get(base + "/health").status_code != 200:
            assert time.monotonic() < deadline, "the limit did not free up"


def test_headers_beyond_the_limit_are_refused(tmp_path: Path):
    with running(tmp_path, max_header_bytes=4096, header_timeout_s=60) as base:
        assert httpx.get(base + "/health", headers={"x-pad": "a" * 3000}).status_code == 200
        r = httpx.get(base + "/health", headers={"x-pad": "a" * 5000})  # complete, in one read: exact check
        assert r.status_code == 431 and r.json()["error"]["type"] == "HeadersTooLarge"
        # a header block that never ends is not buffered without bound: the server answers 400 and closes
        # (or resets, if it closed with bytes unread), long before the header timeout
        s = connect(base)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"x-pad: " + b"a" * 8000 + b"\r\n")
        try:
            answer = read_response(s)
        except ConnectionResetError:
            answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert answer or closed_by_server(s)


def test_a_non_ascii_api_key_sent_as_utf8_bytes_on_the_wire(tmp_path: Path):
    key = "cl\u00e9-\u043a\u043b\u044e\u0447"
    with running(tmp_path, api_key=key) as base:
        body = b'{"items": [{"id": 1, "text": "a"}]}'
        for header in (b"X-API-Key: " + key.encode(), b"Authorization: Bearer " + key.encode(),
                       b"X-API-Key: " + key.encode("latin-1", "replace")):
            s = connect(base)
            s.sendall(b"POST /v1/collections/main/items HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                      + header + b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
            status = read_response(s).split(b" ", 2)[1]
            assert status == (b"403" if b"?" in header else b"200"), header


# ---------------------------------------------------------------------------------------------- the CLI

def test_bind_refuses_a_busy_port_and_bad_ports():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(InvalidInput) as exc:
            bind("127.0.0.1", port)
        assert exc.value.field == "--port" and f"port {port} on 127.0.0.1 is in use" in exc.value.message
    with pytest.raises(InvalidInput):
        bind("127.0.0.1", 70000)
    sock = bind("127.0.0.1", 0)
    try:
        assert url_of(sock, "127.0.0.1") == f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        sock.close()


def test_cli_refuses_a_busy_port_before_loading_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from polymodal.commands import main

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # the model does not exist: a port check after loading would fail on the model instead
        code = main(["serve", "--model", str(tmp_path / "no-model"), "--collection", str(tmp_path / "c"),
                     "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"port {port} on 127.0.0.1 is in use" in err and "http://" not in err


@pytest.mark.parametrize(("flag", "value"), [("--port", "99999"), ("--port", "-1"), ("--port", "http"),
                                             ("--max-connections", "0"), ("--header-timeout-s", "0"),
                                             ("--body-timeout-s", "0"), ("--body-timeout-s", "inf"),
                                             ("--max-request-pixels", "-5"), ("--max-body-mb", "nan")])
def test_cli_rejects_out_of_range_numbers(flag: str, value: str, capsys: pytest.CaptureFixture[str]):
    from polymodal.commands.serve import _parser

    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--model", "m", "--collection", "c", flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_cli_defaults_are_the_settings_defaults():
    from polymodal.commands.serve import _parser, settings_from_args

    args = _parser().parse_args(["--model", "m", "--collection", "c"])
    got = settings_from_args(argparse.Namespace(**{**vars(args), "api_key": None}))
    assert got == ServeSettings(limits=MediaLimits(max_bytes=ServeSettings().max_body_bytes))


def test_every_serve_flag_is_documented_with_its_default():
    """docs/serve.md has a table row for every flag of `polymodal serve` (the limits included), with its default."""
    from polymodal.commands.serve import _parser

    doc = (Path(__file__).parents[2] / "docs" / "serve.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `--")]
    for action in _parser()._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag in (None, "--help"):
            continue
        row = next((r for r in rows if re.search(rf"`{flag}[` ]", r.split("|")[1])), None)
        assert row is not None, f"{flag} is not in docs/serve.md"
        default = action.default
        if isinstance(default, bool) or not isinstance(default, (int, float, str)) or flag == "--api-key":
            continue
        shown = {str(default), f"{default:,}", f"{default:g}"} if not isinstance(default, str) else {default}
        cells = row.split("|")[2]
        assert any(s in cells for s in shown), (flag, default, cells)


def test_the_server_freezes_what_exists_once_it_listens(tmp_path: Path):
    """The garbage collector does not walk torch, the model and FastAPI on every full collection; a process that
    runs several servers gets them back once each stops."""
    import gc

    with running(tmp_path) as base:
        assert httpx.get(base + "/health").status_code == 200
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
