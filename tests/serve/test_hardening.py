"""Hardening of the HTTP API (issue #11): what an unauthenticated or careless client can make the server spend,
and inputs that used to be 500s. In-process (FastAPI TestClient) against the fake model."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from servekit import AUTH, DIM, FakeModel, err, png_b64, solid, tone, wav_b64

from polymodal.data import codec
from polymodal.serve import MediaLimits, ServeSettings
from polymodal.serve import media as serve_media
from polymodal.serve.schemas import MAX_EF_SEARCH, MAX_K_FACTOR, MAX_NPROBE, MAX_VECTOR_DIM, NAME_PATTERN

JSON = {"content-type": "application/json"}
Client = Callable[..., TestClient]
REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|BytesIO|Error opening|libsndfile", re.IGNORECASE)


def raw(c: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    """POST ``body`` as ASCII JSON: lone surrogates travel as \\udXXX escapes, as any JSON encoder may send them."""
    return c.post(path, content=json.dumps(body, ensure_ascii=True), headers={**JSON, **(headers or {})})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few KiB that decode to width*height*3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + b"\x00" * ((width + 7) // 8)) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def flac_bomb() -> bytes:
    """60 s of 8-channel 48 kHz silence: ~23 KiB of FLAC that decode to 23 million float32 samples (92 MB)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", 48000, 8, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((48000, 8), np.int16)
        for _ in range(60):
            f.write(block)
    return buf.getvalue()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every image/audio decode the service starts (the header checks are not decodes)."""
    calls: list[str] = []
    for name in ("decode_image", "decode_audio"):
        real = getattr(codec, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(serve_media, name, spy)
    return calls


# ----------------------------------------------------------------------------------- 1. decompression bombs

def test_image_bombs_are_refused_from_their_headers_before_any_decoding(client: Client, decodes: list[str]):
    """Each image is within the per-image limit, together they are not: refused before a pixel is decoded."""
    limits = MediaLimits()
    side = int(limits.max_pixels ** 0.5)
    bomb = b64(png_bomb(side, side))
    n = limits.max_request_pixels // (side * side) + 1
    assert len(bomb) < 16_000
    c = client()
    body = err(c.post("/v1/embed", json={"image": [bomb] * n}), 422, f"image[{n - 1}]", "InvalidInput")
    assert str(limits.max_request_pixels) in body["message"] and "per request" in body["message"]
    assert decodes == []


def test_audio_bombs_are_refused_from_their_headers_before_any_decoding(client: Client, decodes: list[str],
                                                                        flac_bomb: bytes):
    limits = MediaLimits()
    info = sf.info(io.BytesIO(flac_bomb))
    assert info.duration <= limits.max_seconds  # each clip is within the per-clip limit
    n = limits.max_request_samples // (info.frames * info.channels) + 1
    c = client()
    body = err(c.post("/v1/embed", json={"audio": [b64(flac_bomb)] * n}), 422, f"audio[{n - 1}]")
    assert str(limits.max_request_samples) in body["message"] and "8 channels" in body["message"]
    assert decodes == []


def test_the_request_budget_spans_inputs_modalities_and_endpoints(client: Client, decodes: list[str]):
    c = client(limits=MediaLimits(max_request_pixels=3000, max_request_samples=20_000))
    img = png_b64(solid((10, 200, 30), 40, 50))  # 2,000 pixels
    wav = wav_b64(tone(300, seconds=1.0), 16000)  # 16,000 samples
    err(c.post("/v1/embed", json={"image": [img], "video": [{"data": img, "frames": 2}]}), 422, "video[0].data")
    err(c.post("/v1/embed", json={"audio": [wav, wav]}), 422, "audio[1]")
    items = [{"id": 1, "image": img}, {"id": 2, "text": "x", "image": img}]
    err(c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH), 422, "items[1].image")
    err(c.post("/v1/search", json={"image": img, "video": {"data": img, "frames": 1}}), 422, "video.data")
    assert decodes == []
    ok = c.post("/v1/embed", json={"image": [img], "audio": [wav]})
    assert ok.status_code == 200, ok.text
    assert sorted(decodes) == ["decode_audio", "decode_image"]


def test_images_too_thin_are_refused_from_their_headers_on_every_route(client: Client, decodes: list[str]):
    """A 1 x W image is scaled up to size x (size * W) before the crop: beyond max_aspect it is refused from its
    header (a 1 x 100,000 PNG is a few hundred bytes), whichever route it comes by; film strips are judged by
    their frames."""
    c = client()
    limits = MediaLimits()
    assert limits.max_aspect == 64.0
    wide, tall = b64(png_bomb(100_000, 1)), b64(png_bomb(2, 200))   # aspect 100,000 and 100
    ok_img = b64(png_bomb(64, 1))                                      # exactly the bound

    def thin(body: dict[str, Any], ratio: str) -> None:
        assert "max_aspect" in body["message"] and ratio in body["message"], body

    thin(err(c.post("/v1/embed", json={"image": [ok_img, wide]}), 422, "image[1]", "InvalidInput"), "100000")
    thin(err(c.post("/v1/embed", json={"image": [tall]}), 422, "image[0]", "InvalidInput"), "100")
    # a film strip of 4 frames 2 x 64 is fine (each frame 2:1); one of 2 frames of 256 x 2 is not (128:1)
    thin(err(c.post("/v1/embed", json={"video": [{"data": b64(png_bomb(256, 4)), "frames": 2}]}), 422,
             "video[0].data"), "128")
    thin(err(c.post("/v1/search", json={"image": wide}), 422, "image"), "100000")
    thin(err(c.post("/v1/search", json={"video": {"data": b64(png_bomb(1, 300)), "frames": 1}}), 422, "video.data"),
         "300")
    items = [{"id": 1, "text": "x", "image": ok_img}, {"id": 2, "text": "y", "image": wide}]
    thin(err(c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH), 422, "items[1].image"),
         "100000")
    r = c.post("/v1/embeddings", json={"model": "polymodal", "input": ["x", f"data:image/png;base64,{wide}"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]", r.text
    thin(r.json()["error"], "100000")
    assert decodes == []
    ok = c.post("/v1/embed", json={"image": [ok_img], "video": [{"data": b64(png_bomb(2, 256)), "frames": 4}]})
    assert ok.status_code == 200, ok.text
    # the bound is a setting
    strict = client(limits=MediaLimits(max_aspect=4.0))
    thin(err(strict.post("/v1/embed", json={"image": [b64(png_bomb(10, 2))]}), 422, "image[0]"), "5")


def test_audio_channels_count_toward_the_request_budget(client: Client, decodes: list[str]):
    buf = io.BytesIO()
    sf.write(buf, np.zeros((8000, 8), np.float32), 8000, format="WAV", subtype="PCM_16")  # 1 s, 64,000 samples
    c = client(limits=MediaLimits(max_request_samples=50_000))
    err(c.post("/v1/embed", json={"audio": [b64(buf.getvalue())]}), 422, "audio[0]")
    assert decodes == []


def test_audio_is_decoded_no_further_than_its_header_says(client: Client):
    """A WAV whose header declares fewer frames than it carries is read only as far as declared (and charged)."""
    wave = np.full(8000, 0.25, np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, 8000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    pos = data.index(b"data")
    struct.pack_into("<I", data, pos + 4, 800 * 2)  # the data chunk now claims 800 frames
    assert sf.info(io.BytesIO(bytes(data))).frames == 800
    r = client().post("/v1/embed", json={"audio": [b64(bytes(data))]})
    assert r.status_code == 200, r.text
    expected = FakeModel().embed(audio=[(np.full(800, 0.25, np.float32), 8000)])
    np.testing.assert_allclose(r.json()["vectors"]["audio"], expected, rtol=1e-4)


def test_a_huge_vector_is_refused_while_the_body_is_parsed(client: Client):
    c = client()
    budget = c.app.state.service.max_json_values
    assert budget < 1_000_000
    body = ('{"k": 1, "vector": [' + ",".join(["0.5"] * (budget + 1)) + "]}").encode()
    r = c.post("/v1/search", content=body, headers=JSON)
    msg = err(r, 413, "body", "PayloadTooLarge")["message"]
    assert str(budget) in msg and "JSON values" in msg
    # the schema bounds a vector too (documented as maxItems), whatever the number budget
    c = client(max_json_values=10 * MAX_VECTOR_DIM)
    err(c.post("/v1/search", json={"vector": [0.5] * (MAX_VECTOR_DIM + 1)}), 422, "vector")


def test_many_commas_in_text_are_not_numbers(client: Client):
    """The fast path counts , [ : as an upper bound on numbers; a body full of commas in strings still passes."""
    c = client(max_json_values=1000)
    texts = ["a, b, c, " * 100] * 5  # 1,500 commas, no numbers but none
    r = c.post("/v1/embed", json={"text": texts})
    assert r.status_code == 200, r.text
    err(c.post("/v1/collections/main/items/delete", json={"ids": list(range(1001))}, headers=AUTH), 413, "body")


# ------------------------------------------------------------------------------ 2. unbounded search parameters

def hnsw_client(client: Client) -> TestClient:
    c = client()
    r = c.post("/v1/collections/h", json={"index": "hnsw"}, headers=AUTH)
    assert r.status_code == 201, r.text
    vecs = np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float32)
    items = [{"id": i, "vector": v.tolist(), "metadata": {"n": i}} for i, v in enumerate(vecs)]
    assert c.post("/v1/collections/h/items", json={"items": items}, headers=AUTH).status_code == 200
    return c


@pytest.mark.parametrize(("params", "field"), [
    ({"efSearch": 2**31}, "params.efSearch"), ({"efSearch": MAX_EF_SEARCH + 1}, "params.efSearch"),
    ({"k_factor": 2**40}, "params.k_factor"), ({"nprobe": 2**63}, "params.nprobe"),
    ({"efSearch": 0}, "params.efSearch"), ({"bogus": 1}, "params.bogus"), ({"exact": "maybe"}, "params.exact"),
])
def test_search_params_beyond_their_bounds_are_422(client: Client, params: dict, field: str):
    c = hnsw_client(client)
    err(c.post("/v1/search", json={"text": "a", "collection": "h", "params": params}), 422, field, "InvalidInput")


def test_search_params_at_their_bounds_work(client: Client):
    c = hnsw_client(client)
    for params in ({"efSearch": MAX_EF_SEARCH}, {"k_factor": MAX_K_FACTOR}, {"nprobe": MAX_NPROBE}, {"exact": True}):
        r = c.post("/v1/search", json={"text": "a", "collection": "h", "k": 5, "params": params})
        assert r.status_code == 200 and len(r.json()["hits"]) == 5, (params, r.text)


@pytest.mark.parametrize(("flt", "field"), [
    ({"n": 2**64}, "filter.n"), ({"n": -(2**63) - 1}, "filter.n"), ({"n": {"gte": 2**70}}, "filter.n.gte"),
    ({"n": [1, 2**63]}, "filter.n[1]"), ({"n": {"in": [3, 10**30]}}, "filter.n.in[1]"),
])
def test_filter_integers_beyond_int64_are_422(client: Client, flt: dict, field: str):
    c = hnsw_client(client)
    body = err(c.post("/v1/search", json={"text": "a", "collection": "h", "filter": flt}), 422, field)
    assert "int64" in body["message"]
    # int64's own range is fine
    edge = {"n": {"gte": -(2**63), "lte": 2**63 - 1}}
    assert c.post("/v1/search", json={"text": "a", "collection": "h", "k": 3, "filter": edge}).status_code == 200


def test_a_bad_value_in_metadata_leaves_the_collection_writable(client: Client):
    """An int64 overflow or a lone surrogate used to fail half-way through a write and leave the collection
    refusing every later write until a restart."""
    c = client()
    for meta in ({"x": 2**64}, {"x": "\ud800"}, {"\udc00": 1}, {"deep": [{"y": [2**70]}]}):
        r = raw(c, "/v1/collections/main/items", {"items": [{"id": 1, "text": "a", "metadata": meta}]}, AUTH)
        err(r, 422, kind="InvalidInput")
        assert r.json()["error"]["field"].startswith("items[0].metadata")
    ok = c.post("/v1/collections/main/items", json={"items": [{"id": 1, "text": "a", "metadata": {"x": 1}}]},
                headers=AUTH)
    assert ok.status_code == 200, ok.text
    err(c.post("/v1/collections/main/items/delete", json={"ids": [2**64]}, headers=AUTH), 422, "ids[0]")


# ------------------------------------------------------------------------------------- 4. lone surrogates

@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/search", {"text": "red \ud800 circle"}, "text"),
    ("/v1/search", {"text": "a", "filter": {"split": "\udfff"}}, "filter.split"),
    ("/v1/search", {"text": "a", "filter": {"split": {"in": ["ok", "\ud83d"]}}}, "filter.split.in[1]"),
    ("/v1/search", {"text": "a", "filter": {"sp\ud800lit": "x"}}, "filter"),
    ("/v1/embed", {"text": ["fine", "\ud800"]}, "text[1]"),
    ("/v1/collections/main/items", {"items": [{"id": 1, "text": "\ud800"}]}, "items[0].text"),
    ("/v1/collections/main/items", {"items": [{"id": 1, "text": "a", "metadata": {"t": ["\udc00"]}}]},
     "items[0].metadata.t[0]"),
])
def test_lone_surrogates_are_422_naming_the_field(client: Client, path: str, body: dict, field: str):
    c = client()
    msg = err(raw(c, path, body, AUTH), 422, field, "InvalidInput")["message"]
    assert "surrogate" in msg


def test_escaped_surrogate_pairs_and_utf8_text_are_fine(client: Client):
    c = client()
    r = raw(c, "/v1/collections/main/items", {"items": [{"id": 1, "text": "smile \U0001F600 caf\u00e9"}]}, AUTH)
    assert r.status_code == 200, r.text  # json.dumps sends the emoji as the pair \ud83d\ude00
    hits = raw(c, "/v1/search", {"text": "smile \U0001F600 caf\u00e9", "k": 1}).json()["hits"]
    assert hits[0]["metadata"]["caption"] == "smile \U0001F600 caf\u00e9"


def test_utf8_encoded_surrogates_are_422_too(client: Client):
    """Python's JSON parser decodes bytes with 'surrogatepass': raw ED A0 80 becomes a lone surrogate too."""
    r = client().post("/v1/search", content=b'{"text": "a \xed\xa0\x80"}', headers=JSON)
    err(r, 422, "text")


# ---------------------------------------------------------------------------------------- 5. API keys

@pytest.mark.parametrize("key", ["schl\u00fcssel-\u043a\u043b\u044e\u0447", "voil\u00e0", "\u00c5-key-\u00c5"])
def test_non_ascii_api_keys_match_when_sent_as_utf8(client: Client, key: str):
    c = client(api_key=key)
    body = {"items": [{"id": 1, "text": "a"}]}
    for header in ({"X-API-Key": key.encode()}, {"Authorization": b"Bearer " + key.encode()}):
        r = c.post("/v1/collections/main/items", json=body, headers=header)
        assert r.status_code == 200, (header, r.text)
    err(c.post("/v1/collections/main/items", json=body, headers={"X-API-Key": (key + "\u00e9").encode()}), 403)
    err(c.post("/v1/collections/main/items", json=body, headers={"X-API-Key": key[:-1].encode()}), 403)


def test_an_api_key_from_an_undecodable_environment_matches_its_bytes(client: Client):
    """os.environ holds bytes that are not UTF-8 as surrogates; the key is those bytes. (Raw header bytes go
    straight to check_auth: the test client would re-encode them as UTF-8.)"""
    from starlette.requests import Request

    from polymodal.errors import ApiError

    key = b"k\xffey".decode("utf-8", "surrogateescape")
    service = client(api_key=key).app.state.service

    def request(value: bytes) -> Request:
        return Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"x-api-key", value)]})

    service.check_auth(request(b"k\xffey"), write=True)
    with pytest.raises(ApiError) as exc:
        service.check_auth(request(b"k\xc3\xbfey"), write=True)  # the same text, sent as UTF-8
    assert exc.value.status == 403


# ------------------------------------------------------------------------------------ 6. the OpenAPI schema

def test_malformed_json_is_a_documented_400(client: Client):
    c = client()
    for content in (b"{not json", b'{"text": ["\xff"]}', b"[" * 100_000):
        err(c.post("/v1/embed", content=content, headers=JSON), 400, "body", "BadRequest")
    paths = c.get("/openapi.json").json()["paths"]
    posts = {p: ops["post"] for p, ops in paths.items() if "post" in ops}
    assert {"/v1/embed", "/v1/search", "/v1/collections/{name}/items", "/v1/collections/{name}/items/delete"} \
        <= posts.keys()
    for path, op in posts.items():
        assert {"400", "413", "422"} <= op["responses"].keys(), path
        assert "Malformed JSON" in op["responses"]["400"]["description"]


def test_openapi_media_endpoint_serves_png_and_flac_not_json(client: Client):
    op = client().get("/openapi.json").json()["paths"]["/v1/items/{collection}/{item_id}/media"]["get"]
    content = op["responses"]["200"]["content"]
    assert set(content) == {"image/png", "audio/flac"}


def test_openapi_has_name_pattern_and_numeric_bounds(client: Client):
    from polymodal.serve.store import _NAME

    assert _NAME.pattern == NAME_PATTERN  # the documented pattern is the one enforced
    c = client(max_k=77, max_items=33, limits=MediaLimits(max_frames=9))
    schema = c.get("/openapi.json").json()
    for path in ("/v1/collections/{name}", "/v1/collections/{name}/items"):
        for op in schema["paths"][path].values():
            name = next(p for p in op["parameters"] if p["name"] == "name")
            assert name["schema"]["pattern"] == NAME_PATTERN, path
    models = schema["components"]["schemas"]
    assert models["SearchRequest"]["properties"]["collection"]["pattern"] == NAME_PATTERN
    k = models["SearchRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 77)
    assert models["VideoIn"]["properties"]["frames"]["maximum"] == 9
    assert models["UpsertRequest"]["properties"]["items"]["maxItems"] == 33
    params = models["SearchParams"]["properties"]
    assert [params[p]["anyOf"][0]["maximum"] for p in ("nprobe", "efSearch", "k_factor")] == \
        [MAX_NPROBE, MAX_EF_SEARCH, MAX_K_FACTOR]
    vector = models["SearchRequest"]["properties"]["vector"]["anyOf"][0]
    assert vector["maxItems"] == MAX_VECTOR_DIM
    assert (models["ItemIn"]["properties"]["id"]["minimum"], models["ItemIn"]["properties"]["id"]["maximum"]) == \
        (0, 2**63 - 1)
    err(c.post("/v1/search", json={"text": "a", "k": 78}), 422, "k")  # the bound the schema states is enforced


def test_documented_image_and_audio_formats_are_exactly_the_accepted_ones(client: Client):
    c = client()
    described = c.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]
    for fmt in codec.IMAGE_FORMATS:
        buf = io.BytesIO()
        solid_img = solid((90, 20, 200), 16, 16)
        from PIL import Image
        Image.fromarray(solid_img).save(buf, format=fmt)
        r = c.post("/v1/embed", json={"image": [b64(buf.getvalue())]})
        assert r.status_code == 200, (fmt, r.text)
        assert codec.format_list([fmt]) in described["image"]["description"]
    for fmt in codec.AUDIO_FORMATS:
        buf = io.BytesIO()
        sf.write(buf, tone(400, 0.2, 16000), 16000, format=fmt)
        r = c.post("/v1/embed", json={"audio": [b64(buf.getvalue())]})
        assert r.status_code == 200, (fmt, r.text)
    buf = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (4, 4)).save(buf, format="PPM")
    msg = err(c.post("/v1/embed", json={"image": [b64(buf.getvalue())]}), 422, "image[0]")["message"]
    assert msg == "not a readable image (expected PNG, JPEG, WebP, BMP, GIF or TIFF)"


# -------------------------------------------------------------------------------- 8. media error messages

def test_media_errors_say_what_was_expected_without_internals(client: Client):
    c = client()
    items = [{"id": i, "text": "x"} for i in range(3)] + [{"id": 3, "audio": b64(b"RIFF0000WAVEjunk")}]
    msg = err(c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH), 422,
              "items[3].audio")["message"]
    assert msg == "not a readable audio file (expected WAV, FLAC, OGG or MP3)"
    for body, field in (({"image": [b64(b"garbage" * 10)]}, "image[0]"), ({"audio": ["@@@"]}, "audio[0]"),
                        ({"image": [b64(png_bomb(8, 8)[:40])]}, "image[0]")):
        msg = err(c.post("/v1/embed", json=body), 422, field)["message"]
        assert not REPR.search(msg) and "expected" in msg, msg


# ----------------------------------------------------------------------------------- 7, 9. docs and favicon

def local_refs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_work_offline(client: Client, page: str):
    c = client()
    r = c.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text, re.IGNORECASE), "an external URL"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    refs = local_refs(r.text)
    assert any(ref.endswith(".js") for ref in refs)
    for ref in refs:
        asset = c.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert "/openapi.json" in r.text


def test_favicon_is_served(client: Client):
    c = client()
    r = c.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon"
    from PIL import Image
    assert Image.open(io.BytesIO(r.content)).format == "ICO"
    assert 'rel="icon" href="/favicon.ico"' in c.get("/").text


def test_a_vector_beyond_float32_is_a_clear_422_without_a_runtime_warning():
    """1e300 overflows float32: the request is refused, and the server log gets no numpy RuntimeWarning."""
    import warnings

    from polymodal.errors import InvalidInput
    from polymodal.serve.items import prepare_one
    from polymodal.serve.media import RequestBudget

    settings = ServeSettings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidInput, match="overflows float32"):
            prepare_one("vector", [1e300, 0.5], settings, "vector", RequestBudget(settings.limits))
