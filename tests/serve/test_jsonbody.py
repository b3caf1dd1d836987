"""What a JSON body may cost before any endpoint sees it (`polymodal.serve.jsonbody`): how many values it holds
(lists, objects, strings, numbers, true/false/null: not only numbers), how deep it nests, and that parsing it
never holds up the event loop. In-process (FastAPI TestClient) against the fake model, and `parse_body` itself.

"Refused before it is built" is checked by making ``json.loads`` fail the test if it is reached, not by timing."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from servekit import DIM, KEY

from polymodal.serve import jsonbody
from polymodal.serve.jsonbody import MAX_DEPTH, BodyError, count_values, parse_body

AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
Client = Callable[..., TestClient]
TRICKY = 'he said "a, [b], {c}" \\ and left: ,,,[[[{{{ }}}]]] \\" \u00e9\u2200 \U0001f600'  # commas, brackets, escapes


@pytest.fixture
def loads_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``json.loads`` as `jsonbody` sees it, recording the length of what it is given."""
    calls: list[int] = []
    real = json.loads

    def spy(s: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(s))
        return real(s, *args, **kwargs)

    monkeypatch.setattr(jsonbody, "json", _JsonWith(spy))
    yield calls


class _JsonWith:
    """The json module with ``loads`` replaced (only `jsonbody` sees it: responses are still read normally)."""

    def __init__(self, loads: Callable[..., Any]):
        self.loads = loads

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)


def err(resp: Any, status: int, field: str | None = "body", kind: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert set(body) == {"type", "message", "field"}
    assert body["field"] == field, body
    if kind:
        assert body["type"] == kind, body
    return str(body["message"])


def values_in(v: Any) -> int:
    """JSON values in ``v``: itself, and every element and member value in it (keys are not values)."""
    if isinstance(v, list):
        return 1 + sum(values_in(x) for x in v)
    if isinstance(v, dict):
        return 1 + sum(values_in(x) for x in v.values())
    return 1


def depth_of(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max((depth_of(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth_of(x) for x in v.values()), default=0)
    return 0


def nested(depth: int, inner: Any = 1) -> Any:
    for i in range(depth):
        inner = [inner] if i % 2 else {"k": inner}
    return inner


# ------------------------------------------------------------------------------- 1. values, not just numbers

ELEMENTS = {"empty lists": b"[]", "empty objects": b"{}", "lists with spaces": b"[ ]", "strings": b'"a"',
            "nulls": b"null", "booleans": b"true", "small objects": b'{"a":"b"}'}


@pytest.mark.parametrize("element", ELEMENTS.values(), ids=ELEMENTS.keys())
def test_a_body_of_many_values_is_refused_before_it_is_parsed(client: Client, loads_spy: list[int],
                                                               element: bytes):
    """`[[],[],...]` (and the like) within the byte limit used to be parsed and checked, element by element, on
    the event loop: 32 MiB of it cost ~25 s and 2.5 GB before the schema refused it. It is a 413 now, from a
    count over the raw bytes, and never reaches the parser."""
    c = client()
    budget = c.app.state.service.max_json_values
    body = b'{"text":[' + b",".join([element] * budget) + b"]}"
    assert len(body) < c.app.state.service.settings.max_body_bytes
    msg = err(c.post("/v1/embed", content=body, headers=JSON), 413, "body", "PayloadTooLarge")
    assert str(budget) in msg and "values" in msg, msg
    assert f"a vector holds {DIM}" in msg, msg  # says where the budget comes from
    assert loads_spy == []


@pytest.mark.parametrize("path", ["/v1/search", "/v1/collections/main/items", "/v1/collections/main/items/delete"])
def test_every_json_endpoint_counts_values(client: Client, loads_spy: list[int], path: str):
    c = client(max_json_values=1000)
    body = json.dumps({"filter": {"x": [None] * 1000}}).encode()
    err(c.post(path, content=body, headers={**JSON, **AUTH}), 413, "body", "PayloadTooLarge")
    assert loads_spy == []


def test_commas_and_brackets_in_strings_are_not_values(client: Client, loads_spy: list[int]):
    """Only structure outside strings counts: text full of , [ { and escaped quotes costs one value a string."""
    c = client(max_json_values=1000)
    texts = [TRICKY * 30] * 200  # 200 strings, ~3,000 commas and brackets each
    r = c.post("/v1/embed", json={"text": texts})
    assert r.status_code == 200, r.text
    assert len(r.json()["vectors"]["text"]) == 200
    assert loads_spy  # parsed, by the real parser


def test_a_utf16_body_is_counted_by_its_characters_not_its_bytes(client: Client, loads_spy: list[int]):
    """In UTF-16 a character inside a string can hold the byte of a quote ("\u2200" is 00 22 little-endian):
    counting bytes would mistake structure for string content (and let the empty lists through)."""
    c = client(max_json_values=1000)
    many = '{"text": ["\u2200", ' + ", ".join(["[]"] * 2000) + ', "\u2200"]}'
    for encoding in ("utf-16", "utf-16-le", "utf-32"):
        err(c.post("/v1/embed", content=many.encode(encoding), headers=JSON), 413, "body", "PayloadTooLarge")
    assert loads_spy == []
    ok = json.dumps({"text": ["\u2200 x, [y]", TRICKY]}, ensure_ascii=False).encode("utf-16")
    r = c.post("/v1/embed", content=ok, headers=JSON)
    assert r.status_code == 200, r.text


BODIES = {
    "scalar": 1, "string": TRICKY, "empty list": [], "empty object": {},
    "vector": {"vector": [0.5] * DIM, "k": 3},
    "mixed": {"a": [[], {}, [[]], [{}], None, True, False, "x", 1, -2.5e-3, {"b": {"c": []}}], "": ""},
    "tricky strings": {TRICKY: [TRICKY, {TRICKY: TRICKY}], "\\": "\\\\", '"': '"[', ",": ",{"},
    "items": {"items": [{"id": i, "vector": [0.25] * DIM, "metadata": {"t": TRICKY, "n": [i, [i], {}]}}
                        for i in range(20)]},
}


@pytest.mark.parametrize("value", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("indent", [None, 2])
def test_the_count_is_exact(value: Any, indent: int | None):
    """A body of exactly the budget's values parses (as the parser would), one more value is refused."""
    body = json.dumps(value, indent=indent, ensure_ascii=indent is None).encode()
    n = values_in(value)
    assert parse_body(body, n) == value
    with pytest.raises(BodyError) as exc:
        parse_body(body, n - 1)
    assert exc.value.status_code == 413 and exc.value.field == "body"


_TEXT = st.text(st.sampled_from(list('ab ,:[]{}"\\\n\t/') + ["\u00e9", "\u2200", "\U0001f600"]), max_size=8)
_SCALAR = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _TEXT
_JSON = st.recursive(_SCALAR,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
                     max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(_JSON, st.sampled_from([None, 0, 1, 3]), st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\r\n ")]),
       st.booleans(), st.sampled_from(["utf-8", "utf-16", "utf-32-le"]))
def test_the_count_is_exact_for_any_json(value: Any, indent: int | None, separators: tuple[str, str],
                                         ascii_only: bool, encoding: str):
    text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=ascii_only)
    if encoding == "utf-8":
        assert count_values(text.encode(), 10**6) == values_in(value)
    n = values_in(value)
    assert parse_body(text.encode(encoding), n) == value
    with pytest.raises(BodyError):
        parse_body(text.encode(encoding), n - 1)


def test_parse_body_counts_before_it_parses(loads_spy: list[int]):
    body = b"[" + b",".join([b"[]"] * 100_000) + b"]"
    with pytest.raises(BodyError) as exc:
        parse_body(body, 100_000, "why not")
    assert exc.value.status_code == 413 and "100000" in exc.value.detail and "why not" in exc.value.detail
    assert loads_spy == []
    assert len(parse_body(body, 100_001)) == 100_000


# --------------------------------------------------------------------------------------------- 2. depth

def test_nesting_deeper_than_the_limit_is_a_clear_400(client: Client, loads_spy: list[int]):
    c = client()
    vector = ",".join(["0.5"] * DIM)
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 10, 5000, 100_000):
        m = depth - 4  # the body's {, "items": [, the item's { and its "metadata": { are 4 levels
        body = f'{{"items":[{{"id":1,"vector":[{vector}],"metadata":{{"x":{"[" * m}1{"]" * m}}}}}]}}'
        r = c.post("/v1/collections/main/items", content=body, headers={**JSON, **AUTH})
        if depth <= MAX_DEPTH:
            assert r.status_code == 200, r.text
            continue
        msg = err(r, 400, "body", "BadRequest")
        assert "nest" in msg and str(MAX_DEPTH) in msg, msg
    assert len(loads_spy) == 2  # only the bodies within the limit were parsed


@pytest.mark.parametrize("depth", [1, 2, 3, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 3 * MAX_DEPTH])
def test_depth_is_counted_exactly(depth: int):
    for value in (nested(depth), [[], nested(depth), {}, [nested(depth - 1, [])]],
                  {"a": nested(depth - 1, TRICKY), "[[[[": "]]]]" * depth}):
        body = json.dumps(value).encode()
        if depth_of(value) <= MAX_DEPTH:
            assert parse_body(body, 10**6) == value
        else:
            with pytest.raises(BodyError) as exc:
                parse_body(body, 10**6)
            assert exc.value.status_code == 400 and "nest" in exc.value.detail


def test_brackets_in_strings_are_not_depth():
    value = {"t": "[" * 10_000 + "{" * 10_000, "u": ["]" * 5]}
    assert parse_body(json.dumps(value).encode(), 100) == value


@pytest.mark.parametrize("body", [b"[" * 100 + b"]" * 99, b"]" * 100 + b"[" * 100, b"[" * 5000, b'{"a": [}]',
                                  b"[1, 2", b'"\\', b'["\\"]', b"[" * 70 + b"}" * 70])
def test_malformed_bodies_are_400(body: bytes):
    with pytest.raises(BodyError) as exc:
        parse_body(body, 10**6)
    assert exc.value.status_code == 400 and exc.value.field == "body"


# ------------------------------------------------------------------------------------ 3. normal requests

def test_full_requests_within_the_budget_still_work(client: Client):
    """max_items items of the model's dimension, each with metadata full of commas and brackets, in one upsert;
    as many texts in one embed; a search with a vector and a filter."""
    c = client()
    n = c.app.state.service.settings.max_items
    items = [{"id": i, "vector": [((i + j) % 7) / 7 + 0.1 for j in range(DIM)],
              "metadata": {"title": f"{TRICKY} #{i}", "tags": [TRICKY, "x,y", "[z]"], "n": i,
                           "deep": nested(20, "[,]")}}
             for i in range(n)]
    r = c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["count"] == n
    r = c.post("/v1/embed", json={"text": [f"{TRICKY} {i}" for i in range(n)]})
    assert r.status_code == 200, r.text
    r = c.post("/v1/search", json={"vector": items[3]["vector"], "k": 5, "filter": {"n": {"in": [3, 4, 5]}}})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["hits"]][0] == 3


# ----------------------------------------------------------------------------------- 4. off the event loop

def test_a_body_is_parsed_off_the_event_loop(client: Client, monkeypatch: pytest.MonkeyPatch):
    """While one body is being parsed, other requests (here /health) are answered: the parse holds a worker
    thread, not the event loop."""
    c = client()
    entered, release = threading.Event(), threading.Event()
    waited: list[bool] = []
    real = json.loads

    def slow_loads(s: Any, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        waited.append(release.wait(timeout=5))  # False: nobody released it, i.e. /health could not run meanwhile
        return real(s, *args, **kwargs)

    monkeypatch.setattr(jsonbody, "json", _JsonWith(slow_loads))
    result: list[Any] = []
    big = {"text": ["a, [b] " * 1000] * 20}   # ~140 KB: beyond jsonbody.INLINE_PARSE_BYTES
    assert len(json.dumps(big)) > jsonbody.INLINE_PARSE_BYTES
    worker = threading.Thread(target=lambda: result.append(c.post("/v1/embed", json=big)))
    worker.start()
    try:
        assert entered.wait(timeout=10)
        health = c.get("/health")
        assert health.status_code == 200, health.text
        release.set()
    finally:
        release.set()
        worker.join(timeout=30)
    assert waited == [True], "the parse blocked the event loop: /health waited for it"
    assert result and result[0].status_code == 200, result


@pytest.mark.parametrize("route, body", [
    ("/v1/embed", {"text": [None] * 5000}),
    ("/v1/collections/main/items", {"items": [None] * 5000}),
    ("/v1/collections/main/items/delete", {"ids": [None] * 200_001}),
])
def test_an_overlong_list_is_one_error_about_its_length_not_one_per_element(client, route, body):
    """Within the body limits, 270k wrong-typed elements once cost seconds of per-element errors on the event
    loop; the lists' static caps (schemas.MAX_INPUTS, MAX_DELETE_IDS) make pydantic stop at their length."""
    from polymodal.serve.schemas import MAX_DELETE_IDS, MAX_INPUTS

    c = client(max_json_values=10**6)
    r = c.post(route, json=body, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert "at most" in err["message"] and str(MAX_INPUTS if "ids" not in body else MAX_DELETE_IDS) in \
        err["message"].replace(",", ""), err


@pytest.mark.parametrize("n", [0, 4097])
def test_max_items_beyond_the_schemas_cap_is_refused(n):
    from polymodal.errors import InvalidInput
    from polymodal.serve import ServeSettings

    with pytest.raises(InvalidInput, match="max_items|1..4096"):
        ServeSettings(max_items=n)


def test_a_small_body_is_parsed_without_a_thread_hop(client: Client, monkeypatch: pytest.MonkeyPatch):
    """Most requests are a few hundred bytes: parsing them inline costs less than handing them to a thread."""
    hops: list[int] = []
    real = jsonbody.run_in_threadpool

    async def counting(fn: Any, *args: Any) -> Any:
        hops.append(len(args[0]))
        return await real(fn, *args)

    monkeypatch.setattr(jsonbody, "run_in_threadpool", counting)
    c = client()
    assert c.post("/v1/embed", json={"text": ["a small one"]}).status_code == 200
    assert hops == []
    assert c.post("/v1/embed", json={"text": ["a, [b] " * 1000] * 20}).status_code == 200
    assert len(hops) == 1 and hops[0] > jsonbody.INLINE_PARSE_BYTES
