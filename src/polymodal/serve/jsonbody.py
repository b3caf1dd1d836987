"""JSON request bodies, parsed under the server's limits before any endpoint or schema sees them.

- Malformed JSON, or a body that is not UTF-8/16/32, is a 400 naming ``body`` (not a 422: no field is wrong).
- A body may hold at most ``Service.max_json_numbers`` numbers (derived from the model's dimension and the
  items a request may carry): a 31 MiB "vector" is refused (413) while it is parsed, after a few MiB of
  Python floats instead of a gigabyte of them.
- Lone surrogates (``"\\ud800"``, which Python's parser turns into an unencodable str) and integers beyond int64
  (which SQLite and numpy cannot take) are refused anywhere in the body with a 422 naming the field
  (``items[3].metadata.tag``), before they can reach a collection, a log line or an error message.

The body is already bounded by ``max_body_bytes`` (`app.BodyLimit`), so what remains is proportional to it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import INT64_MAX, INT64_MIN

_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyError(StarletteHTTPException):
    """An error about the request body itself, raised while FastAPI reads it (FastAPI re-raises HTTP errors, so
    the app's handler renders it with its field)."""

    def __init__(self, status: int, kind: str, message: str, field: str):
        super().__init__(status, message)
        self.kind, self.field = kind, field


class CheckedRoute(APIRoute):
    """Routes whose JSON body is parsed by `parse_body` (with the service's number budget)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            return await handler(CheckedRequest(request.scope, request.receive))

        return checked


class CheckedRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            svc = self.app.state.service
            why = f"a vector holds {svc.dim} (the model's dimension), a request at most {svc.settings.max_items} items"
            self._json = parse_body(await self.body(), svc.max_json_numbers, why)
        return self._json


def parse_body(body: bytes, max_numbers: int, why: str = "") -> Any:
    """Parse a JSON body and check its values (see the module docstring); ``why`` explains ``max_numbers``."""
    # Every number follows one of , [ : or is the whole document: when these are few, so are the numbers, and
    # the parser runs at full speed; otherwise it counts the numbers as it makes them.
    bound = body.count(b",") + body.count(b"[") + body.count(b":") + 1
    try:
        if bound <= max_numbers:
            value = json.loads(body)
        else:
            count = _NumberBudget(max_numbers, why)
            value = json.loads(body, parse_int=count.integer, parse_float=count.real, parse_constant=count.constant)
    except json.JSONDecodeError as exc:
        raise BodyError(400, "BadRequest", f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                        "body") from None
    except UnicodeDecodeError:
        raise BodyError(400, "BadRequest", "the body is not JSON text (expected UTF-8)", "body") from None
    except RecursionError:
        raise BodyError(400, "BadRequest", "malformed JSON: nested too deeply", "body") from None
    except ValueError:  # e.g. an integer of more than 4300 digits
        raise BodyError(400, "BadRequest", "malformed JSON: a number that cannot be read", "body") from None
    check_values(value)
    return value


class _NumberBudget:
    def __init__(self, limit: int, why: str):
        self.left = limit
        self.limit, self.why = limit, why

    def _take(self) -> None:
        self.left -= 1
        if self.left < 0:
            why = f" ({self.why})" if self.why else ""
            raise BodyError(413, "PayloadTooLarge", f"the body holds more than {self.limit} numbers{why}", "body")

    def integer(self, text: str) -> int:
        self._take()
        return int(text)

    def real(self, text: str) -> float:
        self._take()
        return float(text)

    def constant(self, text: str) -> float:  # NaN, Infinity, -Infinity (Python's parser accepts them)
        self._take()
        return float(text)


def check_values(value: Any) -> None:
    """422 for a lone surrogate in any string or key, or an integer beyond int64, anywhere in ``value``; the
    error names its path (``filter.year``, ``items[3].metadata.tag``). Iterative: depth costs no stack."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, v in node.items():
                _check_scalar(key, where or "body", key=True)
                stack.append((v, f"{where}.{key}" if where else str(key)))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if type(v) is not float:  # the common case (vectors) costs one type check
                    stack.append((v, f"{where}[{i}]"))
        else:
            _check_scalar(node, where or "body")


def _check_scalar(v: Any, field: str, key: bool = False) -> None:
    if type(v) is str:
        if not v.isascii() and (m := _SURROGATE.search(v)):
            what = "a key" if key else "the text"
            raise BodyError(422, "InvalidInput", f"{what} is not valid Unicode: a lone surrogate {m.group()!r} at "
                            f"character {m.start()} (JSON \\ud800-\\udfff escapes must come in pairs)", field)
    elif type(v) is int and not INT64_MIN <= v <= INT64_MAX:
        shown = str(v) if len(str(v)) <= 40 else f"{str(v)[:20]}...({len(str(v))} digits)"
        raise BodyError(422, "InvalidInput", f"integer {shown} does not fit in int64 [{INT64_MIN}, {INT64_MAX}]",
                        field)
