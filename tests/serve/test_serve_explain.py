"""``POST /v1/explain``: the map of a stored item's thumbnail, or of a given image, equals the library's
`similarity_map` on the same image with the same model (one batched embed call); the overlay is a PNG; bad
input is a 4xx naming the field; the search page has its "why?" button."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image
from servekit import AUTH, FakeModel, err, png_b64

from polymodal.models.explain import similarity_map

Client = Callable[..., Any]


def picture(h: int = 40, w: int = 48) -> np.ndarray:
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[10:22, 12:30] = (220, 30, 30)
    return img


def decode_png(b64: str) -> np.ndarray:
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def served(client: Client) -> tuple[Any, FakeModel]:
    model = FakeModel()
    c = client(model)
    r = c.post("/v1/collections/main/items", json={"items": [{"id": 7, "image": png_b64(picture()),
                                                                "metadata": {"caption": "a red box"}}]},
               headers=AUTH)
    assert r.status_code == 200, r.text
    return c, model


def test_explain_a_stored_item(served: tuple[Any, FakeModel]):
    c, model = served
    stored = c.get("/v1/items/main/7/media?kind=image")
    thumb = np.asarray(Image.open(io.BytesIO(stored.content)).convert("RGB"))
    model.calls.clear()
    r = c.post("/v1/explain", json={"text": "red box", "id": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["collection"], body["id"], body["grid"], body["method"]) == ("main", 7, [8, 8], "occlusion")
    heat = np.array(body["map"])
    assert heat.shape == (8, 8) and np.isfinite(heat).all()
    reference = FakeModel()
    np.testing.assert_allclose(heat, similarity_map(reference, thumb, "red box", grid=8), atol=1e-6)
    q, whole = reference.embed(text=["red box"])[0], reference.embed(image=[thumb])[0]
    assert body["score"] == pytest.approx(float(whole @ q), abs=1e-6)
    assert sorted(model.calls) == [("image", 65), ("text", 1)]     # the image and 64 copies: one call
    overlay = decode_png(body["overlay"])
    assert overlay.shape[2] == 3 and max(overlay.shape[:2]) >= 128


def test_explain_a_given_image(served: tuple[Any, FakeModel]):
    c, _ = served
    img = picture(30, 20)
    r = c.post("/v1/explain", json={"text": "a red box", "image": png_b64(img), "grid": 4, "fill": "grey"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["collection"] is None and body["id"] is None and body["grid"] == [4, 4]
    want = similarity_map(FakeModel(), img, "a red box", grid=4, fill="grey")
    np.testing.assert_allclose(np.array(body["map"]), want, atol=1e-6)
    data_url = "data:image/png;base64," + png_b64(img)
    again = c.post("/v1/explain", json={"text": "a red box", "image": data_url, "grid": 4, "fill": "grey"}).json()
    assert again["map"] == body["map"] and again["overlay"] == body["overlay"]


def test_bad_input_names_the_field(served: tuple[Any, FakeModel]):
    c, _ = served
    img = png_b64(picture())
    err(c.post("/v1/explain", json={"id": 7}), 422, "text")
    err(c.post("/v1/explain", json={"text": "  ", "id": 7}), 422, "text")
    err(c.post("/v1/explain", json={"text": "a"}), 422, "id")
    err(c.post("/v1/explain", json={"text": "a", "id": 7, "image": img}), 422, "image")
    for grid in (0, 17, "8", 2.5):
        err(c.post("/v1/explain", json={"text": "a", "id": 7, "grid": grid}), 422, "grid")
    err(c.post("/v1/explain", json={"text": "a", "id": 7, "fill": "blue"}), 422, "fill")
    err(c.post("/v1/explain", json={"text": "a", "id": 7, "extra": 1}), 422, "extra")
    err(c.post("/v1/explain", json={"text": "a", "id": -1}), 422, "id")
    err(c.post("/v1/explain", json={"text": "a", "id": 8}), 404, "id", "NotFound")
    err(c.post("/v1/explain", json={"text": "a", "id": 7, "collection": "nope"}), 404, "collection")
    err(c.post("/v1/explain", json={"text": "a", "id": 7, "collection": "../x"}), 422, "collection")
    err(c.post("/v1/explain", json={"text": "a", "image": "not base64 at all!"}), 422, "image")
    err(c.post("/v1/explain", json={"text": "a", "image": png_b64(picture(4, 4))}), 422, "grid")
    err(c.post("/v1/explain", json={"text": "a", "id": 7, "model": "other"}), 404, "model", "ModelNotFound")
    assert c.post("/v1/explain", json={"text": "a", "id": 7, "model": "polymodal"}).status_code == 200


def test_text_only_model_and_read_keys(client: Client):
    class TextOnly(FakeModel):
        modalities = ("text",)

    c = client(TextOnly())
    err(c.post("/v1/explain", json={"text": "a", "image": png_b64(picture())}), 422, "image")
    locked = client(auth_reads=True)
    err(locked.post("/v1/explain", json={"text": "a", "image": png_b64(picture())}), 401)
    ok = locked.post("/v1/explain", json={"text": "a", "image": png_b64(picture())}, headers=AUTH)
    assert ok.status_code == 200, ok.text


def test_page_has_the_why_button_and_schema_the_route(served: tuple[Any, FakeModel]):
    c, _ = served
    js = c.get("/static/app.js").text
    assert "/v1/explain" in js and "why?" in js
    schema = c.get("/openapi.json").json()
    assert "/v1/explain" in schema["paths"]
    assert schema["components"]["schemas"]["ExplainRequest"]["properties"]["grid"]["maximum"] == 16
