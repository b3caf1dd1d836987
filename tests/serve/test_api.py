"""The HTTP API in-process (FastAPI TestClient): every endpoint and error path, against a fake model with
known embeddings and real collections on disk."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from servekit import AUTH, DIM, KEY, FakeModel, err, png_b64, solid, tone, wav_b64

from polymodal.data.codec import decode_audio
from polymodal.index import Collection, search_with_model
from polymodal.serve import MediaLimits

Client = Callable[..., TestClient]


def add_items(c: TestClient) -> None:
    items = [{"id": 1, "text": "red circle", "image": png_b64(solid((250, 10, 10))), "embed": "text",
              "metadata": {"split": "test", "n": 1}},
             {"id": 2, "text": "blue square", "audio": wav_b64(tone(440), 16000), "embed": "text",
              "metadata": {"split": "train", "n": 2}},
             {"id": 3, "text": "green triangle", "metadata": {"split": "test", "n": 3}}]
    r = c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"collection": "main", "upserted": 3, "count": 3}


# ------------------------------------------------------------------------------------------ service

def test_health_openapi_and_page(client: Client):
    c = client()
    assert c.get("/health").json() == {"status": "ok", "modalities": ["audio", "image", "text", "video"],
                                       "dim": DIM, "queue_depth": 0}
    paths = c.get("/openapi.json").json()["paths"]
    for p in ("/v1/embed", "/v1/search", "/v1/collections/{name}", "/v1/collections/{name}/items",
              "/v1/items/{collection}/{item_id}/media", "/health", "/metrics"):
        assert p in paths
    page = c.get("/")
    assert page.status_code == 200 and 'id="results"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert c.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    err(c.get("/static/index.html.bak"), 404)
    err(c.get("/nope"), 404, kind="NotFound")


def test_metrics_count_routes_batches_and_queue(client: Client):
    c = client()
    c.post("/v1/embed", json={"text": ["a", "b"]})
    c.post("/v1/embed", json={"text": [""]})
    text = c.get("/metrics").text
    assert 'polymodal_http_requests_total{method="POST",route="/v1/embed",status="200"} 1' in text
    assert 'polymodal_http_requests_total{method="POST",route="/v1/embed",status="422"} 1' in text
    assert 'polymodal_http_request_duration_seconds_count{method="POST",route="/v1/embed"} 2' in text
    assert 'polymodal_embed_batch_size_bucket{modality="text",le="2"} 1' in text
    assert "polymodal_embed_queue_depth 0" in text


# ------------------------------------------------------------------------------------------ embed

def test_embed_every_modality_matches_the_model(client: Client):
    c = client()
    img, wave = solid((30, 60, 90)), tone(330, sr=8000)
    video = np.stack([solid((i * 40, 10, 10), 8, 6) for i in range(3)])
    body = {"text": ["red circle", "a b c"], "image": ["data:image/png;base64," + png_b64(img)],
            "audio": [wav_b64(wave, 8000)], "video": [{"data": png_b64(video.reshape(24, 6, 3)), "frames": 3}]}
    r = c.post("/v1/embed", json=body)
    assert r.status_code == 200, r.text
    v, ref = r.json()["vectors"], FakeModel()
    np.testing.assert_allclose(v["text"], ref.embed(text=body["text"]), rtol=1e-6)
    np.testing.assert_allclose(v["image"], ref.embed(image=[img]), rtol=1e-6)
    np.testing.assert_allclose(v["video"], ref.embed(video=[video]), rtol=1e-6)
    wave16, _ = decode_audio(base64.b64decode(body["audio"][0]))  # as the server hears it (16-bit)
    np.testing.assert_allclose(v["audio"], ref.embed(audio=[(wave16, 8000)]), rtol=1e-5)


def test_embed_errors_name_the_field(client: Client):
    c = client(limits=MediaLimits(max_pixels=10_000, max_seconds=1.0))
    err(c.post("/v1/embed", json={}), 422, "body")
    err(c.post("/v1/embed", json={"text": ["ok", " "]}), 422, "text[1]")
    err(c.post("/v1/embed", json={"image": ["not base64!"]}), 422, "image[0]")
    corrupt = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20).decode()
    err(c.post("/v1/embed", json={"image": [png_b64(solid((1, 2, 3))), corrupt]}), 422, "image[1]")
    err(c.post("/v1/embed", json={"image": [png_b64(solid((1, 2, 3), 200, 200))]}), 422, "image[0]")
    err(c.post("/v1/embed", json={"audio": [base64.b64encode(b"RIFF0000WAVEjunk").decode()]}), 422, "audio[0]")
    err(c.post("/v1/embed", json={"audio": [wav_b64(tone(200, seconds=2.0), 16000)]}), 422, "audio[0]")
    err(c.post("/v1/embed", json={"video": [{"data": png_b64(solid((1, 1, 1), 10, 4)), "frames": 3}]}), 422,
        "video[0].data")
    for frames in (True, "3", 3.0):  # a count is a JSON integer, not something pydantic could coerce into one
        err(c.post("/v1/embed", json={"video": [{"data": png_b64(solid((1, 1, 1), 12, 4)), "frames": frames}]}),
            422, "video[0].frames")
    err(c.post("/v1/embed", json={"text": "not a list"}), 422, "text")
    err(c.post("/v1/embed", json={"txt": ["typo"]}), 422, "txt")
    err(c.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"}), 400, "body",
        "BadRequest")


def test_embed_modality_the_model_lacks(client: Client):
    model = FakeModel()
    model.modalities = ("image", "text")
    c = client(model)
    err(c.post("/v1/embed", json={"audio": [wav_b64(tone(300), 16000)]}), 422, "audio")


def test_model_crash_is_a_json_500(client: Client):
    class Broken(FakeModel):
        def embed(self, **kw):
            raise RuntimeError("boom")

    body = err(client(Broken()).post("/v1/embed", json={"text": ["x"]}), 500, kind="InternalError")
    assert "boom" not in body["message"]


def test_a_model_with_unnormalised_embeddings_is_a_500_not_the_clients_fault(client: Client):
    class Unnormalised(FakeModel):
        def embed(self, **kw):
            return 2.0 * super().embed(**kw)

    c = client(Unnormalised())
    body = err(c.post("/v1/search", json={"text": "red circle", "k": 1}), 500)
    assert body["type"] != "InvalidInput"


# ------------------------------------------------------------------------------------------ search

def test_search_text_image_audio_vector(client: Client):
    c = client()
    add_items(c)
    hits = c.post("/v1/search", json={"text": "red circle", "k": 2}).json()["hits"]
    assert [h["id"] for h in hits][0] == 1 and len(hits) == 2
    assert hits[0]["metadata"] == {"split": "test", "n": 1, "caption": "red circle"}
    assert hits[0]["media"] == {"image": "/v1/items/main/1/media?kind=image"}
    assert pytest.approx(hits[0]["score"], abs=1e-5) == 1.0
    vec = FakeModel().embed(text=["blue square"])[0]
    r = c.post("/v1/search", json={"vector": (vec * 3).tolist(), "k": 1, "collection": "main"}).json()
    assert r["hits"][0]["id"] == 2 and r["inputs"] == ["vector"]
    r = c.post("/v1/search", json={"image": png_b64(solid((5, 5, 200))), "k": 3}).json()
    assert len(r["hits"]) == 3 and r["inputs"] == ["image"]
    r = c.post("/v1/search", json={"audio": wav_b64(tone(500), 16000), "k": 1}).json()
    assert r["inputs"] == ["audio"] and len(r["hits"]) == 1


def test_fused_search_equals_weighted_normalized_sum(client: Client, tmp_path: Path):
    c = client()
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((40, DIM)).astype(np.float32)
    items = [{"id": i, "vector": v.tolist()} for i, v in enumerate(vecs)]
    assert c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH).status_code == 200
    img = solid((200, 100, 0))
    body = {"text": "red circle", "image": png_b64(img), "weights": {"text": 2.0, "image": 0.5}, "k": 5}
    got = c.post("/v1/search", json=body).json()["hits"]
    m = FakeModel()
    q = 2.0 * m.embed(text=["red circle"])[0] + 0.5 * m.embed(image=[img])[0]
    q /= np.linalg.norm(q)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    scores = unit @ q
    expected = np.argsort(-scores)[:5]
    assert [h["id"] for h in got] == expected.tolist()
    np.testing.assert_allclose([h["score"] for h in got], scores[expected], rtol=1e-5)


def test_search_route_matches_search_with_model_and_numpy(client: Client, tmp_path: Path):
    """One pipeline: the route (embeddings through the micro-batcher) and `search_with_model` (the model called
    directly) give the hits and scores of a float64 numpy computation for weighted text + image + a raw
    vector; and a raw vector alone scores like its normalised version."""
    c = client()
    rng = np.random.default_rng(5)
    vecs = (rng.standard_normal((60, DIM)) * rng.uniform(0.5, 20.0, (60, 1))).astype(np.float32)
    items = [{"id": i, "vector": v.tolist()} for i, v in enumerate(vecs)]
    assert c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH).status_code == 200
    img, raw = solid((30, 160, 90)), (9.0 * rng.standard_normal(DIM)).astype(np.float32)
    weights = {"text": 1.5, "image": 0.7, "vector": 2.0}
    body = {"text": "green bird", "image": png_b64(img), "vector": raw.tolist(), "weights": weights, "k": 10}
    http = c.post("/v1/search", json=body).json()
    assert http["inputs"] == ["text", "image", "vector"]
    m = FakeModel()
    parts = {"text": m.embed(text=["green bird"])[0], "image": m.embed(image=[img])[0], "vector": raw}
    q = sum(weights[k] * v.astype(np.float64) / np.linalg.norm(v.astype(np.float64)) for k, v in parts.items())
    q /= np.linalg.norm(q)
    unit = vecs.astype(np.float64) / np.linalg.norm(vecs.astype(np.float64), axis=1, keepdims=True)
    scores = unit @ q
    order = np.argsort(-scores)[:10]
    with Collection.open(tmp_path / "root" / "main", readonly=True) as coll:
        py = search_with_model(coll, FakeModel(), text="green bird", image=img, vector=raw, weights=weights, k=10)
    assert [h["id"] for h in http["hits"]] == py.ids[0].tolist() == order.tolist()
    np.testing.assert_allclose([h["score"] for h in http["hits"]], py.scores[0], rtol=1e-6)
    np.testing.assert_allclose(py.scores[0], scores[order], rtol=1e-5)

    direction = unit @ (raw / np.linalg.norm(raw.astype(np.float64)))
    order = np.argsort(-direction)[:10]
    for v in (raw, raw / np.linalg.norm(raw)):
        hits = c.post("/v1/search", json={"vector": v.tolist(), "k": 10}).json()["hits"]
        assert [h["id"] for h in hits] == order.tolist()
        np.testing.assert_allclose([h["score"] for h in hits], direction[order], rtol=1e-5)


def test_search_filter_and_errors(client: Client):
    c = client()
    add_items(c)
    hits = c.post("/v1/search", json={"text": "red circle", "k": 5, "filter": {"split": "test"}}).json()["hits"]
    assert sorted(h["id"] for h in hits) == [1, 3]
    hits = c.post("/v1/search", json={"text": "x", "k": 5, "filter": {"n": {"gte": 2}}}).json()["hits"]
    assert sorted(h["id"] for h in hits) == [2, 3]
    err(c.post("/v1/search", json={"k": 3}), 422, "query")
    err(c.post("/v1/search", json={"text": "a", "k": 0}), 422, "k")
    err(c.post("/v1/search", json={"text": "a", "k": 5000}), 422, "k")
    err(c.post("/v1/search", json={"vector": [1.0, 2.0]}), 422, "vector")
    err(c.post("/v1/search", json={"text": "a", "weights": {"image": 1.0}}), 422, "weights")
    err(c.post("/v1/search", json={"text": "a", "filter": {"n": {"between": 1}}}), 422, "filter.n")
    err(c.post("/v1/search", json={"text": "a", "collection": "missing"}), 404, "collection", "NotFound")
    err(c.post("/v1/search", json={"text": "a", "collection": "../etc"}), 422, "collection")
    err(c.post("/v1/search", json={"image": "@@@@"}), 422, "image")


# ------------------------------------------------------------------------------------------ collections

def test_collection_lifecycle(client: Client):
    c = client()
    assert c.get("/v1/collections").json() == {"default": "main", "collections": ["main"]}
    r = c.post("/v1/collections/photos", json={"metric": "ip", "index": "flat"}, headers=AUTH)
    assert r.status_code == 201 and r.json() == {"name": "photos", "dim": DIM, "metric": "ip", "index": "flat",
                                                 "count": 0}
    err(c.post("/v1/collections/photos", headers=AUTH), 409, kind="Conflict")
    err(c.post("/v1/collections/bad.name", headers=AUTH), 422, "collection")
    err(c.post("/v1/collections/other", json={"dim": DIM + 1}, headers=AUTH), 422, "dim")
    err(c.post("/v1/collections/other", json={"metric": "manhattan"}, headers=AUTH), 422, "metric")
    assert c.get("/v1/collections/photos").json()["metric"] == "ip"
    assert c.get("/v1/collections").json()["collections"] == ["main", "photos"]
    assert c.delete("/v1/collections/photos", headers=AUTH).json() == {"deleted": "photos"}
    err(c.get("/v1/collections/photos"), 404, "collection")
    err(c.delete("/v1/collections/photos", headers=AUTH), 404)


def test_items_media_replace_and_delete(client: Client, tmp_path: Path):
    c = client()
    add_items(c)
    png = c.get("/v1/items/main/1/media")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), solid((250, 10, 10)))
    flac = c.get("/v1/items/main/2/media", params={"kind": "audio"})
    assert flac.headers["content-type"] == "audio/flac"
    wave, sr = decode_audio(flac.content)
    assert sr == 16000 and np.abs(wave - tone(440)).max() < 2e-4
    err(c.get("/v1/items/main/3/media"), 404, "id")                     # text only: nothing stored
    err(c.get("/v1/items/main/2/media", params={"kind": "image"}), 404)
    err(c.get("/v1/items/main/1/media", params={"kind": "../x"}), 422, "kind")
    err(c.get("/v1/items/main/passwd/media"), 422, "item_id")
    err(c.get("/v1/items/main/..%2F..%2Fetc%2Fpasswd/media"), 404)
    # a replace without media drops the old thumbnail; a big image is stored as a small thumbnail
    big = np.random.default_rng(0).integers(0, 255, (600, 300, 3), dtype=np.uint8)
    items = [{"id": 1, "vector": [1.0] * DIM}, {"id": 4, "image": png_b64(big), "metadata": {"source": "/etc/passwd"}}]
    assert c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH).json()["count"] == 4
    err(c.get("/v1/items/main/1/media"), 404)
    thumb = Image.open(io.BytesIO(c.get("/v1/items/main/4/media").content))
    assert max(thumb.size) == 256 and thumb.size == (128, 256)
    r = c.post("/v1/collections/main/items/delete", json={"ids": [4, 99]}, headers=AUTH)
    assert r.json() == {"collection": "main", "deleted": 1, "count": 3}
    err(c.get("/v1/items/main/4/media"), 404)
    err(c.get("/v1/items/missing/1/media"), 404, "collection")


def test_upsert_errors(client: Client):
    c = client()
    post = lambda items: c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH)  # noqa: E731
    err(post([]), 422, "items")
    err(post([{"id": 1}]), 422, "items[0]")
    err(post([{"id": 1, "vector": [1.0, 0.0]}]), 422, "items[0].vector")
    err(post([{"id": 1, "text": "a", "embed": "image"}]), 422, "items[0].embed")
    err(post([{"id": 1, "text": "a"}, {"id": 2, "image": "broken"}]), 422, "items[1].image")
    err(post([{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]), 422, "ids")
    err(post([{"id": -1, "text": "a"}]), 422, "items[0].id")
    nan = b'{"items": [{"id": 1, "text": "a", "metadata": {"x": NaN}}]}'  # Python's JSON parser reads NaN
    err(c.post("/v1/collections/main/items", content=nan, headers={**AUTH, "content-type": "application/json"}),
        422, "metadata")
    err(c.post("/v1/collections/nope/items", json={"items": [{"id": 1, "text": "a"}]}, headers=AUTH), 404)
    assert c.get("/v1/collections/main").json()["count"] == 0  # nothing was written by the failed calls


# ------------------------------------------------------------------------------------------ safety

def test_api_key_for_writes_and_optionally_reads(client: Client):
    c = client()
    body = {"items": [{"id": 1, "text": "a"}]}
    r = c.post("/v1/collections/main/items", json=body)
    err(r, 401, kind="Unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    err(c.post("/v1/collections/main/items", json=body, headers={"Authorization": "Bearer wrong"}), 403)
    err(c.delete("/v1/collections/main"), 401)
    err(c.post("/v1/collections/new"), 401)
    err(c.post("/v1/collections/main/items/delete", json={"ids": [1]}), 401)
    assert c.post("/v1/collections/main/items", json=body, headers={"X-API-Key": KEY}).status_code == 200
    assert c.post("/v1/search", json={"text": "a"}).status_code == 200  # reads are open by default
    locked = client(auth_reads=True)
    err(locked.post("/v1/search", json={"text": "a"}), 401)
    err(locked.post("/v1/embed", json={"text": ["a"]}, headers={"X-API-Key": "nope"}), 403)
    err(locked.get("/metrics"), 401)
    err(locked.get("/v1/collections"), 401)
    assert locked.get("/health").status_code == 200
    assert locked.post("/v1/search", json={"text": "a"}, headers=AUTH).status_code == 200


def test_body_limit_413(client: Client):
    c = client(max_body_bytes=4000)
    body = {"text": ["x" * 5000]}
    err(c.post("/v1/embed", json=body), 413, kind="PayloadTooLarge")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"text": ["'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"]}'

    err(c.post("/v1/embed", content=chunks(), headers={"content-type": "application/json"}), 413)
    assert c.post("/v1/embed", json={"text": ["small"]}).status_code == 200


def test_cors_off_by_default_and_on_when_configured(client: Client):
    pre = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    r = client().options("/v1/search", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    r = client(cors_origins=("https://example.org",)).options("/v1/search", headers=pre)
    assert r.headers["access-control-allow-origin"] == "https://example.org"


def test_full_queue_answers_503_with_retry_after(client: Client):
    gate, entered = threading.Event(), threading.Event()

    class Gated(FakeModel):
        def embed(self, **kw):
            entered.set()
            gate.wait(10)
            return super().embed(**kw)

    c = client(Gated(), max_batch=1, max_wait_ms=0, queue_size=1)
    batcher = c.app.state.service.batcher
    running = batcher.submit("text", ["a"])
    assert entered.wait(5)  # the worker holds "a" inside the model; the queue is empty again
    waiting = batcher.submit("text", ["b"])  # fills the queue
    r = c.post("/v1/embed", json={"text": ["c"]})
    err(r, 503, kind="Overloaded")
    assert int(r.headers["retry-after"]) >= 1
    err(c.post("/v1/search", json={"text": "c"}), 503)
    gate.set()
    assert running.result(5).shape == waiting.result(5).shape == (1, DIM)
    assert c.post("/v1/embed", json={"text": ["c"]}).status_code == 200
    assert "polymodal_embed_rejected_total 2" in c.get("/metrics").text


def test_concurrent_upserts_and_searches_keep_the_collection_whole(client: Client, tmp_path: Path):
    c = client(FakeModel(delay=0.002))
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((120, DIM)).astype(np.float32)
    errors: list[str] = []

    def writer(part: int) -> None:
        for start in range(part * 40, part * 40 + 40, 8):
            items = [{"id": i, "vector": vecs[i].tolist(), "metadata": {"i": i}} for i in range(start, start + 8)]
            r = c.post("/v1/collections/main/items", json={"items": items}, headers=AUTH)
            if r.status_code != 200:
                errors.append(r.text)

    def reader() -> None:
        for j in range(15):
            r = c.post("/v1/search", json={"text": f"query {j}", "k": 5})
            if r.status_code != 200 or any(h["metadata"] != {"i": h["id"]} for h in r.json()["hits"]):
                errors.append(r.text)

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert c.get("/v1/collections/main").json()["count"] == 120
    c.__exit__(None, None, None)  # closes the collection; what is on disk must be complete
    coll = Collection.open(tmp_path / "root" / "main", readonly=True)
    got = coll.get(list(range(120)))
    np.testing.assert_allclose(got.vectors, vecs / np.linalg.norm(vecs, axis=1, keepdims=True), rtol=1e-6)
    assert [m["i"] for m in got.metadata] == list(range(120))
    coll.close()


# ------------------------------------------------------------------------------------------ CLI

def test_cli_help_and_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from polymodal.commands.serve import _parser, layout, main, settings_from_args

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--max-wait-ms" in capsys.readouterr().out
    args = _parser().parse_args(["--model", "m", "--collection", "c", "--api-key", "k", "--max-batch", "8",
                                 "--queue-size", "4", "--max-body-mb", "1", "--cors-origin", "http://a",
                                 "--model-name", "clip-b32", "--max-aspect", "8"])
    s = settings_from_args(args)
    assert (s.api_key, s.max_batch, s.queue_size, s.max_body_bytes, s.cors_origins) == ("k", 8, 4, 2**20, ("http://a",))
    assert s.model_name == "clip-b32" and s.limits.max_aspect == 8.0
    new = tmp_path / "new"
    assert layout(str(new), None) == (tmp_path, new)
    Collection.create(tmp_path / "coll", dim=4).close()
    assert layout(str(tmp_path / "coll"), str(tmp_path / "r")) == (tmp_path / "r", tmp_path / "coll")
    assert layout(str(tmp_path), None) == (tmp_path, None)  # a folder of collections


def test_cli_main_wires_model_collection_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]):
    import polymodal.api
    import polymodal.serve.server
    from polymodal.commands import main as polymodal_main

    seen: dict = {}

    class FakeServer:  # records what main hands uvicorn instead of serving forever
        def __init__(self, app, settings, log_level, on_listening):
            seen.update(app=app, settings=settings, log_level=log_level)
            self.on_listening = on_listening

        def run(self, sockets):
            seen["port"] = sockets[0].getsockname()[1]
            assert "http://" not in capsys.readouterr().err  # the URL is printed once listening, not before
            self.on_listening()

    monkeypatch.setattr(polymodal.api, "load", lambda run, device="cpu", runtime="torch": FakeModel())
    monkeypatch.setattr(polymodal.serve.server, "make_server", lambda app, settings, *, log_level, on_listening:
                        FakeServer(app, settings, log_level, on_listening))
    monkeypatch.setenv("POLYMODAL_API_KEY", "from-env")
    empty = tmp_path / "coll"
    empty.mkdir()  # an empty folder becomes a new collection
    assert polymodal_main(["serve", "--model", "run", "--collection", str(empty), "--port", "0",
                           "--max-batch", "4", "--max-connections", "7", "--header-timeout-s", "2.5"]) == 0
    assert seen["port"] > 0
    assert f"http://127.0.0.1:{seen['port']}/" in capsys.readouterr().err  # the port it really got
    assert (seen["settings"].max_connections, seen["settings"].header_timeout_s) == (7, 2.5)
    with TestClient(seen["app"]) as c:
        assert c.get("/v1/collections").json() == {"default": "coll", "collections": ["coll"]}
        err(c.post("/v1/collections/coll/items", json={"items": [{"id": 1, "text": "a"}]}), 401)
        r = c.post("/v1/collections/coll/items", json={"items": [{"id": 1, "text": "a"}]},
                   headers={"X-API-Key": "from-env"})
        assert r.status_code == 200
        assert c.app.state.service.settings.max_batch == 4
    assert polymodal_main(["serve", "--model", "run", "--collection", str(empty), "--auth-reads",
                           "--api-key", ""]) == 1  # --auth-reads without a key is an error
