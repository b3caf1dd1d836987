"""JSON request bodies, parsed under the server's limits before any endpoint or schema sees them.

- Malformed JSON, or a body that is not UTF-8/16/32, is a 400 naming ``body`` (not a 422: no field is wrong).
- A body may hold at most ``Service.max_json_values`` JSON values: lists, objects, strings, numbers,
  true/false/null (derived from the model's dimension and the items a request may carry). They are counted on
  the body's text before it is parsed (`count_values`), so 32 MiB of ``[[],[],...]`` or of ``"a","a",...`` is
  a 413 after a few C-speed passes over the bytes, instead of seconds and gigabytes of Python objects.
- A body may nest lists and objects at most `MAX_DEPTH` deep (400), checked on the same text, so no parser or
  endpoint meets a thousand-deep structure.
- Lone surrogates (``"\\ud800"``, which Python's parser turns into an unencodable str) and integers beyond int64
  (which SQLite and numpy cannot take) are refused anywhere in the body with a 422 naming the field
  (``items[3].metadata.tag``), before they can reach a collection, a log line or an error message.
- All of this runs in a worker thread (`CheckedRequest.json`): a big body never holds up the event loop.

The body is already bounded by ``max_body_bytes`` (`app.BodyLimit`), so what remains is proportional to it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import INT64_MAX, INT64_MIN

MAX_DEPTH = 64  # lists and objects inside each other; the API's own bodies need 4, metadata a few more
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = b" \t\r\n"
_WHITESPACE_CHARS = tuple(bytes([c]) for c in _WHITESPACE)
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


class BodyError(StarletteHTTPException):
    """An error about the request body itself, raised while FastAPI reads it (FastAPI re-raises HTTP errors, so
    the app's handler renders it with its field)."""

    def __init__(self, status: int, kind: str, message: str, field: str):
        super().__init__(status, message)
        self.kind, self.field = kind, field


class CheckedRoute(APIRoute):
    """Routes whose JSON body is parsed by `parse_body` (with the service's value budget)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            return await handler(CheckedRequest(request.scope, request.receive))

        return checked


INLINE_PARSE_BYTES = 64 * 1024   # bodies up to this size are parsed on the event loop (well under 1 ms)


class CheckedRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            svc = self.app.state.service
            why = f"a vector holds {svc.dim} (the model's dimension), a request at most {svc.settings.max_items} items"
            body = await self.body()
            # counting, parsing and checking take time in proportion to the body: a large one goes to a worker
            # thread, off the event loop; a small one (most requests) costs less than the thread hop would
            if len(body) > INLINE_PARSE_BYTES:
                self._json = await run_in_threadpool(parse_body, body, svc.max_json_values, why)
            else:
                self._json = parse_body(body, svc.max_json_values, why)
        return self._json


def parse_body(body: bytes, max_values: int, why: str = "", max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON body and check it (see the module docstring): at most ``max_values`` values (413; ``why``
    explains the number), nested at most ``max_depth`` deep (400), then its strings and integers (422)."""
    encoding = json.detect_encoding(body)
    try:  # as json.loads decodes bytes
        text = body.decode(encoding, "surrogatepass")
    except UnicodeDecodeError:
        raise BodyError(400, "BadRequest", "the body is not JSON text (expected UTF-8)", "body") from None
    # the counts read ASCII characters as bytes: UTF-8 keeps them (every byte of a longer character is >= 0x80),
    # UTF-16/32 do not (a character may hold the byte of a quote: "\u2200" is 00 22), so those are re-encoded
    utf8 = body if encoding.startswith("utf-8") else text.encode("utf-8", "surrogatepass")
    count_values(utf8, max_values, why, max_depth)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(400, "BadRequest", f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                        "body") from None
    except RecursionError:  # only a malformed body gets here this deep (its brackets do not match)
        raise BodyError(400, "BadRequest", "malformed JSON: nested too deeply", "body") from None
    except ValueError:  # e.g. an integer of more than 4300 digits
        raise BodyError(400, "BadRequest", "malformed JSON: a number that cannot be read", "body") from None
    check_values(value)
    return value


def count_values(text: bytes, max_values: int, why: str = "", max_depth: int = MAX_DEPTH) -> int:
    """The JSON values in ``text`` (UTF-8), counted without building any: more than ``max_values`` is a 413
    (``why`` explains the number), lists and objects nested more than ``max_depth`` deep a 400.

    With its strings blanked out and its whitespace removed, a JSON text holds one value for the whole
    document, one for the first element or member of each list or object (a ``[`` or ``{`` not followed by its
    ``]`` or ``}``) and one for each further one (a ``,``). Strings are delimited as the parser does: escaped
    backslashes and escaped quotes are dropped first, then every ``"`` left opens or closes one. The count is
    exact for valid JSON; in a malformed body it may be off only after the first error, where the parser stops
    (it builds nothing beyond it). Every step is a C-speed pass over the bytes."""
    bare = text.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in text else text
    # a string is a value or the key of one (keys < values): more than 4 quotes a value is over the budget for
    # sure, and refused before the text is split into that many pieces
    if bare.count(b'"') > 4 * max_values:
        raise _too_many(max_values, why)
    bare = b'""'.join(bare.split(b'"')[::2])  # strings become "" (an unterminated one: nothing)
    if any(c in bare for c in _WHITESPACE_CHARS):
        bare = bare.translate(None, _WHITESPACE)
    opened = bare.count(b"[") + bare.count(b"{")
    values = 1 + opened + bare.count(b",") - bare.count(b"[]") - bare.count(b"{}")
    if values > max_values:
        raise _too_many(max_values, why)
    # each [ or { opens a list or an object, so there are at most max_values of them: the depth passes below
    # cost at most max_depth copies of 2 * max_values bytes (unmatched brackets are left to the parser)
    if opened > max_depth and opened == bare.count(b"]") + bare.count(b"}"):
        brackets = bare.translate(_TO_SQUARE, _NOT_BRACKETS)
        if _deeper(brackets, max_depth):
            raise BodyError(400, "BadRequest", f"the body nests lists and objects more than {max_depth} deep",
                            "body")
    return values


def _too_many(max_values: int, why: str) -> BodyError:
    why = f" ({why})" if why else ""
    return BodyError(413, "PayloadTooLarge", f"the body holds more than {max_values} JSON values (lists, objects, "
                     f"strings, numbers, true/false/null){why}", "body")


def _deeper(brackets: bytes, depth: int) -> bool:
    """Whether ``brackets`` (only ``[`` and ``]``) nest deeper than ``depth``: each pass removes every ``[]``,
    i.e. the innermost level (``replace`` does not look again at what a removal joins)."""
    for _ in range(depth):
        shorter = brackets.replace(b"[]", b"")
        if not shorter or len(shorter) == len(brackets):  # all gone, or out of order (malformed: the parser says)
            return False
        brackets = shorter
    return b"[]" in brackets


def check_values(value: Any) -> None:
    """422 for a lone surrogate in any string or key, or an integer beyond int64, anywhere in ``value``; the
    error names its path (``filter.year``, ``items[3].metadata.tag``). Iterative: depth costs no stack. A path
    is spelled out only for the lists and objects that hold something, and for the value that is refused."""
    if type(value) is not list and type(value) is not dict:
        _check_scalar(value, "", "body")
        return
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, where = stack.pop()
        if type(node) is dict:
            for key, v in node.items():
                _check_scalar(key, where, key, key=True)
                if type(v) is list or type(v) is dict:
                    if v:
                        stack.append((v, f"{where}.{key}" if where else key))
                elif type(v) is not float:
                    _check_scalar(v, where, key)
        else:
            for i, v in enumerate(node):
                if type(v) is float:  # the common case (vectors) costs one type check
                    continue
                if type(v) is list or type(v) is dict:
                    if v:
                        stack.append((v, f"{where}[{i}]"))
                else:
                    _check_scalar(v, where, i)


def _check_scalar(v: Any, where: str, name: str | int, key: bool = False) -> None:
    """Check one string or integer, the key or element ``name`` of the list or object at path ``where``."""
    if type(v) is str:
        if not v.isascii() and (m := _SURROGATE.search(v)):
            what = "a key" if key else "the text"
            raise BodyError(422, "InvalidInput", f"{what} is not valid Unicode: a lone surrogate {m.group()!r} at "
                            f"character {m.start()} (JSON \\ud800-\\udfff escapes must come in pairs)",
                            _path(where, name, key))
    elif type(v) is int and not INT64_MIN <= v <= INT64_MAX:
        shown = str(v) if len(str(v)) <= 40 else f"{str(v)[:20]}...({len(str(v))} digits)"
        raise BodyError(422, "InvalidInput", f"integer {shown} does not fit in int64 [{INT64_MIN}, {INT64_MAX}]",
                        _path(where, name, key))


def _path(where: str, name: str | int, key: bool) -> str:
    if key:  # a bad key is reported at the object that holds it, as before
        return where or "body"
    if isinstance(name, int):
        return f"{where}[{name}]"
    return f"{where}.{name}" if where else name
