"""The OpenAI-compatible endpoints (``POST /v1/embeddings``, ``GET /v1/models``), driven by OpenAI's own Python
client against the server on a real socket (uvicorn in a thread, as `polymodal serve` runs it): the vectors equal
``/v1/embed``'s and the model's, in both encodings; ``dimensions``; media as data URLs; errors in OpenAI's envelope
with the status codes its client turns into its exception types."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from servekit import DIM, KEY, FakeModel, err, png_b64, running, solid, tone, wav_b64

from polymodal.serve import MediaLimits, ServeSettings

openai = pytest.importorskip("openai")

MODEL_ID = "tiny-clip"
MAX_ITEMS = 6
TEXTS = ["a red circle", "a blue square above a star", "green"]
IMG = png_b64(solid((200, 30, 30)))           # 24 x 32 = 768 pixels
WAV = wav_b64(tone(440), 16000)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeModel]]:
    """One server for the module: API key required for reads too, a few items per request, and a pixel budget
    that holds one image of a request but not two."""
    model = FakeModel()
    with running(tmp_path_factory.mktemp("openai"), model, api_key=KEY, auth_reads=True, max_items=MAX_ITEMS,
                 model_name=MODEL_ID, max_body_bytes=256 * 1024,
                 limits=MediaLimits(max_request_pixels=1000)) as base:
        yield base, model


@pytest.fixture
def client(server: tuple[str, FakeModel]) -> Any:
    with openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=20) as c:
        yield c


def embed_route(base: str, **groups: list[Any]) -> dict[str, np.ndarray]:
    r = httpx.post(base + "/v1/embed", json=groups, headers={"Authorization": f"Bearer {KEY}"}, timeout=20)
    assert r.status_code == 200, r.text
    return {m: np.array(v, np.float64) for m, v in r.json()["vectors"].items()}


def vectors(resp: Any) -> np.ndarray:
    assert resp.object == "list" and [d.index for d in resp.data] == list(range(len(resp.data)))
    assert all(d.object == "embedding" for d in resp.data)
    return np.array([d.embedding for d in resp.data], np.float64)


# ---------------------------------------------------------------------------------------------- embeddings

def test_float_and_base64_equal_embed_and_the_model(server: tuple[str, FakeModel], client: Any):
    base, _ = server
    expected = FakeModel().embed(text=TEXTS).astype(np.float64)
    np.testing.assert_allclose(embed_route(base, text=TEXTS)["text"], expected, atol=1e-6)

    as_float = client.embeddings.create(model=MODEL_ID, input=TEXTS, encoding_format="float")
    assert isinstance(as_float.data[0].embedding, list) and as_float.model == MODEL_ID
    np.testing.assert_allclose(vectors(as_float), expected, atol=1e-6)

    # explicitly asked for, base64 reaches the caller as the server sent it: little-endian float32 bytes
    as_b64 = client.embeddings.create(model=MODEL_ID, input=TEXTS, encoding_format="base64")
    raw = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in as_b64.data])
    np.testing.assert_array_equal(raw, expected.astype(np.float32))

    # by default the client asks for base64 and decodes it itself
    resp = client.embeddings.with_raw_response.create(model=MODEL_ID, input=TEXTS)
    assert json.loads(resp.http_request.content)["encoding_format"] == "base64"
    np.testing.assert_allclose(vectors(resp.parse()), expected, atol=1e-6)


def test_one_string_usage_and_the_same_vector_alone_or_in_a_list(client: Any):
    one = client.embeddings.create(model=MODEL_ID, input="a red circle", encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == DIM
    assert one.usage.prompt_tokens == one.usage.total_tokens == 3   # no tokenizer on the fake model: words
    many = client.embeddings.create(model=MODEL_ID, input=TEXTS, encoding_format="float")
    np.testing.assert_allclose(vectors(one)[0], vectors(many)[0], atol=1e-6)
    assert many.usage.prompt_tokens == sum(len(t.split()) for t in TEXTS)


def test_dimensions_truncate_and_renormalise(client: Any):
    texts = [" ".join(f"w{i}x{j}" for j in range(40)) for i in range(3)]   # many words: dense bag-of-words vectors
    full = vectors(client.embeddings.create(model=MODEL_ID, input=texts))
    head = full[:, :5]
    assert (np.linalg.norm(head, axis=1) < 0.99).all()   # truncating alone would not give unit vectors
    for fmt in ("float", "base64"):
        resp = client.embeddings.create(model=MODEL_ID, input=texts, dimensions=5, encoding_format=fmt)
        got = (vectors(resp) if fmt == "float" else
               np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in resp.data]))
        assert got.shape == (len(texts), 5)
        np.testing.assert_allclose(got, head / np.linalg.norm(head, axis=1, keepdims=True), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    same = vectors(client.embeddings.create(model=MODEL_ID, input=texts, dimensions=DIM))
    np.testing.assert_array_equal(same, full)
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL_ID, input=TEXTS, dimensions=DIM + 1)
    assert exc.value.param == "dimensions" and str(DIM) in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL_ID, input=TEXTS, dimensions=0)
    assert exc.value.param == "dimensions"


def test_images_and_audio_as_data_urls(server: tuple[str, FakeModel], client: Any):
    base, _ = server
    inputs = ["a red circle", f"data:image/png;base64,{IMG}", f"data:audio/wav;base64,{WAV}", "green"]
    got = vectors(client.embeddings.create(model=MODEL_ID, input=inputs))
    ref = embed_route(base, text=["a red circle", "green"], image=[IMG], audio=[WAV])
    np.testing.assert_allclose(got, np.stack([ref["text"][0], ref["image"][0], ref["audio"][0], ref["text"][1]]),
                               atol=1e-6)
    assert not np.allclose(got[1], got[2])


def test_media_limits_and_bad_media_are_400s_naming_the_item(client: Any):
    with pytest.raises(openai.BadRequestError) as exc:   # two images: 1536 pixels, over the budget of 1000
        client.embeddings.create(model=MODEL_ID, input=[f"data:image/png;base64,{IMG}"] * 2)
    assert exc.value.param == "input[1]" and "1000 pixels per request" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL_ID, input=["ok", "data:image/png;base64,aGVsbG8="])
    assert exc.value.param == "input[1]" and "not a readable image" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL_ID, input=[f"data:video/mp4;base64,{IMG}"])
    assert exc.value.param == "input[0]" and "/v1/embed" in exc.value.message


def test_a_modality_the_model_lacks(tmp_path: Path):
    model = FakeModel()
    model.modalities = ("text",)
    with running(tmp_path, model) as base, openai.OpenAI(base_url=base + "/v1", api_key="any", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as exc:
            c.embeddings.create(model="polymodal", input=["x", f"data:audio/wav;base64,{WAV}"])
        assert exc.value.param == "input[1]" and "not audio" in exc.value.message
        # no key configured: any key is accepted, and the id is the default one
        assert [m.id for m in c.models.list().data] == ["polymodal"]


def test_bad_input_is_a_bad_request(client: Any):
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": ["ok", 3]}, "input[1]"),
        ({"input": [[1, 2, 3], [4]]}, "input"),       # token arrays: OpenAI's tokenizer, not this model's
        ({"input": [1, 2, 3]}, "input"),
        ({"input": "x" * 10_001}, "input"),            # max_text_chars
        ({"input": "x", "extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            client.embeddings.create(model=MODEL_ID, **kw)
        assert exc.value.param == param, (kw, exc.value.body)
        assert exc.value.type == "invalid_request_error" and exc.value.code == "invalid_input"
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        client.embeddings.create(model=MODEL_ID, input=[[1, 2, 3]])


def test_too_many_inputs_and_too_big_a_body(client: Any):
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL_ID, input=["a"] * (MAX_ITEMS + 1))
    assert exc.value.param == "input" and f"limit of {MAX_ITEMS}" in exc.value.message
    with pytest.raises(openai.APIStatusError) as big:   # over max_body_bytes: 413, still in OpenAI's envelope
        client.embeddings.create(model=MODEL_ID, input=["word " * 60_000])
    assert big.value.status_code == 413 and big.value.code == "payload_too_large"


def test_unknown_model_is_404_model_not_found(client: Any):
    with pytest.raises(openai.NotFoundError) as exc:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert exc.value.code == "model_not_found" and exc.value.param == "model" and MODEL_ID in exc.value.message


def test_auth(server: tuple[str, FakeModel]):
    base, _ = server
    with openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as exc:
            c.embeddings.create(model=MODEL_ID, input="x")
        assert exc.value.code == "invalid_api_key" and "wrong" not in exc.value.message
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    r = httpx.post(base + "/v1/embeddings", content=b"{not json", headers={"X-API-Key": KEY})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = httpx.post(base + "/v1/embeddings", json={"model": MODEL_ID, "input": "x"})   # no key at all
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    ok = httpx.post(base + "/v1/embeddings", json={"model": MODEL_ID, "input": "x"}, headers={"X-API-Key": KEY})
    assert ok.status_code == 200


def test_models_list_and_retrieve(client: Any):
    listed = client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in listed.data] == [(MODEL_ID, "model", "polymodal")]
    assert isinstance(listed.data[0].created, int)
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("gpt-4o")
    assert exc.value.code == "model_not_found"


def test_model_ids_with_a_slash_can_be_retrieved(tmp_path: Path):
    """Hugging Face style ids (``BAAI/bge-small``) are listed and retrieved, as OpenAI's client asks for them."""
    with running(tmp_path, model_name="BAAI/bge-small") as base, \
            openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=20) as c:
        assert [m.id for m in c.models.list().data] == ["BAAI/bge-small"]
        card = c.models.retrieve("BAAI/bge-small")
        assert (card.id, card.object, card.owned_by) == ("BAAI/bge-small", "model", "polymodal")
        r = httpx.get(base + "/v1/models/BAAI/bge-small", timeout=20)
        assert r.status_code == 200 and r.json()["id"] == "BAAI/bge-small"
        for other in ("BAAI/bge-large", "BAAI", "BAAI/bge-small/x"):
            with pytest.raises(openai.NotFoundError) as exc:
                c.models.retrieve(other)
            assert exc.value.code == "model_not_found" and other in exc.value.message
        assert c.embeddings.create(model="BAAI/bge-small", input="x").model == "BAAI/bge-small"


@pytest.mark.parametrize("value", [True, False, "3", 3.0, 2.5, "", [3], {"n": 3}, 0, -1])
def test_dimensions_must_be_a_strict_positive_int(server: tuple[str, FakeModel], value: Any):
    r = httpx.post(server[0] + "/v1/embeddings", json={"model": MODEL_ID, "input": "x", "dimensions": value},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=20)
    assert r.status_code == 400, (value, r.text)
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert (body["param"], body["type"], body["code"]) == ("dimensions", "invalid_request_error", "invalid_input")


class _Tokenizer:
    """Counts characters as tokens (up to max_len), recording whether it ran on an event loop's thread."""

    def __init__(self) -> None:
        self.on_loop: list[bool] = []

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return list(range(min(len(text), max_len or len(text))))


def test_usage_is_counted_off_the_event_loop(tmp_path: Path):
    """The model's tokenizer can take seconds on a big request: it must not stall the server's event loop."""
    model: Any = FakeModel()
    tok = _Tokenizer()
    model.transform = type("T", (), {"text": tok, "max_text_len": 7})()
    texts = ["a red circle", "ab", "a blue square above a star"]
    with running(tmp_path, model) as base, \
            openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=20) as c:
        resp = c.embeddings.create(model="polymodal", input=[*texts, f"data:image/png;base64,{IMG}"])
        assert resp.usage.prompt_tokens == resp.usage.total_tokens == 7 + 2 + 7
        assert c.embeddings.create(model="polymodal", input="abc").usage.prompt_tokens == 3
    assert len(tok.on_loop) == 4 and not any(tok.on_loop), tok.on_loop


def test_requests_share_the_micro_batcher(tmp_path: Path):
    model = FakeModel(delay=0.2)

    async def burst(base: str) -> list[Any]:
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=20) as c:
            return await asyncio.gather(*(c.embeddings.create(model="polymodal", input=[f"text {i}", "x"])
                                          for i in range(12)))

    with running(tmp_path, model, max_wait_ms=50) as base:
        results = asyncio.run(burst(base))
    expected = FakeModel().embed(text=[f"text {i}" for i in range(12)])
    np.testing.assert_allclose(np.stack([r.data[0].embedding for r in results]), expected, atol=1e-6)
    sizes = [n for m, n in model.calls if m == "text"]
    assert sum(sizes) == 24 and len(sizes) < 12 and max(sizes) > 2, sizes


# ---------------------------------------------------------------------------------------------- the rest

def test_other_routes_keep_their_own_errors_and_the_schema_lists_the_openai_routes(server: tuple[str, FakeModel]):
    base, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    err(httpx.post(base + "/v1/embed", json={"text": [""]}, headers=auth), 422, "text[0]", "InvalidInput")
    err(httpx.post(base + "/v1/embed", json={"text": ["w " * 200_000]}, headers=auth), 413, kind="PayloadTooLarge")
    schema = httpx.get(base + "/openapi.json").json()
    for path in ("/v1/embeddings", "/v1/models", "/v1/embed", "/v1/search"):
        assert path in schema["paths"]
    assert schema["paths"]["/v1/embeddings"]["post"]["tags"] == ["openai"]
    props = schema["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    assert next(p for p in props["input"]["anyOf"] if p["type"] == "array")["maxItems"] == MAX_ITEMS
    assert next(p for p in props["dimensions"]["anyOf"] if p["type"] == "integer")["maximum"] == DIM
    page = httpx.get(base + "/").text
    assert "/v1/embeddings" in page and "/v1/embed" in page


def test_a_real_embedding_model(tmp_path: Path):
    """An untrained clip_tiny behind the server: the OpenAI route gives what `EmbeddingModel.embed` gives."""
    import torch

    from polymodal.data.transforms.compose import SampleTransform
    from polymodal.data.transforms.resolve import transform_config
    from polymodal.models import build_model
    from polymodal.models.embedding import EmbeddingModel
    from polymodal.recipes import load_recipe

    torch.manual_seed(0)
    recipe = load_recipe("clip_tiny")
    net = build_model("alignment", recipe.model)
    transform = SampleTransform.from_dict(transform_config(net.preprocess(), recipe.data.transform))
    model = EmbeddingModel(net, transform, {"arch": "alignment", "model": recipe.model}, name=str(tmp_path / "run1"))
    img = solid((10, 200, 90))
    with running(tmp_path, model) as base, openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0) as c:
        assert [m.id for m in c.models.list().data] == ["run1"]     # the folder the model came from
        resp = c.embeddings.create(model="run1", input=TEXTS)
        np.testing.assert_allclose(vectors(resp), model.embed(text=TEXTS), atol=1e-6)
        # the model's own tokenizer counts the tokens it read (bytes + begin/end for clip_tiny's)
        assert resp.usage.prompt_tokens == sum(len(transform.text.encode(t, transform.max_text_len)) for t in TEXTS)
        got = vectors(c.embeddings.create(model="run1", input=[f"data:image/png;base64,{png_b64(img)}"]))
        np.testing.assert_allclose(got, model.embed(image=[img]), atol=1e-6)
        assert ServeSettings().model_name is None
